"""spaCy's ner on a torch BiLSTM encoder, end to end, on CPU in well under a minute.

1. Writes a synthetic corpus (encoder_corpus.py: PERSON and CITY) as .spacy files.
2. Fills config.cfg with spaCy's defaults (`spacy init fill-config`) and trains `ner` (spaCy's
   transition-based parser over `spacy.Tok2Vec.v2` whose encoder is
   `torchlayers.TorchBiLSTMEncoder.v1`) with `spacy train`, in process.
3. Loads the best pipeline, adds an entity type (`ner.add_label("PRODUCT")`), checks every old
   entity prediction is unchanged, then trains on sentences with products (`nlp.update`) and
   checks the new type is learnt while the torch encoder's weights keep moving.
4. Prints a report.

Run: `.venv/bin/python examples/ner_encoder/run.py`. Exits non-zero if a check fails.
"""

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy  # noqa: E402
import spacy  # noqa: E402
import torch  # noqa: E402
from encoder_corpus import make_corpus  # noqa: E402
from spacy.cli.init_config import fill_config  # noqa: E402
from spacy.cli.train import train  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import fix_random_seed  # noqa: E402

NEW = "PRODUCT"


def write(nlp, pairs, path: Path) -> None:
    docs = []
    for text, entities in pairs:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in entities]
        docs.append(doc)
    DocBin(docs=docs).to_disk(path)


def examples(nlp, pairs) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in pairs]


def encoder_weights(nlp) -> Dict[str, numpy.ndarray]:
    node = next(n for n in nlp.get_pipe("ner").model.walk() if n.name.startswith("with_torch("))
    return {name: node.get_param(name).copy() for name in node.param_names}


def entities(nlp, texts: List[str]) -> List[List]:
    return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]


def main(train_steps: int = 60, new_steps: int = 20) -> Dict[str, float]:
    start = time.perf_counter()
    torch.set_num_threads(1)
    report: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        blank = spacy.blank("en")
        write(blank, make_corpus(300, seed=0), root / "train.spacy")
        write(blank, make_corpus(60, seed=1), root / "dev.spacy")
        overrides = {
            "paths.train": str(root / "train.spacy"),
            "paths.dev": str(root / "dev.spacy"),
            "training.max_steps": train_steps,
        }
        fill_config(root / "config.cfg", HERE / "config.cfg", silent=True)  # spaCy's defaults
        train(root / "config.cfg", root / "out", overrides=overrides)
        nlp = spacy.load(root / "out" / "model-best")

    dev = examples(nlp, make_corpus(60, seed=1))
    report["ents_f before"] = nlp.evaluate(dev)["ents_f"]
    new_train = make_corpus(60, seed=2, new_type=True)
    new_dev = examples(nlp, make_corpus(20, seed=3, new_type=True))
    texts = [eg.reference.text for eg in dev + new_dev]
    before = entities(nlp, texts)

    ner = nlp.get_pipe("ner")
    ner.add_label(NEW)
    unchanged = entities(nlp, texts) == before
    print(f"after add_label({NEW!r}): old predictions unchanged: {unchanged}")

    weights = encoder_weights(nlp)
    optimizer = nlp.resume_training()
    fix_random_seed(0)
    rng = random.Random(0)
    mixed = examples(nlp, new_train) + examples(nlp, make_corpus(60, seed=4))
    for _ in range(new_steps):
        rng.shuffle(mixed)
        for i in range(0, len(mixed), 16):
            nlp.update(mixed[i : i + 16], sgd=optimizer, drop=0.1)
    after = encoder_weights(nlp)
    moved = any(not numpy.array_equal(weights[name], after[name]) for name in weights)
    scores = nlp.evaluate(dev + new_dev)
    report["ents_f after"] = scores["ents_f"]
    report[f"{NEW} f"] = scores["ents_per_type"].get(NEW, {}).get("f", 0.0)
    print(f"encoder weights moved while learning {NEW}: {moved}")
    for name, value in report.items():
        print(f"{name}: {value:.3f}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    if not (unchanged and moved and report[f"{NEW} f"] > 0.5):
        raise SystemExit("a check failed")
    return report


if __name__ == "__main__":
    main()
