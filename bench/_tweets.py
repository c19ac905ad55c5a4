"""The WNUT-16 tweets the real-text benchmarks share (Q1, Q2, Q3, P12): where they lie, how
they are read, and how entities are scored. Standard library only: bench_transformers runs
its spacy-transformers worker from another virtual environment, without torchlayers."""

import os
from pathlib import Path
from typing import List, Set, Tuple

# CoNLL `token TAB BIO-tag`, beside the repository; WNUT16_TRAIN points elsewhere.
DATA = Path(
    os.environ.get(
        "WNUT16_TRAIN",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "wnut16" / "train.conll",
    )
)
Tweet = Tuple[List[str], List[str]]  # words, BIO tags
Found = Tuple[int, int, int, str]  # doc, start, end, type


def read_conll(path: Path) -> List[Tweet]:
    tweets: List[Tweet] = []
    words: List[str] = []
    tags: List[str] = []
    for line in path.read_text(encoding="utf8").splitlines() + [""]:
        if not line.strip():
            if words:
                tweets.append((words, tags))
            words, tags = [], []
            continue
        word, tag = line.rsplit("\t", 1)
        words.append(word)
        tags.append(tag)
    return tweets


def micro_f(gold: Set[Found], predicted: Set[Found]) -> float:
    """Entity micro F in points."""
    hits = len(gold & predicted)
    return 200.0 * hits / (len(gold) + len(predicted)) if gold or predicted else 0.0


def missing(path: Path, bench: str) -> bool:
    """True, after saying where the tweets go, when there are none at `path`."""
    if path.exists():
        return False
    print(f"{bench} skipped: no tweets at {path} (put WNUT-16's train.conll there, or pass "
          "--data PATH or set WNUT16_TRAIN)")  # fmt: skip
    return True
