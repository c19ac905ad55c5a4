"""torchlayers in a spaCy pipeline, end to end, on CPU.

1. Writes a synthetic corpus (corpus.py) as .spacy files.
2. Trains a `textcat` built from `torchlayers.TorchTextCat.v1` with `spacy train` (in process),
   overriding `--training.dropout`; checks the rate reached the torch module's own Dropout.
3. Loads the trained pipeline, adds a label (`textcat.add_label`), checks old-label scores
   are unchanged, trains on with `nlp.update` and the new category.
4. Evaluates live weights, the optimizer's averages (`nlp.use_params(optimizer.averages)`) and
   torchlayers' EMA (`use_averages`).
5. Saves, loads in a fresh Python process (`spacy.load`), checks the scores are identical.
6. Exports the textcat's torch weights (`python -m torchlayers export`) and loads the hidden MLP's
   into a plain torch module with `load_state_dict`: same outputs.
7. Prints a report; writes it, the training log and a plot (PNG, matplotlib) to
   out/spacy_demo/.

Run: `.venv/bin/python examples/spacy_demo/run.py` (from the repository root or anywhere).
Exits non-zero if a check fails.
"""

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "out" / "spacy_demo"
sys.path.insert(0, str(HERE))

import functions  # noqa: E402  registers spacy_demo.TorchMLP.v1 and torchlayers' architecture
import spacy  # noqa: E402
import torch  # noqa: E402
from corpus import LABELS, NEW_LABEL, make_corpus  # noqa: E402
from plots import plot_curves  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from spacy.cli.train import train  # noqa: E402
from spacy.language import Language  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import fix_random_seed  # noqa: E402

from torchlayers import use_averages  # noqa: E402
from torchlayers.interop import torch_module  # noqa: E402

DROPOUT = 0.2  # passed as --training.dropout (config.cfg says 0.1)
PROBES = [
    "the rain was heavy this morning",
    "we won the final on sunday",
    "my sister baked the bread again",
    "the kids missed the train near the station",
]
LOAD_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import functions  # the registered torch module the config names
import spacy
nlp = spacy.load(sys.argv[2])
texts = json.loads(sys.stdin.read())
print(json.dumps([doc.cats for doc in nlp.pipe(texts)]))
"""


def main() -> None:
    start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    fix_random_seed(0)
    train_pairs = make_corpus(LABELS, 100, seed=1)
    dev_pairs = make_corpus(LABELS, 30, seed=2)
    new_pairs = make_corpus([NEW_LABEL], 100, seed=3)
    dev_new_pairs = make_corpus([NEW_LABEL], 30, seed=4)

    # 1-2. corpus files, then `spacy train --training.dropout 0.2`
    nlp0 = spacy.blank("en")
    write_docbin(nlp0, train_pairs, LABELS, OUT / "train.spacy")
    write_docbin(nlp0, dev_pairs, LABELS, OUT / "dev.spacy")
    log_path = OUT / "train_log.jsonl"
    log_path.unlink(missing_ok=True)
    overrides = {
        "paths.train": str(OUT / "train.spacy"),
        "paths.dev": str(OUT / "dev.spacy"),
        "training.dropout": DROPOUT,
        "training.logger.output_file": str(log_path),
    }
    train(HERE / "config.cfg", OUT / "model", overrides=overrides)
    train_time = time.perf_counter() - start
    seen = sorted(set(functions.DROPOUT_SEEN))
    check(seen == [DROPOUT], f"torch Dropout rates seen in training {seen}, expected {DROPOUT}")

    # 3. the trained pipeline (saved by spacy train under the optimizer's averages)
    nlp = spacy.load(OUT / "model" / "model-last")
    textcat = nlp.get_pipe("textcat")
    dev3 = examples(nlp, dev_pairs, LABELS)
    acc_trained = accuracy(nlp, dev3)
    with use_averages(textcat.model):
        acc_trained_ema = accuracy(nlp, dev3)
    before = [nlp(text).cats for text in PROBES]
    textcat.add_label(NEW_LABEL)
    after = [nlp(text).cats for text in PROBES]
    drift = max(abs(a[label] - b[label]) for a, b in zip(after, before) for label in LABELS)
    check(drift < 1e-6, f"old-label scores moved by {drift} after add_label")

    # train on: the new category plus a rehearsal sample of the old ones, four labels each
    labels4 = LABELS + [NEW_LABEL]
    rng = random.Random(5)
    more = examples(nlp, new_pairs + rng.sample(train_pairs, 150), labels4)
    dev4 = examples(nlp, dev_pairs + dev_new_pairs, labels4)
    dev_new = examples(nlp, dev_new_pairs, labels4)
    optimizer = nlp.create_optimizer()  # [training.optimizer]: Adam with use_averages = true
    optimizer.learn_rate = 0.001  # gentler than the first run: the old labels are trained
    curve: List[Dict[str, float]] = []
    for epoch in range(1, 7):
        rng.shuffle(more)
        losses: Dict[str, float] = {}
        for i in range(0, len(more), 16):
            nlp.update(more[i : i + 16], sgd=optimizer, drop=DROPOUT, losses=losses)
        with nlp.use_params(optimizer.averages):
            acc_avg = accuracy(nlp, dev4)
        curve.append({"epoch": epoch, "loss": losses["textcat"], "live": accuracy(nlp, dev4),
                      "averages": acc_avg})  # fmt: skip

    # 4. live weights, the optimizer's averages, torchlayers' EMA
    scores = {"live": (accuracy(nlp, dev4), accuracy(nlp, dev_new))}
    with nlp.use_params(optimizer.averages):
        scores["optimizer.averages"] = (accuracy(nlp, dev4), accuracy(nlp, dev_new))
        averaged_cats = nlp(PROBES[0]).cats
    with use_averages(textcat.model):
        scores["use_averages (EMA)"] = (accuracy(nlp, dev4), accuracy(nlp, dev_new))
    live_cats = nlp(PROBES[0]).cats
    check(averaged_cats != live_cats, "nlp.use_params(optimizer.averages) changed nothing")
    check(scores["live"] == (accuracy(nlp, dev4), accuracy(nlp, dev_new)), "live not restored")

    # 5. save, load in a fresh process, same scores
    nlp.to_disk(OUT / "final")
    texts = PROBES + [text for text, _ in dev_new_pairs]
    here_cats = [doc.cats for doc in nlp.pipe(texts)]
    there_cats = load_in_fresh_process(OUT / "final", texts)
    check(there_cats == here_cats, "the pipeline loaded in a fresh process scores differently")

    # 6. the torch weights out to plain PyTorch, with the package's command
    export = [sys.executable, "-m", "torchlayers", "export", str(OUT / "final"), "textcat",
              str(OUT / "textcat.safetensors"), "--code", str(HERE / "functions.py")]  # fmt: skip
    subprocess.run(export, capture_output=True, text=True, check=True)
    gap = plain_torch_gap(textcat, OUT / "textcat.safetensors")
    check(gap < 1e-5, f"plain PyTorch with the exported weights differs by {gap}")

    # 7. report and plot
    steps = [json.loads(line) for line in log_path.read_text().splitlines()]
    plot_curves(OUT / "curves.png", steps, curve, NEW_LABEL)
    lines = report(seen, acc_trained, acc_trained_ema, before, after, drift, curve, scores)
    lines.append(
        f"python -m torchlayers export: plain torch_mlp + load_state_dict matches the "
        f"pipeline's module to {gap:.1e}"
    )
    lines.append(
        f"spacy train: {train_time:.1f} s; whole demo: {time.perf_counter() - start:.1f} s"
    )
    files = "model/, final/, train_log.jsonl, textcat.safetensors, curves.png, report.txt"
    lines.append(f"files: {OUT}/ ({files})")
    text = "\n".join(lines)
    (OUT / "report.txt").write_text(text + "\n")
    print("\n" + text)


def plain_torch_gap(textcat, weights: Path) -> float:
    """Load the hidden MLP's weights into a plain module from `functions.torch_mlp`; return the
    largest difference of its outputs from the pipeline's module on the same input."""
    with safe_open(str(weights), "pt") as f:  # the file names each module's path and node
        paths = json.loads(f.metadata()["torchlayers.modules"])
    path = next(p for p, name in paths.items() if name == "with_torch(Sequential)")
    state = load_file(weights)
    plain = functions.torch_mlp(nI=64, width=64, depth=2)  # as config.cfg builds it
    plain.load_state_dict({k[len(path) + 1 :]: v for k, v in state.items() if k.startswith(path)})
    X = torch.randn(8, 64)
    with torch.no_grad():
        ours = torch_module(textcat, path).eval()(X)
        return float((plain.eval()(X) - ours).abs().max())


