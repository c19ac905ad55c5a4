"""Word pieces of a batch of docs as transformer windows, and the way back to one row per token.

Pure numpy: `plan` takes each doc's pieces (ids, and the token each piece belongs to) and
returns the padded windows the transformer runs on and, for every token of the batch, which
rows of the transformer's flattened output pool into it (T1, T2).
"""

from dataclasses import dataclass
from typing import List, Sequence

import numpy

POOLINGS = ("mean", "first", "last")


@dataclass
class Batch:
    """A batch of docs as transformer input, and the map back to tokens.

    input_ids, attention_mask: `(n_windows, length)` int64, padded; a doc's windows are rows
        of their own, so its rows never depend on the other docs (T2).
    rows: for each piece that pools into a token, in token order, its row in the transformer's
        output flattened to `(n_windows * length, width)`.
    lengths: per token of the batch (docs in order), how many of `rows` pool into it; 0 for a
        token without pieces (it gets zeros).
    doc_tokens: the number of tokens of each doc.
    """

    input_ids: numpy.ndarray
    attention_mask: numpy.ndarray
    rows: numpy.ndarray
    lengths: numpy.ndarray
    doc_tokens: List[int]


@dataclass
class Specials:
    """What the tokenizer puts around a sequence: its special pieces, and the padding id."""

    prefix: List[int]
    suffix: List[int]
    pad: int


def plan(
    pieces: Sequence[Sequence[int]],
    words: Sequence[Sequence[int]],
    doc_tokens: Sequence[int],
    specials: Specials,
    window: int,
    stride: int,
    pooling: str,
) -> Batch:
    """Cut each doc's pieces into windows of at most `window` pieces (special pieces included)
    stepping by `stride`, and pick each token's rows.

    pieces[d], words[d]: the piece ids of doc d (no special pieces) and, per piece, the index
        of the token it belongs to (non-decreasing: `word_ids()` of a split-into-words input).
    A piece inside several windows is read from the one where it sits most centrally: the most
    pieces between it and the nearer edge of the window's text (ties: the earlier window).
    """
    prefix = numpy.asarray(specials.prefix, dtype="int64")
    suffix = numpy.asarray(specials.suffix, dtype="int64")
    content = window - len(prefix) - len(suffix)
    windows: List[numpy.ndarray] = []  # each window's piece ids, specials included
    picked_window: List[numpy.ndarray] = []  # per kept piece: its window (batch-wide index)
    picked_offset: List[numpy.ndarray] = []  # per kept piece: its position in that window
    lengths: List[numpy.ndarray] = []
    for doc_ids, doc_owners, n_tokens in zip(pieces, words, doc_tokens):
        ids = numpy.asarray(doc_ids, dtype="int64")
        owners = numpy.asarray(doc_owners, dtype="int64")
        starts = window_starts(len(ids), content, stride)
        best = best_windows(len(ids), starts, content)
        keep = kept_pieces(owners, pooling)
        for start in starts:
            body = ids[start : start + content]
            windows.append(numpy.concatenate([prefix, body, suffix]))
        first_window = len(windows) - len(starts)
        starts_arr = numpy.asarray(starts, dtype="int64")
        kept = numpy.flatnonzero(keep)
        picked_window.append(first_window + best[kept])
        picked_offset.append(len(prefix) + kept - starts_arr[best[kept]])
        lengths.append(numpy.bincount(owners[kept], minlength=n_tokens))
    length = max((len(w) for w in windows), default=0)
    input_ids = numpy.full((len(windows), length), specials.pad, dtype="int64")
    attention_mask = numpy.zeros((len(windows), length), dtype="int64")
    for row, window_ids in enumerate(windows):
        input_ids[row, : len(window_ids)] = window_ids
        attention_mask[row, : len(window_ids)] = 1
    rows = numpy.concatenate(picked_window + [numpy.zeros(0, "int64")]) * length
    rows += numpy.concatenate(picked_offset + [numpy.zeros(0, "int64")])
    return Batch(
        input_ids,
        attention_mask,
        rows,
        numpy.concatenate(lengths + [numpy.zeros(0, "int64")]).astype("int32"),
        list(doc_tokens),
    )


def window_starts(n_pieces: int, content: int, stride: int) -> List[int]:
    """Where each window's text starts: 0, stride, 2*stride, ... until one reaches the end.
    With stride <= content, every piece is inside a window; no pieces, no window."""
    if n_pieces == 0:
        return []
    starts = [0]
    while starts[-1] + content < n_pieces:
        starts.append(starts[-1] + stride)
    return starts


def best_windows(n_pieces: int, starts: Sequence[int], content: int) -> numpy.ndarray:
    """For each piece, the window (index into `starts`) where it sits most centrally."""
    best = numpy.zeros(n_pieces, dtype="int64")
    score = numpy.full(n_pieces, -1, dtype="int64")
    for index, start in enumerate(starts):
        end = min(start + content, n_pieces)
        position = numpy.arange(end - start)
        here = numpy.minimum(position, end - start - 1 - position)  # pieces to the nearer edge
        better = here > score[start:end]
        score[start:end][better] = here[better]
        best[start:end][better] = index
    return best


def kept_pieces(owners: numpy.ndarray, pooling: str) -> numpy.ndarray:
    """Which pieces pool into their token: all (mean), each token's first, or its last."""
    if pooling == "mean" or len(owners) == 0:
        return numpy.ones(len(owners), dtype=bool)
    changes = owners[1:] != owners[:-1]
    if pooling == "first":
        return numpy.concatenate([[True], changes])
    return numpy.concatenate([changes, [True]])
