"""Targets from a frozen teacher for `torch_ner` (N5 `annotated_types`, and `rehearse`).

With `annotated_types` set, an example's gold says "these types only": a token inside a gold
span keeps its gold tag; a token the gold marks `O` is *not* one of the annotated types, but
may be any other type, and what it is comes from a teacher (a frozen copy of the model taken
when this training began):

- per token (`soft_targets`): the teacher's softmax over the tags that remain (`O` and the
  other types' tags; the annotated types' tags get probability 0, the rest renormalised) is
  the target of a soft cross-entropy, whose gradient is `softmax - target`; a token inside a
  gold span weighs `ANNOTATED_WEIGHT` (0.5) in it (`row_weights`): the distillation's usual
  balance between the hard labels and the teacher. Learning the new type is what moves the
  shared layers, and the teacher's targets hold the old types on the training tweets only, so
  the hard labels at half weight move the old types less on unseen ones (Q3 on WNUT-16, ten
  folds: the weakest fold's mean change -0.9 against -1.7 at weight 1 over six runs each, and
  -0.8 over nine fresh runs each; docs/torch_ner.md);
- with the CRF (`teacher_ids`): the teacher's best valid BILUO path under the gold's
  constraints (gold tags inside gold spans, no annotated type's tag outside them) becomes the
  gold tag sequence of the CRF loss (hard targets: a CRF's loss takes allowed tags, not
  distributions). Decoding under the constraints, instead of dropping the teacher's spans that
  overlap gold spans afterwards, always yields a valid sequence.

`rehearse` uses the same targets with no gold at all: the teacher's softmax everywhere, or its
best path.

Gold ids per token: -1 missing (no gradient), 0 `O`, > 0 an entity tag.
"""

from typing import List, Sequence, Tuple

import numpy

from .biluo import PREFIXES, viterbi

# The weight of a token inside a gold span in the per-token loss, where the teacher's tokens
# weigh 1 (measured on real tweets, Q3: docs/torch_ner.md).
ANNOTATED_WEIGHT = 0.5

# Added to the teacher's score of a tag the gold rules out before decoding. Far below any
# path's score, but finite (viterbi needs finite scores): no allowed path ever carries it.
RULED_OUT = -1.0e6


def annotated_columns(labels: Sequence[str], annotated: Sequence[str]) -> numpy.ndarray:
    """The tag indices (B-, I-, L-, U-) of the annotated types, in the order of `tag_names`."""
    width = len(PREFIXES)
    return numpy.array(
        [1 + width * labels.index(label) + k for label in annotated for k in range(width)],
        dtype="i",
    )


def log_softmax(scores: numpy.ndarray) -> numpy.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - numpy.log(numpy.exp(shifted).sum(axis=1, keepdims=True))


def soft_targets(
    teacher: numpy.ndarray, gold: numpy.ndarray, banned: numpy.ndarray
) -> numpy.ndarray:
    """One target distribution per token: one-hot at an entity tag of the gold, the teacher's
    softmax without the `banned` tags (renormalised) where the gold says `O` (or, `gold` None
    in `rehearse`, everywhere), a zero row where the annotation is missing."""
    scores = teacher.astype("f8")
    scores[:, banned] = -numpy.inf  # O is never banned: every row keeps a finite score
    targets = numpy.exp(log_softmax(scores))
    rows = numpy.nonzero(gold > 0)[0]
    targets[rows] = 0.0
    targets[rows, gold[rows]] = 1.0
    targets[gold < 0] = 0.0
    return targets.astype("f")


def row_weights(gold: numpy.ndarray) -> numpy.ndarray:
    """Each token's weight in the soft loss: `ANNOTATED_WEIGHT` inside a gold span, else 1."""
    return numpy.where(gold > 0, ANNOTATED_WEIGHT, 1.0)


def soft_loss(
    scores: numpy.ndarray, targets: numpy.ndarray, weights: numpy.ndarray
) -> Tuple[float, numpy.ndarray]:
    """Cross-entropy of each row's softmax against its target distribution, times the row's
    weight (`row_weights`), and its gradient `weight * (softmax - target)` (unnormalised, as
    `softmax_loss`); an all-zero target row counts for nothing."""
    log_probs = log_softmax(scores)
    used = targets.sum(axis=1) > 0
    d = (numpy.exp(log_probs) - targets) * weights[:, None]
    d[~used] = 0.0
    return float((-(targets * log_probs).sum(axis=1) * weights).sum()), d.astype("f")


def teacher_ids(
    teacher: Sequence[numpy.ndarray],
    gold: Sequence[numpy.ndarray],
    banned: numpy.ndarray,
    transitions: Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray],
) -> List[numpy.ndarray]:
    """Gold ids for the CRF loss: the teacher's best valid path that keeps every gold entity
    tag and, where the gold says `O`, uses no `banned` tag; -1 where the gold is missing."""
    constrained = []
    for scores, ids in zip(teacher, gold):
        offset = numpy.zeros(scores.shape, dtype="f")
        outside = ids == 0
        offset[numpy.ix_(outside, banned)] = RULED_OUT
        inside = numpy.nonzero(ids > 0)[0]
        offset[inside] = RULED_OUT
        offset[inside, ids[inside]] = 0.0
        constrained.append(scores.astype("f") + offset)
    paths = viterbi(constrained, *transitions)
    return [numpy.where(ids < 0, -1, path).astype("i") for ids, path in zip(gold, paths)]
