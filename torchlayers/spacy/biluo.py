"""BILUO tags for `torch_ner`: the tag list, the allowed transitions, and a vectorised Viterbi.

Tags: `O` at index 0, then `B-`, `I-`, `L-`, `U-` for each entity type in the order the types
were added. A new type appends its four tags at the end, so old tags keep their indices (and
their output units). Allowed transitions (from -> to):

    O, L-x, U-x, start  ->  O, B-y, U-y, end          (outside an entity: start one, or not)
    B-x, I-x            ->  I-x, L-x                  (inside an entity of type x: go on, or end)

Decoding maximises the sum of per-token scores (plus learned transition scores, for a CRF) over
the sequences these transitions allow, so its output is always a valid BILUO sequence.
"""

from typing import List, Optional, Sequence, Tuple

import numpy

PREFIXES = ("B", "I", "L", "U")
FORBIDDEN = float("-inf")  # the score of a transition BILUO does not allow


def check_label(component: str, label: object) -> str:
    """An entity type: a non-empty string that cannot be mistaken for a BILUO tag."""
    if not isinstance(label, str):
        raise ValueError(f"{component}: an entity type must be a str, got {label!r}")
    if not label.strip():
        raise ValueError(f"{component}: an entity type must be a non-empty str, got {label!r}")
    if label in ("O", "-") or label.startswith("-") or label[:2] in {f"{p}-" for p in PREFIXES}:
        raise ValueError(
            f"{component}: entity type {label!r} reads as a BILUO tag; expected a bare type "
            "such as 'PERSON' (the B-/I-/L-/U- tags are made from it)"
        )
    return label


def tag_names(labels: Sequence[str]) -> List[str]:
    """`O`, then `B-`, `I-`, `L-`, `U-` for each label, in the labels' order."""
    return ["O"] + [f"{prefix}-{label}" for label in labels for prefix in PREFIXES]


def allowed_transitions(n_labels: int) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """(allowed[from, to], allowed_start[to], allowed_end[from]) as bool arrays over the tags."""
    prefix = numpy.array(["O"] + list(PREFIXES) * n_labels)
    kind = numpy.array([-1] + [k for k in range(n_labels) for _ in PREFIXES])
    opens = (prefix == "O") | (prefix == "B") | (prefix == "U")  # may follow outside
    closed = (prefix == "O") | (prefix == "L") | (prefix == "U")  # ends outside an entity
    inner = (prefix == "I") | (prefix == "L")  # continues an entity
    same = kind[:, None] == kind[None, :]
    allowed = (closed[:, None] & opens[None, :]) | (~closed[:, None] & inner[None, :] & same)
    return allowed, opens.copy(), closed.copy()


def transition_scores(
    n_labels: int, learned: Optional[numpy.ndarray] = None
) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """(trans, start, end) scores: 0 (or `learned`) where BILUO allows, -inf where not.

    learned: a CRF's (n+1, n+1) matrix, row/column 0 the sequence boundary (start row, end
        column), tags 1..n; None for per-token decoding.
    """
    allowed, start_ok, end_ok = allowed_transitions(n_labels)
    if learned is None:
        trans = numpy.zeros(allowed.shape, dtype="f")
        start = numpy.zeros(start_ok.shape, dtype="f")
        end = numpy.zeros(end_ok.shape, dtype="f")
    else:
        learned = numpy.asarray(learned, dtype="f")
        trans, start, end = learned[1:, 1:].copy(), learned[0, 1:].copy(), learned[1:, 0].copy()
    trans[~allowed] = FORBIDDEN
    start[~start_ok] = FORBIDDEN
    end[~end_ok] = FORBIDDEN
    return trans, start, end


def viterbi(
    scores: Sequence[numpy.ndarray],
    trans: numpy.ndarray,
    start: numpy.ndarray,
    end: numpy.ndarray,
) -> List[numpy.ndarray]:
    """The best tag sequence of each doc: argmax over paths of sum(scores) + transitions.

    scores: one (n_tokens, n_tags) float array per doc. trans (n_tags, n_tags), start and end
        (n_tags,) as from `transition_scores`: -inf forbids. Docs are decoded together, longest
        first: one loop over time steps, each a (docs, tags, tags) max over the docs still
        running at that step (as a packed sequence: no work on padding, which on tweets of
        1-40 tokens was half the decoding).
    Returns one int array of tag indices per doc. Scores must be finite (-inf would forbid a
    tag outright; nan has no order).
    """
    lengths = numpy.array([len(s) for s in scores], dtype="i")
    n_docs, n_tags = len(scores), trans.shape[0]
    width = int(lengths.max()) if n_docs else 0
    if width == 0:
        return [numpy.zeros((0,), dtype="i") for _ in scores]
    order = numpy.argsort(-lengths, kind="stable")  # longest first: the running docs lead
    ordered = lengths[order]
    running = (ordered[None, :] > numpy.arange(width)[:, None]).sum(axis=1)  # docs at step t
    padded = numpy.zeros((n_docs, width, n_tags), dtype="f")
    for row, i in enumerate(order):
        padded[row, : lengths[i]] = scores[i]
    back = numpy.zeros((n_docs, width, n_tags), dtype="i")
    delta = start[None, :] + padded[:, 0]
    for t in range(1, width):
        n = running[t]
        candidates = delta[:n, :, None] + trans[None, :, :]  # (doc, from, to)
        back[:n, t] = candidates.argmax(axis=1)
        stepped = numpy.take_along_axis(candidates, back[:n, t][:, None, :], axis=1)[:, 0]
        delta[:n] = stepped + padded[:n, t]
    current = (delta + end[None, :]).argmax(axis=1)  # each doc's last tag
    tags = numpy.zeros((n_docs, width), dtype="i")
    for t in range(width - 1, -1, -1):
        if t + 1 < width:  # docs longer than t + 1 step back; the others end at t or before
            n = running[t + 1]
            current[:n] = back[numpy.arange(n), t + 1, current[:n]]
        tags[: running[t], t] = current[: running[t]]
    decoded: List[numpy.ndarray] = [numpy.zeros((0,), dtype="i")] * n_docs
    for row, i in enumerate(order):
        decoded[i] = tags[row, : lengths[i]]
    return decoded


def is_valid(tags: Sequence[int], n_labels: int) -> bool:
    """Whether a sequence of tag indices is a valid BILUO sequence."""
    allowed, start_ok, end_ok = allowed_transitions(n_labels)
    if len(tags) == 0:
        return True
    steps = all(allowed[a, b] for a, b in zip(tags[:-1], tags[1:]))
    return bool(start_ok[tags[0]] and end_ok[tags[-1]] and steps)
