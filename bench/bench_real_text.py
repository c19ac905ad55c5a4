"""Q1: entity F on real tweets, spaCy's CNN `ner` against the torch encoder and `torch_ner`.

On folds of the WNUT-16 tweets (`../shared/data/wnut16/train.conll`, CoNLL `token TAB BIO-tag`,
10 types; or `--data PATH`, or `$WNUT16_TRAIN`; without the file this prints where to put it
and exits 0). Seed s trains on 4 of 5 folds and tests on fold s (the folds of
bench/bench_new_type.py, whose loading and training loop this reuses). Systems:

- `ner-cnn`: spaCy's `ner` over its default tok2vec (`spacy.HashEmbedCNN.v2`: width 96,
  depth 4, embed 2000 rows: spaCy's default `ner` config);
- `ner-bilstm`: spaCy's `ner` over `spacy.Tok2Vec.v2` with the same embedding
  (`spacy.MultiHashEmbed.v2`, NORM/PREFIX/SUFFIX/SHAPE, rows 2000/1000/1000/1000, width 96)
  and `torchlayers.TorchBiLSTMEncoder.v2` (width 96) as the encoder;
- `torch-cnn`, `torch-bilstm`: `torch_ner` (per-token) over those two tok2vecs;
- `crf-cnn`, `crf-bilstm`: `torch_ner` with `transitions = true` over them;
- `ner-transformer`: spaCy's `ner` over the same embedding and
  `torchlayers.TorchTransformerEncoder.v2` (width 96, its defaults: depth 2, 4 heads), from
  scratch (not held to Q1).

Every system: the same examples, epochs, batches of 32 tweets in the same order, dropout 0.1,
spaCy's default optimizer (Adam 0.001, L2 0.01, grad_clip 1.0, averages), one torch thread.
After each epoch, entity F (micro, spaCy's scorer: `nlp.evaluate`'s `ents_f`) on the test
fold with the optimizer's averages, as `spacy train` evaluates; the table gives the last
epoch's ("final") and the best epoch's, mean over seeds with the spread (min-max), and the
training words/s of each system over `ner-cnn`'s in the same seed (evaluation not counted).

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_real_text --epochs 10 --seeds 0 1 2
--write` (`--write` puts the table into docs/benchmarks.md). About a minute per system, seed
and 10 epochs on one CPU thread; not part of `make bench`. `--train-f N` also logs each epoch's
F on the first N training tweets, to see how far a system has fit its training folds.
"""

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy
import spacy
import torch
from spacy.language import Language
from spacy.training import Example
from thinc.api import fix_random_seed

import torchlayers.spacy.encoders  # noqa: F401  registers the encoders
import torchlayers.spacy.ner  # noqa: F401  registers torch_ner

from ._tweets import DATA, Tweet, missing, read_conll
from .bench_new_type import BATCH, FOLDS, TOK2VEC, log, make_examples, optimizer, train

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- Q1 table: bench/bench_real_text.py --write -->", "<!-- end of Q1 table -->"
SYSTEMS = {
    "ner-cnn": "spaCy `ner` over its default CNN",
    "ner-bilstm": "spaCy `ner` over `torchlayers.TorchBiLSTMEncoder.v2`",
    "torch-cnn": "`torch_ner` (per-token) over the CNN",
    "torch-bilstm": "`torch_ner` (per-token) over the BiLSTM v2",
    "crf-cnn": "`torch_ner`, `transitions = true`, over the CNN",
    "crf-bilstm": "`torch_ner`, `transitions = true`, over the BiLSTM v2",
    "ner-transformer": "spaCy `ner` over `torchlayers.TorchTransformerEncoder.v2`",
}
Result = Tuple[float, float, float]  # final F, best F, training words/s


