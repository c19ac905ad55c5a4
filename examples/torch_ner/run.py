"""torch_ner end to end, on CPU in about a minute: train, add an entity type, keep the old ones.

1. Trains a `torch_ner` pipeline (torchlayers.TorchNER.v1, found through the entry points) on
   the project's corpus (ner_corpus.py): PERSON, CITY, ORG.
2. `add_label("PRODUCT")`: checks every entity on the held-out texts is identical before and
   after (the new type's output units start far below the old ones).
3. Trains on new sentences that label only PRODUCT (the persons, cities and organisations in
   them are left unmarked, as a user labelling one type leaves them), with
   `annotated_types = ["PRODUCT"]` (N5): PRODUCT is learned, the old types keep their F1, with
   no old data and no hand re-annotation. `--plain` trains without the setting, to show what
   it prevents (the old types are unlearned).
4. Saves the pipeline, loads it with `spacy.load` and checks the entities are identical.
5. Writes out/torch_ner/f1_per_type.png: F1 per type over the updates on held-out text with all
   four types (before add_label, PRODUCT mentions count as errors of the old types), with
   matplotlib (the `plots` extra), and prints a report.

Run: `make demo-ner` (installs the `plots` extra), or `.venv/bin/python examples/torch_ner/run.py`.
Exits non-zero if a check fails.
"""

import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "out" / "torch_ner"
sys.path.insert(0, str(HERE))

import spacy  # noqa: E402
from ner_corpus import LABELS, NEW_LABEL, make_corpus  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402

TRANSITIONS = "--transitions" in sys.argv  # the CRF variant
PLAIN = "--plain" in sys.argv  # no annotated_types: what the setting prevents
EVAL_EVERY = 5
PROBES = [
    "Jordan flew to Paris to visit Apple .",
    "Paris said the plan would work .",
    "Mary Lopez bought a new Air Jordan in San Lagos .",
    "Everyone talks about Kindle these days .",
]
History = List[Tuple[int, Dict[str, float]]]


def examples(nlp: Any, data: List[Tuple[str, Any]]) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def per_type(nlp: Any, dev: List[Example]) -> Dict[str, float]:
    scores = nlp.evaluate(dev)["ents_per_type"] or {}
    return {label: 100 * s["f"] for label, s in scores.items()}


def train(nlp: Any, data: List[Example], dev: List[Example], epochs: int, history: History) -> None:
    optimizer = Adam(0.005)
    step = history[-1][0] if history else 0
    for epoch in range(epochs):
        order = list(data)
        random.Random(epoch).shuffle(order)
        for i in range(0, len(order), 16):
            nlp.update(order[i : i + 16], sgd=optimizer, drop=0.1)
            step += 1
            if step % EVAL_EVERY == 0:
                history.append((step, per_type(nlp, dev)))


def entities(nlp: Any, texts: List[str]) -> List[List[Tuple[str, str]]]:
    return [[(e.text, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]


def plot(history: History, added_at: int, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plots]'): no plot")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in LABELS + [NEW_LABEL]:
        points = [(step, f[label]) for step, f in history if label in f]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label, marker=".")
    ax.axvline(added_at, color="grey", linestyle="--", label=f"add_label({NEW_LABEL!r})")
    ax.set_xlabel("updates (16 sentences each)")
    ax.set_ylabel("F1 (held-out)")
    ax.set_ylim(0, 102)
    ax.set_title("torch_ner: F1 per entity type" + (" (CRF)" if TRANSITIONS else ""))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    start = time.perf_counter()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("torch_ner", config={"model": {"transitions": TRANSITIONS}})
    train_old = examples(nlp, make_corpus(LABELS, 300, seed=1))
    dev_old = examples(nlp, make_corpus(LABELS, 150, seed=2))
    dev_all = examples(nlp, make_corpus(LABELS + [NEW_LABEL], 150, seed=4))
    nlp.initialize(lambda: train_old)

    history: History = []
    train(nlp, train_old, dev_all, epochs=3, history=history)
    first = per_type(nlp, dev_old)
    texts = [eg.reference.text for eg in dev_all] + PROBES
    before = entities(nlp, texts)

    ner.add_label(NEW_LABEL)
    unchanged = entities(nlp, texts) == before
    added_at = history[-1][0]

    only_new = [
        (text, [e for e in ents if e[2] == NEW_LABEL])
        for text, ents in make_corpus(LABELS + [NEW_LABEL], 200, seed=3)
    ]
    if not PLAIN:
        ner.annotated_types = [NEW_LABEL]  # the examples label PRODUCT, nothing else
    train(nlp, examples(nlp, only_new), dev_all, epochs=3, history=history)
    second = per_type(nlp, dev_old)
    new_f = per_type(nlp, dev_all)[NEW_LABEL]

    nlp.to_disk(OUT / "model")
    reloaded = spacy.load(OUT / "model")
    same_after_load = entities(reloaded, texts) == entities(nlp, texts)
    plotted = plot(history, added_at, OUT / "f1_per_type.png")

    setting = "no setting" if PLAIN else f"annotated_types = {[NEW_LABEL]}"
    print(f"torch_ner demo ({'CRF' if TRANSITIONS else 'per-token'}), {ner.labels}, {setting}")
    print(f"old entities identical right after add_label({NEW_LABEL!r}): {unchanged}")
    for label in LABELS:
        print(f"  {label:8s} F1 {first[label]:5.1f} -> {second[label]:5.1f} after {NEW_LABEL}")
    print(f"  {NEW_LABEL:8s} F1 {new_f:5.1f} (learned from {NEW_LABEL}-only labels)")
    for text, ents in zip(PROBES, entities(nlp, PROBES)):
        print(f"  {text!r}: {ents}")
    print(f"spacy.load gives identical entities: {same_after_load}")
    if plotted:
        print(f"plot: {OUT / 'f1_per_type.png'}")
    print(f"{time.perf_counter() - start:.0f} s")
    # Learning PRODUCT moves a few ambiguous surfaces ("Apple", "Jordan"): each old type within
    # 4 points, their mean within 2 (without the setting every old type falls to 0).
    drops = [first[label] - second[label] for label in LABELS]
    kept = max(drops) <= 4 and sum(drops) / len(drops) <= 2
    ok = unchanged and same_after_load and new_f >= 80 and kept
    print("all checks passed" if ok else "a check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
