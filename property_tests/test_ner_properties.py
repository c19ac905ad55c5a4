"""torch_ner's decoding, CRF and teacher targets (N1, N2, N3, N5) as laws over generated scores."""

import itertools
from typing import List, Tuple

import numpy
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchlayers.spacy._ner_teacher import (
    ANNOTATED_WEIGHT,
    annotated_columns,
    row_weights,
    soft_loss,
    soft_targets,
    teacher_ids,
)
from torchlayers.spacy.biluo import is_valid, transition_scores, viterbi
from torchlayers.spacy.crf import LinearChainCRF, boundary_allowed, log_partition

from .strategies import biluo_scores, crf_cases, new_type_cases


@given(case=biluo_scores(), learned=st.booleans(), seed=st.integers(0, 2**16))
def test_decoding_always_yields_valid_biluo(case, learned, seed):
    """N1: for any finite score matrix (and any learned transitions), decoding yields a valid
    BILUO sequence for every doc, of the doc's length."""
    n_labels, docs = case
    matrix = None
    if learned:
        matrix = numpy.random.RandomState(seed).uniform(-50, 50, (2 + 4 * n_labels,) * 2)
    trans, start, end = transition_scores(n_labels, matrix)
    for scores, tags in zip(docs, viterbi(docs, trans, start, end)):
        assert len(tags) == len(scores)
        assert is_valid(tags.tolist(), n_labels)


@given(case=biluo_scores(max_labels=1, max_len=4, max_docs=3))
def test_decoding_finds_the_best_valid_path(case):
    """N1: the Viterbi path scores as high as the best valid path found by enumeration."""
    n_labels, docs = case
    trans, start, end = transition_scores(n_labels)
    for scores, tags in zip(docs, viterbi(docs, trans, start, end)):
        valid = [
            path
            for path in itertools.product(range(scores.shape[1]), repeat=len(scores))
            if is_valid(path, n_labels)
        ]
        best = max(path_score(scores, path) for path in valid)
        assert path_score(scores, tags) == pytest.approx(best, rel=1e-6, abs=1e-3)


@given(case=biluo_scores(), extra=st.integers(1, 2), gap=st.floats(1e-2, 1e3))
def test_adding_types_with_far_below_scores_keeps_old_decodes(case, extra, gap):
    """N2: appending `extra` types whose scores are below every old score (the output layer's
    new units start at -16 with zero weights) leaves every old decode identical."""
    n_labels, docs = case
    old = viterbi(docs, *transition_scores(n_labels))
    grown = []
    for scores in docs:
        fill = (scores.min() if scores.size else 0.0) - gap
        new = numpy.full((len(scores), 4 * extra), fill, dtype="f")
        grown.append(numpy.concatenate([scores, new], axis=1))
    new_tags = viterbi(grown, *transition_scores(n_labels + extra))
    for a, b in zip(old, new_tags):
        numpy.testing.assert_array_equal(a, b)


@given(case=crf_cases())
def test_crf_forward_algorithm_equals_enumeration(case):
    """N3: the CRF's log-partition (all paths, and those the gold allows) equals log-sum-exp over
    every valid BILUO path, enumerated (length <= 4, <= 2 types)."""
    n_labels, transitions, emissions, gold, lengths = case
    crf = LinearChainCRF(transitions.shape[0])
    with torch.no_grad():
        crf.transitions.weight.copy_(torch.from_numpy(transitions))
    mask = numpy.arange(emissions.shape[1])[None, :] < numpy.array(lengths)[:, None]
    scores = crf.scores()
    args = (torch.from_numpy(emissions), torch.from_numpy(mask), scores)
    everything = log_partition(args[0], None, args[1], scores).detach().numpy()
    agreeing = log_partition(args[0], torch.from_numpy(gold), args[1], scores).detach().numpy()
    for doc, length in enumerate(lengths):
        emit = emissions[doc, :length]
        assert everything[doc] == pytest.approx(
            enumerate_paths(emit, transitions, n_labels), abs=1e-4
        )
        allowed = gold[doc, :length]
        expect = enumerate_paths(emit, transitions, n_labels, allowed)
        assert agreeing[doc] == pytest.approx(expect, abs=1e-4)
    loss = crf(*[torch.from_numpy(a) for a in (emissions, gold, mask)]).detach()
    assert float(loss) == pytest.approx(float((everything - agreeing).sum()), abs=1e-4)


