"""A small synthetic text-classification corpus: short sentences from templates and word lists.

Licence: MIT, the project's own (every word list and template below was written for it).
A third of the sentences carry a side clause naming a word of another category.
Categories: WEATHER, SPORTS, COOKING (the first training run) and TRAVEL (added later with
`textcat.add_label`). Some words are shared across categories ("great", "today", "heavy",
"pass"...), so the task is easy but not trivial. Deterministic for a given seed.
"""

import random
from typing import Dict, List, Tuple

LABELS = ["WEATHER", "SPORTS", "COOKING"]
NEW_LABEL = "TRAVEL"

SUBJECTS = ["we", "my sister", "the neighbours", "everyone", "the kids", "our friends", "I"]
TIMES = ["today", "this morning", "last night", "on sunday", "tomorrow", "all week", "again"]
OPINIONS = ["great", "strange", "terrible", "lovely", "unusual", "fine", "heavy", "quick"]

WORDS: Dict[str, Dict[str, List[str]]] = {
    "WEATHER": {
        "noun": ["rain", "snow", "fog", "wind", "sunshine", "storm", "hail", "drizzle", "frost"],
        "verb": ["expected", "forecast", "noticed", "complained about", "measured", "watched"],
        "extra": ["the sky", "the temperature", "the clouds", "a cold front", "the forecast"],
    },
    "SPORTS": {
        "noun": ["match", "goal", "race", "tournament", "penalty", "final", "pass", "team"],
        "verb": ["won", "lost", "watched", "cheered for", "scored in", "trained for"],
        "extra": ["the coach", "the referee", "the striker", "the league", "the stadium"],
    },
    "COOKING": {
        "noun": ["soup", "bread", "curry", "pasta", "pie", "sauce", "omelette", "salad", "stew"],
        "verb": ["baked", "stirred", "tasted", "seasoned", "burnt", "cooked"],
        "extra": ["the oven", "the recipe", "a pinch of salt", "the pan", "fresh garlic"],
    },
    "TRAVEL": {
        "noun": ["flight", "train", "hotel", "passport", "ferry", "trip", "luggage", "ticket"],
        "verb": ["booked", "missed", "packed for", "cancelled", "waited for", "boarded"],
        "extra": ["the airport", "the station", "the border", "the itinerary", "the gate"],
    },
}

CLAUSES = ["despite", "after", "before", "instead of", "while talking about"]
TEMPLATES = [
    "{subject} {verb} the {noun} {time}",
    "the {noun} was {opinion} {time}",
    "{subject} said the {noun} was {opinion}",
    "{time} {subject} {verb} the {noun} near {extra}",
    "{extra} made the {noun} {opinion}",
    "what a {opinion} {noun}",
    "{subject} {verb} {extra} {time}",
]


def sentence(rng: random.Random, label: str) -> str:
    words = WORDS[label]
    text = rng.choice(TEMPLATES).format(
        subject=rng.choice(SUBJECTS),
        time=rng.choice(TIMES),
        opinion=rng.choice(OPINIONS),
        noun=rng.choice(words["noun"]),
        verb=rng.choice(words["verb"]),
        extra=rng.choice(words["extra"]),
    )
    if rng.random() < 0.3:  # a distractor: a word of another category, in a side clause
        other = rng.choice([name for name in WORDS if name != label])
        text += f" {rng.choice(CLAUSES)} the {rng.choice(WORDS[other]['noun'])}"
    return text


def make_corpus(labels: List[str], n_per_label: int, seed: int) -> List[Tuple[str, str]]:
    """(text, label) pairs, `n_per_label` for each label, shuffled."""
    rng = random.Random(seed)
    pairs = [(sentence(rng, label), label) for label in labels for _ in range(n_per_label)]
    rng.shuffle(pairs)
    return pairs