def write_docbin(nlp: Language, pairs: Sequence[Tuple[str, str]], labels: List[str], path: Path):
    db = DocBin()
    for text, gold in pairs:
        doc = nlp.make_doc(text)
        doc.cats = {label: float(label == gold) for label in labels}
        db.add(doc)
    db.to_disk(path)


def examples(nlp: Language, pairs: Sequence[Tuple[str, str]], labels: List[str]) -> List[Example]:
    return [
        Example.from_dict(nlp.make_doc(text), {"cats": {lab: float(lab == gold) for lab in labels}})
        for text, gold in pairs
    ]


def accuracy(nlp: Language, dev: List[Example]) -> float:
    """The fraction of docs whose top-scoring label is the gold one."""
    docs = nlp.pipe(eg.reference.text for eg in dev)
    hits = [
        max(doc.cats, key=doc.cats.__getitem__) == max(eg.reference.cats, key=eg.reference.cats.get)
        for doc, eg in zip(docs, dev)
    ]
    return sum(hits) / len(hits)


def load_in_fresh_process(path: Path, texts: List[str]) -> List[Dict[str, float]]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(HERE), str(path)],
        input=json.dumps(texts), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SystemExit(f"FAILED: {message}")


def report(seen, acc_trained, acc_trained_ema, before, after, drift, curve, scores) -> List[str]:
    lines = ["== torchlayers spaCy demo ==",
             f"spacy train --training.dropout {DROPOUT}: torch Dropout p in training = {seen}",
             f"dev accuracy, 3 labels, after spacy train: {acc_trained:.3f} "
             f"(torchlayers EMA: {acc_trained_ema:.3f})",
             f"add_label({NEW_LABEL!r}): old-label scores moved by at most {drift:.1e}",
             ]  # fmt: skip
    for text, b, a in zip(PROBES, before, after):
        old = " ".join(f"{label[:4]}={b[label]:.3f}" for label in LABELS)
        lines.append(f"  {text[:42]:<42} before {old}  after +{NEW_LABEL[:4]}={a[NEW_LABEL]:.1e}")
    lines.append(f"nlp.update with {NEW_LABEL} (epoch: loss, dev accuracy live / optimizer avg):")
    for row in curve:
        lines.append(
            f"  {row['epoch']}: {row['loss']:.3f}  {row['live']:.3f} / {row['averages']:.3f}"
        )
    lines.append(f"dev accuracy, 4 labels / {NEW_LABEL} only:")
    for name, (all4, new) in scores.items():
        lines.append(f"  {name:<20} {all4:.3f} / {new:.3f}")
    lines.append("fresh-process spacy.load: identical scores on all probe and dev texts")
    return lines


if __name__ == "__main__":
    main()