def path_score(scores: numpy.ndarray, path) -> float:
    return float(sum(scores[t, tag] for t, tag in enumerate(path)))


def enumerate_paths(
    emissions: numpy.ndarray, transitions: numpy.ndarray, n_labels: int, gold=None
) -> float:
    """log-sum-exp of the scores of every valid path (that `gold` allows), by brute force."""
    length, n_tags = emissions.shape
    allowed = boundary_allowed(n_tags + 1)
    totals: List[float] = []
    for path in itertools.product(range(n_tags), repeat=length):
        states: Tuple[int, ...] = (0, *[tag + 1 for tag in path], 0)
        if not all(allowed[a, b] for a, b in zip(states, states[1:])):
            continue
        if gold is not None and not all(gold[t, tag] for t, tag in enumerate(path)):
            continue
        total = sum(transitions[a, b] for a, b in zip(states, states[1:]))
        totals.append(float(total + sum(emissions[t, tag] for t, tag in enumerate(path))))
    return float(numpy.logaddexp.reduce(numpy.array(totals, dtype="f8")))


@given(case=new_type_cases())
def test_annotated_types_gradient_follows_the_teacher_off_the_gold_spans(case):
    """N5: with annotated_types set, at a token the gold marks O the gradient of the loss
    w.r.t. the scores is softmax - the teacher's softmax over the other tags (the annotated
    types' tags zeroed, renormalised): it pulls no probability toward an annotated type's tag;
    at a gold entity token it is ANNOTATED_WEIGHT * (softmax - one_hot); at a missing token 0."""
    n_labels, annotated, student, teacher, gold = case
    banned = annotated_columns([f"T{i}" for i in range(n_labels)], [f"T{i}" for i in annotated])
    _, d = soft_loss(student, soft_targets(teacher, gold, banned), row_weights(gold))
    probs = softmax(student.astype("f8"))
    outside = gold == 0
    target = softmax(teacher.astype("f8"))
    target[:, banned] = 0
    target /= target.sum(axis=1, keepdims=True)
    numpy.testing.assert_allclose(d[outside], (probs - target)[outside], atol=1e-5)
    assert (d[outside][:, banned] >= -1e-7).all()  # descent lowers (never raises) those scores
    inside = numpy.nonzero(gold > 0)[0]
    one_hot = numpy.eye(student.shape[1])[gold[inside]]
    numpy.testing.assert_allclose(
        d[inside], ANNOTATED_WEIGHT * (probs[inside] - one_hot), atol=1e-5
    )
    assert (d[gold < 0] == 0).all()


@given(case=new_type_cases(), learned=st.booleans())
def test_annotated_types_teacher_path_keeps_the_gold(case, learned):
    """N5 (CRF): the teacher's targets form a valid BILUO path that keeps every gold entity
    tag, uses no annotated type's tag where the gold says O, and leaves missing tokens free."""
    n_labels, annotated, _, teacher, gold = case
    banned = annotated_columns([f"T{i}" for i in range(n_labels)], [f"T{i}" for i in annotated])
    matrix = None
    if learned:
        matrix = numpy.random.RandomState(len(gold)).uniform(-5, 5, (2 + 4 * n_labels,) * 2)
    (ids,) = teacher_ids([teacher], [gold], banned, transition_scores(n_labels, matrix))
    assert (ids[gold > 0] == gold[gold > 0]).all() and (ids[gold < 0] == -1).all()
    assert not numpy.isin(ids[gold == 0], banned).any()
    known = numpy.nonzero(ids >= 0)[0]
    forced = numpy.zeros(teacher.shape, dtype="f")
    forced[known] = -1e6
    forced[known, ids[known]] = 0
    (path,) = viterbi([forced], *transition_scores(n_labels))  # some valid path agrees?
    assert (path[known] == ids[known]).all() and is_valid(path.tolist(), n_labels)


def softmax(scores: numpy.ndarray) -> numpy.ndarray:
    e = numpy.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
