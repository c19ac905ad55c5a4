"""A small synthetic NER corpus: templated sentences naming people, cities and (later) products.

Licence: MIT, the project's own (every list and template was written for it). Deterministic for
a given seed. Types: PERSON and CITY for the first training run; PRODUCT, added after it with
`ner.add_label`.
"""

import random
from typing import List, Tuple

Entity = Tuple[int, int, str]  # character offsets and label

PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
          "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil"]  # fmt: skip
CITIES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Oslo", "Lisbon", "Vienna", "Prague",
          "Dublin", "Warsaw", "Athens"]  # fmt: skip
PRODUCTS = ["Zorblax", "Quibbit", "Flumox", "Grendak", "Vextrum", "Plonko", "Trivor", "Skellig"]
TEMPLATES = [
    "{PERSON} lives in {CITY}",
    "{PERSON} flew to {CITY} last week",
    "yesterday {PERSON} visited {CITY}",
    "we met {PERSON} in {CITY} on sunday",
    "the train from {CITY} was late for {PERSON}",
    "{PERSON} and {PERSON2} moved to {CITY}",
]
NEW_TEMPLATES = [
    "{PERSON} bought a {PRODUCT} in {CITY}",
    "the new {PRODUCT} sold out in {CITY}",
    "{PERSON} reviewed the {PRODUCT} yesterday",
]


def fill(template: str, rng: random.Random) -> Tuple[str, List[Entity]]:
    """The sentence and its entities' character offsets."""
    values = {
        "PERSON": rng.choice(PEOPLE),
        "PERSON2": rng.choice(PEOPLE),
        "CITY": rng.choice(CITIES),
        "PRODUCT": rng.choice(PRODUCTS),
    }
    text, entities = "", []
    rest = template
    while "{" in rest:
        before, _, after = rest.partition("{")
        slot, _, rest = after.partition("}")
        text += before
        label = "PERSON" if slot == "PERSON2" else slot
        entities.append((len(text), len(text) + len(values[slot]), label))
        text += values[slot]
    return text + rest, entities


def make_corpus(n: int, seed: int, new_type: bool = False) -> List[Tuple[str, List[Entity]]]:
    rng = random.Random(seed)
    templates = NEW_TEMPLATES if new_type else TEMPLATES
    return [fill(rng.choice(templates), rng) for _ in range(n)]
