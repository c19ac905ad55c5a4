"""Accuracy of torch_ner against spaCy's own `ner`, and of adding a type with rehearsal.

1. spaCy's `ner`, `torch_ner` and `torch_ner` with `transitions = true` train on the same
   corpus (ner_corpus.py: PERSON, CITY, ORG), the same tok2vec config, the same batches and the
   same number of updates; each is scored on held-out text with spaCy's NER scorer.
2. Each `torch_ner` then gets `add_label("PRODUCT")` and trains on new sentences annotated with
   all four types plus a rehearsal sample of the old training data; it reports PRODUCT's F1
   and each old type's F1 before and after.

Run: `.venv/bin/python examples/torch_ner/accuracy.py [--seeds 3]` (a few minutes on CPU).
Prints a Markdown table (the one in docs/torch_ner.md).
"""

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import spacy  # noqa: E402
from ner_corpus import LABELS, NEW_LABEL, make_corpus  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402

import torchlayers.spacy.ner  # noqa: E402, F401  (also found through the entry points)

TOK2VEC = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 64,
    "depth": 2, "embed_size": 2000, "window_size": 1, "maxout_pieces": 3,
    "subword_features": True,
}  # fmt: skip
BATCH = 16
LEARN_RATE = 0.005
SIZES = {"train": 400, "dev": 200, "new": 200, "rehearse": 200}
EPOCHS, NEW_EPOCHS = 4, 4


def make_nlp(kind: str) -> Any:
    nlp = spacy.blank("en")
    if kind == "ner":
        nlp.add_pipe("ner", config={"model": {"tok2vec": TOK2VEC}})
    else:
        model = {"tok2vec": TOK2VEC, "transitions": kind == "torch_ner+crf"}
        nlp.add_pipe("torch_ner", config={"model": model})
    return nlp


def examples(nlp: Any, data: List[Tuple[str, Any]]) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def train(nlp: Any, optimizer: Any, data: List[Example], epochs: int, seed: int) -> int:
    """Shuffled minibatches of BATCH; returns the number of updates."""
    updates = 0
    for epoch in range(epochs):
        order = list(data)
        random.Random(seed * 100 + epoch).shuffle(order)
        for i in range(0, len(order), BATCH):
            nlp.update(order[i : i + BATCH], sgd=optimizer, drop=0.1)
            updates += 1
    return updates


def per_type(nlp: Any, data: List[Example]) -> Dict[str, float]:
    scores = nlp.evaluate(data)
    out = {label: s["f"] for label, s in (scores["ents_per_type"] or {}).items()}
    out["ALL"] = scores["ents_f"] or 0.0
    return out


def run(kind: str, seed: int) -> Dict[str, Any]:
    fix_random_seed(seed)
    nlp = make_nlp(kind)
    train_data = examples(nlp, make_corpus(LABELS, SIZES["train"], seed=10 * seed + 1))
    dev = examples(nlp, make_corpus(LABELS, SIZES["dev"], seed=10 * seed + 2))
    nlp.initialize(lambda: train_data)
    optimizer = Adam(LEARN_RATE)
    updates = train(nlp, optimizer, train_data, EPOCHS, seed)
    result: Dict[str, Any] = {"updates": updates, "first": per_type(nlp, dev)}
    if kind == "ner":
        return result
    ner = nlp.get_pipe("torch_ner")
    before = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(
        eg.reference.text for eg in dev)]  # fmt: skip
    ner.add_label(NEW_LABEL)
    after = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(
        eg.reference.text for eg in dev)]  # fmt: skip
    result["unchanged"] = before == after
    new = examples(nlp, make_corpus(LABELS + [NEW_LABEL], SIZES["new"], seed=10 * seed + 3))
    rehearse = random.Random(seed).sample(train_data, SIZES["rehearse"])
    train(nlp, optimizer, new + rehearse, NEW_EPOCHS, seed + 1)
    dev_new = examples(nlp, make_corpus(LABELS + [NEW_LABEL], SIZES["dev"], 10 * seed + 4))
    result["second"] = per_type(nlp, dev)  # old types, on the old dev set
    result["new"] = per_type(nlp, dev_new)[NEW_LABEL]
    return result


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kinds = ["ner", "torch_ner", "torch_ner+crf"]
    results = {kind: [run(kind, seed) for seed in range(args.seeds)] for kind in kinds}
    mean = lambda values: 100 * statistics.mean(values)  # noqa: E731
    print(f"{args.seeds} seeds, {results['ner'][0]['updates']} updates of {BATCH} sentences")
    print("| model | ents_f | " + " | ".join(LABELS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in LABELS) + " |")
    for kind in kinds:
        firsts = [r["first"] for r in results[kind]]
        cells = [f"{mean([f.get(label, 0.0) for f in firsts]):.1f}" for label in LABELS]
        print(f"| {kind} | {mean([f['ALL'] for f in firsts]):.1f} | " + " | ".join(cells) + " |")
    print()
    print(f"| model | old decodes kept by add_label | {NEW_LABEL} F1 | old types before -> after |")
    print("| --- | --- | --- | --- |")
    ok = True
    spacy_f = mean([r["first"]["ALL"] for r in results["ner"]])
    for kind in kinds[1:]:
        rs = results[kind]
        old = " / ".join(
            f"{label} {mean([r['first'].get(label, 0) for r in rs]):.1f} -> "
            f"{mean([r['second'].get(label, 0) for r in rs]):.1f}"
            for label in LABELS
        )
        new_f = mean([r["new"] for r in rs])
        unchanged = all(r["unchanged"] for r in rs)
        print(f"| {kind} | {'yes' if unchanged else 'NO'} | {new_f:.1f} | {old} |")
        first_f = mean([r["first"]["ALL"] for r in rs])
        drops = [
            mean([r["first"].get(lab, 0) for r in rs]) - mean([r["second"].get(lab, 0) for r in rs])
            for lab in LABELS
        ]
        ok &= first_f >= spacy_f - 2 and new_f >= 80 and max(drops) <= 2 and unchanged
    print("all targets met" if ok else "a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
