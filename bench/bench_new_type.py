"""Q3: add an entity type from examples that label only it, and keep the old types (N5).

On folds of the WNUT-16 tweets (`../shared/data/wnut16/train.conll`, CoNLL `token TAB BIO-tag`,
10 types; or `--data PATH`, or `$WNUT16_TRAIN`; without the file this prints where to put it
and exits 0). For each held-out type T and seed s (fold s of 5: the rest trains, the fold tests):

1. Train on every type but T (T's spans made O) for `--epochs` epochs; the old types' micro F
   on the test fold, with the optimizer's averages (as `spacy train` evaluates and saves).
2. From those averaged weights (as `spacy train` sources a trained component) and a fresh
   optimizer, add T and train `--new-epochs` epochs on the training tweets with only T's spans
   (every other token O), then measure the old types' F and T's F again. Systems:
   - `torch_ner, annotated_types`: `annotated_types = [T]` (N5);
   - `torch_ner, no setting`: plain fine-tuning on the same examples;
   - `torch_ner, pseudo-rehearsal`: each training tweet re-annotated by hand with the old
     model's entities (those not overlapping T's spans) plus T's spans;
   - `spaCy ner, nlp.rehearse`: spaCy's own `ner`, trained the same way, then
     `nlp.resume_training()` and, per batch, `nlp.update` on the T-only examples and
     `nlp.rehearse` on a batch of raw training tweets;
   - `torch_ner, nlp.rehearse` (with `--torch-rehearse`): the same loop for torch_ner;
   - `control` (with `--systems control`): no new type at all, the same `--new-epochs` on the
     old types' own examples, as in step 1. How far the old types' F moves when nothing is
     added: the noise floor a "within 1 point" target sits on.

Same tok2vec (spaCy's default HashEmbedCNN: width 96, depth 4, 2000 rows), batches of 32
tweets, dropout 0.1, spaCy's default optimizer (Adam 0.001, L2 0.01, grad_clip 1.0, averages)
for every system; one torch thread. Prints one Markdown row per system and seed, then the means.

With `--repeats R`, step 2 runs R times from the same step-1 pipeline, with seeds `s + 1000 r`
for its batch order and dropout (r = 0 is the run without the option; `--first-repeat F`
starts at r = F, for fresh runs of pipelines already measured), and a table of each
fold's mean change follows: how far the old types move on that fold, apart from the luck of
one fine-tuning run. `--cache DIR` keeps step 1's pipelines and reuses them. Seeds s and
s + 5 test on the same fold from other step-1 trainings; with more than one seed per fold, a
table of each fold's mean over its seeds (and repeats) follows: how far the old types move
on that fold, apart from the luck of one step-1 training too.

Run: `.venv/bin/python -m bench.bench_new_type --types company --seeds 0 [--transitions]`.
Minutes per type and seed on one CPU thread (step 1 about 5, step 2 about 1.5 per system and
repeat); not part of `make bench`.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, cast

import numpy
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Adam, Optimizer, fix_random_seed

import torchlayers.spacy.ner  # noqa: F401  registers torch_ner

from ._tweets import DATA, Found, Tweet, micro_f, missing, read_conll

TOK2VEC = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 96,
    "depth": 4, "embed_size": 2000, "window_size": 1, "maxout_pieces": 3,
    "subword_features": True,
}  # fmt: skip
BATCH, DROP, FOLDS = 32, 0.1, 5


def keep_types(tags: Sequence[str], keep: Set[str]) -> List[str]:
    """BIO tags with every span whose type is not in `keep` made O."""
    return [tag if tag == "O" or tag[2:] in keep else "O" for tag in tags]


def make_examples(nlp: Language, tweets: Sequence[Tweet], keep: Set[str]) -> List[Example]:
    out = []
    for words, tags in tweets:
        gold = Doc(nlp.vocab, words=words, ents=keep_types(tags, keep))
        out.append(Example(Doc(nlp.vocab, words=words), gold))
    return out


def spans_of(docs: Sequence[Doc], types: Set[str]) -> Set[Found]:
    return {
        (i, e.start, e.end, e.label_)
        for i, d in enumerate(docs)
        for e in d.ents
        if e.label_ in types
    }


def scores(nlp: Language, test: Sequence[Example], old: Set[str], new: str) -> Tuple[float, float]:
    """(old types' micro F, the new type's F) on the test examples, in points."""
    predicted = list(nlp.pipe(Doc(nlp.vocab, words=[t.text for t in eg.reference]) for eg in test))
    gold = [eg.reference for eg in test]
    return (
        micro_f(spans_of(gold, old), spans_of(predicted, old)),
        micro_f(spans_of(gold, {new}), spans_of(predicted, {new})),
    )


def make_nlp(factory: str, transitions: bool) -> Language:
    nlp = spacy.blank("en")
    model: Dict[str, Any] = {"tok2vec": TOK2VEC}
    if factory == "torch_ner":
        model["transitions"] = transitions
    nlp.add_pipe(factory, name="ner", config={"model": model})
    return nlp


def optimizer() -> Optimizer:
    return Adam(0.001, L2=0.01, grad_clip=1.0, use_averages=True)  # spaCy's default


def train(
    nlp: Language,
    examples: List[Example],
    epochs: int,
    sgd: Optimizer,
    seed: int,
    after_batch: Optional[Callable[[int, List[Example]], None]] = None,
) -> None:
    rng = numpy.random.RandomState(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(examples))
        for b, i in enumerate(range(0, len(order), BATCH)):
            batch = [examples[j] for j in order[i : i + BATCH]]
            nlp.update(batch, sgd=sgd, drop=DROP)
            if after_batch is not None:
                after_batch(epoch * 10_000 + b, batch)


def pseudo_examples(nlp: Language, tweets: Sequence[Tweet], new: str) -> List[Example]:
    """Each tweet: the old model's entities that do not overlap a gold `new` span, plus those."""
    out = []
    docs = nlp.pipe(Doc(nlp.vocab, words=words) for words, _ in tweets)
    for (words, tags), doc in zip(tweets, docs):
        gold = Doc(nlp.vocab, words=words, ents=keep_types(tags, {new}))
        taken = {i for e in gold.ents for i in range(e.start, e.end)}
        old = [e for e in doc.ents if not taken & set(range(e.start, e.end))]
        spans = list(gold.ents) + [Span(gold, e.start, e.end, e.label_) for e in old]
        gold.ents = sorted(spans, key=lambda span: span.start)
        out.append(Example(Doc(nlp.vocab, words=words), gold))
    return out


