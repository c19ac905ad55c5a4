"""P8: torch_ner's decoding against its prediction, and its training speed against spaCy's ner.

- Decoding (Viterbi over 41 BILUO tags: 10 types) of a batch of 1000 tokens (50 docs of 20)
  against a whole prediction (the model's forward pass + decoding), with the component's
  default model (HashEmbedCNN width 96, depth 4; torch MLP 64). Budget: <= 0.20x. Per-token
  and with `transitions = true`.
- Training words/s of `torch_ner` (both variants) against spaCy's `ner`, same tok2vec config,
  same batches of the project's NER corpus: a ratio of words/s (no budget; > 1 is faster).
- P13: training words/s of `torch_ner` with `transitions = true` against the per-token variant,
  same cases. Budget: >= 0.80x.
- The torchlayers EMA the default model no longer keeps (`max_decay = null`) against the one it
  kept before (`max_decay = 0.999`): the time of an update and the saved bytes, as ratios
  (no budget; < 1 is what dropping it saves).
"""

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, cast

import spacy
from spacy.language import Language
from spacy.training import Example
from thinc.api import Adam, Optimizer, fix_random_seed

from torchlayers.spacy.ner import TorchEntityRecognizer  # also registers torch_ner

from ._timing import medians, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "torch_ner"))
from ner_corpus import LABELS, make_corpus  # noqa: E402

TYPES = [f"TYPE{i}" for i in range(10)]
DOCS, TOKENS = 50, 20
WORDS = "the of Paris and a in Berlin to was Apple Mary said for on it with as by".split()


def decoding_cases(transitions: bool, varied: bool = False) -> Dict[str, Callable[[], object]]:
    """Prediction (forward + decode) and decoding alone, 10 types, 1000 tokens a batch: 50 docs
    of 20 tokens, or (`varied`) of 1 to 39 tokens, as tweets are (decoding runs to the longest
    doc of a batch; the docs still running at each step are all it works on)."""
    fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = cast(
        TorchEntityRecognizer,
        nlp.add_pipe("torch_ner", config={"model": {"transitions": transitions}}),
    )
    for label in TYPES:
        ner.add_label(label)
    lengths = [1 + (i * 29) % 39 if varied else TOKENS for i in range(DOCS)]
    docs = [
        spacy.tokens.Doc(nlp.vocab, words=[WORDS[(i * 7 + j) % len(WORDS)] for j in range(n)])
        for i, n in enumerate(lengths)
    ]
    nlp.initialize(lambda: [Example(doc, doc) for doc in docs[:4]])
    scores = ner.model.predict(docs)
    return {"predict": lambda: ner.predict(docs), "decode": lambda: ner.decode(scores)}


def initialized(nlp: Language, data: List[Tuple[str, Any]]) -> List[Any]:
    """Initializes `nlp` on the corpus `data`; returns its examples."""
    egs: List[Any] = [Example.from_dict(nlp.make_doc(t), {"entities": e}) for t, e in data]
    nlp.initialize(lambda: egs)
    return egs


def update(nlp: Language, egs: List[Any], sgd: Optimizer) -> Callable[[], object]:
    """A case to time: one nlp.update on `egs`."""
    return lambda: nlp.update(egs, sgd=sgd)


def training_cases() -> Dict[str, Callable[[], object]]:
    """One nlp.update on 32 sentences, per pipeline; the same tok2vec config for each."""
    tok2vec = {
        "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 96,
        "depth": 4, "embed_size": 2000, "window_size": 1, "maxout_pieces": 3,
        "subword_features": True,
    }  # fmt: skip
    data = make_corpus(LABELS, 32, seed=1)
    cases: Dict[str, Callable[[], object]] = {}
    for name, factory, model in (
        ("ner", "ner", {"tok2vec": tok2vec}),
        ("torch_ner", "torch_ner", {"tok2vec": tok2vec}),
        ("torch_ner+crf", "torch_ner", {"tok2vec": tok2vec, "transitions": True}),
    ):
        fix_random_seed(0)
        nlp = spacy.blank("en")
        nlp.add_pipe(factory, config={"model": model})
        egs = initialized(nlp, data)
        optimizer = Adam(0.001)
        cases[name] = update(nlp, egs, optimizer)
    return cases


def ema_cases() -> Tuple[Dict[str, Callable[[], object]], Dict[str, int]]:
    """One nlp.update on 32 sentences with and without the EMA, and each pipeline's saved size
    after training (default model, per-token)."""
    data = make_corpus(LABELS, 32, seed=1)
    cases: Dict[str, Callable[[], object]] = {}
    sizes: Dict[str, int] = {}
    for name, max_decay in (("no EMA", None), ("EMA", 0.999)):
        fix_random_seed(0)
        nlp = spacy.blank("en")
        nlp.add_pipe("torch_ner", config={"model": {"max_decay": max_decay}})
        egs = initialized(nlp, data)
        optimizer = Adam(0.001)
        nlp.update(egs, sgd=optimizer)  # the EMA exists from the first update
        sizes[name] = len(cast(TorchEntityRecognizer, nlp.get_pipe("torch_ner")).to_bytes())
        cases[name] = update(nlp, egs, optimizer)
    return cases, sizes


def main() -> bool:
    ok = True
    for transitions, varied in ((False, False), (True, False), (False, True)):
        times = medians(decoding_cases(transitions, varied), rounds=15, number=5)
        label = "with transitions" if transitions else "per-token"
        label += ", docs of 1-39 tokens" if varied else ""
        ok &= report(
            f"P8 torch_ner decoding vs prediction ({label})",
            times["decode"] / times["predict"],
            0.20,
        )
    times = medians(training_cases(), rounds=9, number=2)
    for name in ("torch_ner", "torch_ner+crf"):
        ratio = times["ner"] / times[name]
        print(f"{name} training words/s vs spaCy ner: {ratio:.2f}x (no budget; > 1 is faster)")
    crf_vs_per_token = times["torch_ner"] / times["torch_ner+crf"]
    ok &= report("P13 torch_ner+crf training words/s vs per-token", crf_vs_per_token, 0.8, "higher")
    cases, sizes = ema_cases()
    times = medians(cases, rounds=9, number=2)
    ratio = times["no EMA"] / times["EMA"]
    print(f"torch_ner update without the EMA vs with it: {ratio:.2f}x time (no budget)")
    size = sizes["no EMA"] / sizes["EMA"]
    print(f"torch_ner saved bytes without the EMA vs with it: {size:.2f}x (no budget)")
    return ok