def torch_tok2vec(encoder: str, depth: int) -> Dict[str, Any]:
    """`spacy.Tok2Vec.v2`: HashEmbedCNN's own embedding, a torchlayers v2 encoder (`bilstm`,
    `depth` layers, or `transformer` with its own defaults) after it."""
    width, rows = cast(int, TOK2VEC["width"]), cast(int, TOK2VEC["embed_size"])
    embed = {
        "@architectures": "spacy.MultiHashEmbed.v2", "width": width,
        "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
        "rows": [rows, rows // 2, rows // 2, rows // 2], "include_static_vectors": False,
    }  # fmt: skip
    encode: Dict[str, Any] = {"width": width}
    if encoder == "bilstm":
        encode.update({"@architectures": "torchlayers.TorchBiLSTMEncoder.v2", "depth": depth})
    else:
        encode["@architectures"] = "torchlayers.TorchTransformerEncoder.v2"
    return {"@architectures": "spacy.Tok2Vec.v2", "embed": embed, "encode": encode}


def make_nlp(system: str, depth: int, hidden_width: int = 64) -> Language:
    head, encoder = system.split("-")
    tok2vec = TOK2VEC if encoder == "cnn" else torch_tok2vec(encoder, depth)
    nlp = spacy.blank("en")
    if head == "ner":  # spaCy's parser model: its hidden_width is 64 by default too
        model = {"tok2vec": tok2vec, "hidden_width": hidden_width}
        nlp.add_pipe("ner", config={"model": model})
    else:
        model = {"tok2vec": tok2vec, "transitions": head == "crf", "hidden_width": hidden_width}
        nlp.add_pipe("torch_ner", name="ner", config={"model": model})
    return nlp


def run_one(system: str, folds: Tuple[List[Tweet], List[Tweet]], seed: int, args: Any) -> Result:
    train_tw, test_tw = folds
    types = {tag[2:] for _, tags in train_tw + test_tw for tag in tags if tag != "O"}
    fix_random_seed(seed)
    nlp = make_nlp(system, args.depth, args.hidden_width)
    examples = make_examples(nlp, train_tw, types)
    test = make_examples(nlp, test_tw, types)
    nlp.initialize(lambda: examples)
    sgd = optimizer()
    per_epoch = (len(examples) + BATCH - 1) // BATCH
    scores: List[float] = []
    evaluating = [0.0]

    def evaluate(step: int, batch: List[Example]) -> None:
        if step % 10_000 != per_epoch - 1:
            return
        start = time.perf_counter()
        with nlp.use_params(sgd.averages):
            scores.append(100.0 * (nlp.evaluate(test)["ents_f"] or 0.0))
            fitted = ""
            if args.train_f:  # how far the model has fit what it trains on
                seen = 100.0 * (nlp.evaluate(examples[: args.train_f])["ents_f"] or 0.0)
                fitted = f", F {seen:.1f} on {args.train_f} training tweets"
        evaluating[0] += time.perf_counter() - start
        log(f"{system} seed {seed} epoch {len(scores)}: F {scores[-1]:.1f}{fitted}")

    start = time.perf_counter()
    train(nlp, examples, args.epochs, sgd, seed, evaluate)
    seconds = time.perf_counter() - start - evaluating[0]
    words = args.epochs * sum(len(eg.reference) for eg in examples)
    return scores[-1], max(scores), words / seconds


def spread(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def table(results: Dict[str, Dict[int, Result]], seeds: Sequence[int]) -> List[str]:
    lines = [
        "| system | entity F, final | best epoch | per seed (final) | vs CNN `ner`, paired "
        "(seeds at or above) | train words/s vs CNN `ner` |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = results.get("ner-cnn", {})
    for system, rows in results.items():
        final = [rows[s][0] for s in seeds if s in rows]
        best = [rows[s][1] for s in seeds if s in rows]
        paired = [rows[s][0] - base[s][0] for s in seeds if s in rows and s in base]
        ratios = [rows[s][2] / base[s][2] for s in seeds if s in rows and s in base]
        versus = "-"
        if paired and system != "ner-cnn":
            above = sum(d >= 0 for d in paired)
            versus = f"{statistics.mean(paired):+.1f} ({above} of {len(paired)})"
        ratio = f"{statistics.mean(ratios):.2f}x" if ratios else "-"
        per_seed = " / ".join(f"{f:.1f}" for f in final)
        lines.append(
            f"| {SYSTEMS[system]} | {spread(final)} | {spread(best)} | {per_seed} | {versus} "
            f"| {ratio} |"
        )
    return lines


# What main prints per run: "seed 3 ner-cnn: final F 39.5, best 40.4, 5771 train words/s".
RUN_LINE = re.compile(r"^seed (\d+) (\S+): final F ([\d.]+), best ([\d.]+), (\d+) train words/s")


def from_logs(paths: Sequence[Path]) -> Dict[str, Dict[int, Result]]:
    """The runs printed into these logs (several processes' runs of the same settings, merged;
    a system and seed met twice keeps the later)."""
    results: Dict[str, Dict[int, Result]] = {system: {} for system in SYSTEMS}
    for path in paths:
        for line in path.read_text(encoding="utf8").splitlines():
            found = RUN_LINE.match(line)
            if found and found.group(2) in SYSTEMS:
                seed, system = int(found.group(1)), found.group(2)
                results[system][seed] = (
                    float(found.group(3)),
                    float(found.group(4)),
                    float(found.group(5)),
                )
    return {system: rows for system, rows in results.items() if rows}


def write(lines: List[str], command: str) -> None:
    text = DOCS.read_text(encoding="utf8")
    block = "\n".join([BEGIN, f"`{command}`", "", *lines, END])
    pattern = re.escape(BEGIN) + ".*?" + re.escape(END)
    if not re.search(pattern, text, flags=re.S):
        raise ValueError(f"{DOCS}: no Q1 table block ({BEGIN} ... {END}) to replace")
    DOCS.write_text(re.sub(pattern, lambda _: block, text, flags=re.S), encoding="utf8")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    q1 = [system for system in SYSTEMS if system != "ner-transformer"]  # opt-in: not Q1's
    parser.add_argument("--systems", nargs="+", default=q1, choices=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--depth", type=int, default=1, help="the BiLSTM's depth")
    parser.add_argument(
        "--hidden-width", type=int, default=64, help="the ner head's (spaCy's or torch_ner's)"
    )
    parser.add_argument(
        "--train-f", type=int, default=0, metavar="N",
        help="also log each epoch's F on the first N training tweets (not counted in words/s)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help=f"put the table into {DOCS}")
    parser.add_argument(
        "--from-logs", nargs="+", type=Path, help="no training: the table of runs printed in logs"
    )
    args = parser.parse_args(argv)
    command = "python -m bench.bench_real_text " + " ".join(argv or sys.argv[1:])
    if args.from_logs:
        logged = from_logs(args.from_logs)
        seeds = sorted({seed for rows in logged.values() for seed in rows})
        lines = table(logged, seeds)
        print("\n".join(lines))
        if args.write:
            write(lines, command)
        return 0
    if missing(args.data, "Q1"):
        return 0
    torch.set_num_threads(1)
    tweets = read_conll(args.data)
    folds = numpy.random.RandomState(0).permutation(len(tweets)) % FOLDS
    print(f"Q1 on {len(tweets)} tweets from {args.data}; {vars(args)}")
    results: Dict[str, Dict[int, Result]] = {system: {} for system in args.systems}
    for seed in args.seeds:
        train_tw = [t for t, f in zip(tweets, folds) if f != seed % FOLDS]
        test_tw = [t for t, f in zip(tweets, folds) if f == seed % FOLDS]
        for system in args.systems:
            row = results[system][seed] = run_one(system, (train_tw, test_tw), seed, args)
            print(f"seed {seed} {system}: final F {row[0]:.1f}, best {row[1]:.1f}, "
                  f"{row[2]:.0f} train words/s", flush=True)  # fmt: skip
    lines = table(results, args.seeds)
    print("\n".join(lines))
    if args.write:
        write(lines, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