Row = Tuple[float, float, float]  # old types' F before, after, the new type's F


def run_one(
    tweets: List[Tweet], new: str, seed: int, args: argparse.Namespace
) -> Dict[str, List[Row]]:
    """{system: one row per repeat} for one held-out type and seed. Repeat r (from
    `--first-repeat`) fine-tunes the same step-1 pipeline with seed `seed + 1000 * r` (batch
    order, dropout); r = 0 is `seed`."""
    folds = numpy.random.RandomState(0).permutation(len(tweets)) % FOLDS
    train_tw = [t for t, f in zip(tweets, folds) if f != seed % FOLDS]
    test_tw = [t for t, f in zip(tweets, folds) if f == seed % FOLDS]
    results: Dict[str, List[Row]] = {}
    trained: Dict[str, Tuple[bytes, float]] = {}
    systems = list(args.systems)
    if args.torch_rehearse and "torch-rehearse" not in systems:
        systems.append("torch-rehearse")
    for factory in sorted({factory_of(system) for system in systems}):
        trained[factory] = step_one(factory, (train_tw, test_tw), new, seed, args)
    for system in systems:
        factory = factory_of(system)
        for r in range(args.first_repeat, args.first_repeat + args.repeats):
            start = time.perf_counter()
            row = fine_tune(
                system, trained[factory], (train_tw, test_tw), new, seed + 1000 * r, args
            )
            results.setdefault(system, []).append(row)
            log(f"{new} seed {seed}.{r}: {system}: old {row[0]:.1f} -> {row[1]:.1f}, "
                f"{new} {row[2]:.1f} ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return results


def factory_of(system: str) -> str:
    """The component a system trains: spaCy's `ner` for its own baseline, else `torch_ner`."""
    return "ner" if system == "spacy-rehearse" else "torch_ner"


def type_sets(tweets: Sequence[Tweet], new: str) -> Tuple[Set[str], Set[str]]:
    """Every entity type in the tweets, and every type but `new` (the old ones)."""
    types = {tag[2:] for _, tags in tweets for tag in tags if tag != "O"}
    return types, types - {new}


def step_one(
    factory: str,
    split: Tuple[List[Tweet], List[Tweet]],
    new: str,
    seed: int,
    args: argparse.Namespace,
) -> Tuple[bytes, float]:
    """Step 1: the pipeline trained on every type but `new`, saved with the optimizer's
    averages, and its old types' F; from `--cache` when it holds it."""
    train_tw, test_tw = split
    types, old = type_sets(train_tw + test_tw, new)
    cached = cache_path(args, factory, new, seed)
    fix_random_seed(seed)
    if cached is not None and cached.exists():
        data = cached.read_bytes()
        nlp = make_nlp(factory, args.transitions).from_bytes(data)
        before = scores(nlp, make_examples(nlp, test_tw, types), old, new)[0]
        log(f"{new} seed {seed}: {factory} from {cached}, old F {before:.1f}")
        return data, before
    nlp = make_nlp(factory, args.transitions)
    examples = make_examples(nlp, train_tw, old)
    nlp.initialize(lambda: examples)
    sgd = optimizer()
    train(nlp, examples, args.epochs, sgd, seed)
    with nlp.use_params(sgd.averages):
        before = scores(nlp, make_examples(nlp, test_tw, types), old, new)[0]
        data = nlp.to_bytes()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
    log(f"{new} seed {seed}: {factory} trained, old F {before:.1f}")
    return data, before


def fine_tune(
    system: str,
    trained: Tuple[bytes, float],
    split: Tuple[List[Tweet], List[Tweet]],
    new: str,
    tune: int,
    args: argparse.Namespace,
) -> Row:
    """Step 2 for one system: from step 1's pipeline and its old F, add `new` (or, the control,
    add nothing) and train `--new-epochs` epochs with seed `tune`; measure again."""
    data, before = trained
    train_tw, test_tw = split
    types, old = type_sets(train_tw + test_tw, new)
    factory = factory_of(system)
    fix_random_seed(tune)
    nlp = make_nlp(factory, args.transitions).from_bytes(data)
    ner = cast(Any, nlp.get_pipe("ner"))  # spaCy's ner or torch_ner
    if system == "pseudo":
        examples = pseudo_examples(nlp, train_tw, new)  # before add_label: old types only
    elif system == "control":
        examples = make_examples(nlp, train_tw, old)  # step 1's own examples
    else:
        examples = make_examples(nlp, train_tw, {new})
    sgd = optimizer()
    hook = None
    if system.endswith("rehearse"):
        nlp.resume_training(sgd=sgd)
        raw = [Example(eg.predicted, eg.predicted) for eg in examples]
        rng = numpy.random.RandomState(tune + 1)

        def hook(step: int, batch: List[Example]) -> None:
            picks = rng.randint(0, len(raw), BATCH)
            nlp.rehearse([raw[j] for j in picks], sgd=sgd)

    if system != "control":
        ner.add_label(new)
    if system == "annotated":
        ner.annotated_types = [new]
    train(nlp, examples, args.new_epochs, sgd, tune, hook)
    with nlp.use_params(sgd.averages):
        after, new_f = scores(nlp, make_examples(nlp, test_tw, types), old, new)
    return before, after, new_f


def cache_path(args: argparse.Namespace, factory: str, new: str, seed: int) -> Optional[Path]:
    """Where `--cache` keeps step 1's trained pipeline (the same for every system: trained
    from the same seed, it is the same to the byte), or None without `--cache`."""
    if args.cache is None:
        return None
    crf = "-crf" if args.transitions and factory == "torch_ner" else ""
    return args.cache / f"{factory}{crf}-{new}-seed{seed}-epochs{args.epochs}.spacy"


NAMES = {
    "annotated": "`torch_ner`, `annotated_types = [T]`",
    "plain": "`torch_ner`, no setting (plain fine-tuning)",
    "pseudo": "`torch_ner`, pseudo-rehearsal by hand",
    "spacy-rehearse": "spaCy `ner`, `nlp.rehearse`",
    "torch-rehearse": "`torch_ner`, `nlp.rehearse`",
    "control": "`torch_ner`, control: no new type, the old types' own examples again",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_means(title: str, key: str, groups: Dict[Tuple[str, str, int], List[Row]]) -> None:
    """One row per held-out type, system and `key` (a seed, or a fold): the mean change of the
    old types' F over the group's runs, its spread, the mean F before and the new type's F."""
    print(f"\n{title}")
    print(f"| held-out type | {key} | system | old F before | change, mean (min to max) | new F |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (new, system, label), rows in groups.items():
        changes = [after - before for before, after, _ in rows]
        before, new_f = (statistics.mean(r[k] for r in rows) for k in (0, 2))
        print(f"| {new} | {label} | {NAMES[system]} | {before:.1f} | "
              f"{statistics.mean(changes):+.1f} ({min(changes):+.1f} to {max(changes):+.1f}) | "
              f"{new_f:.1f} |")  # fmt: skip


def by_fold(runs: Dict[Tuple[str, str, int], List[Row]]) -> Dict[Tuple[str, str, int], List[Row]]:
    """The runs of every seed that tests on the same fold (seed % FOLDS), together."""
    folds: Dict[Tuple[str, str, int], List[Row]] = {}
    for (new, system, seed), rows in runs.items():
        folds.setdefault((new, system, seed % FOLDS), []).extend(rows)
    return folds


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--types", nargs="+", default=["company"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--new-epochs", type=int, default=10)
    parser.add_argument("--transitions", action="store_true")
    parser.add_argument("--torch-rehearse", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=1, help="fine-tune each step-1 pipeline this many times"
    )
    parser.add_argument(
        "--first-repeat", type=int, default=0, help="the first repeat's r (seed s + 1000 r)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="a folder to keep and reuse step 1's pipelines (empty it when the code changes)",
    )
    default_systems = ["annotated", "plain", "pseudo", "spacy-rehearse"]
    parser.add_argument("--systems", nargs="+", default=default_systems, choices=list(NAMES))
    args = parser.parse_args(argv)
    if missing(args.data, "Q3"):
        return 0
    torch.set_num_threads(1)
    tweets = read_conll(args.data)
    print(f"Q3 on {len(tweets)} tweets from {args.data}; {vars(args)}")
    print("| held-out type | seed | system | old types F before | after | new type F |")
    print("| --- | --- | --- | --- | --- | --- |")
    runs: Dict[Tuple[str, str, int], List[Row]] = {}
    for new in args.types:
        for seed in args.seeds:
            for system, rows in run_one(tweets, new, seed, args).items():
                runs[(new, system, seed)] = rows
                for r, row in enumerate(rows, start=args.first_repeat):
                    print(f"| {new} | {seed}.{r} | {NAMES[system]} | {row[0]:.1f} | "
                          f"{row[1]:.1f} | {row[2]:.1f} |", flush=True)  # fmt: skip
    if args.repeats > 1:
        print_means("Means over the repeats of each seed", "seed", runs)
    if len({seed % FOLDS for seed in args.seeds}) < len(args.seeds):
        print_means("Means over the seeds (and repeats) of each fold", "fold", by_fold(runs))
    print("\nMeans over every run (spread: min-max of old F after)")
    print("| held-out type | system | old types F before | after | change | new type F |")
    print("| --- | --- | --- | --- | --- | --- |")
    table: Dict[Tuple[str, str], List[Row]] = {}  # every run of a type and system
    for (new, system, _), rows in runs.items():
        table.setdefault((new, system), []).extend(rows)
    for (new, system), rows in table.items():
        b, a, n = (statistics.mean(r[k] for r in rows) for k in range(3))
        spread = f"{min(r[1] for r in rows):.1f}-{max(r[1] for r in rows):.1f}"
        print(
            f"| {new} | {NAMES[system]} | {b:.1f} | {a:.1f} ({spread}) | {a - b:+.1f} | {n:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
