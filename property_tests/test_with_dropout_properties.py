"""with_dropout laws (D1, D3, D5, D8) over generated shapes, rates and sequences."""

import math
from typing import List

import numpy
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import Linear, Padded, Ragged, fix_random_seed, noop

from torchlayers.with_dropout import with_dropout

from .strategies import RATES, SIZES, nonzero_arrays, sequence_batches

RTOL = 1e-6  # float32: the kept scale 1/(1-rate) is rounded to float32 once
SEEDS = st.integers(0, 2**16)


def expected_mask(Y: numpy.ndarray, rate: float) -> numpy.ndarray:
    """The mask Y implies when the layer's output has no zero: 0 where dropped, else 1/(1-rate)."""
    return numpy.where(Y == 0, 0.0, 1.0 / (1.0 - rate)).astype("float32")


@given(X=nonzero_arrays(), rate=RATES, seed=SEEDS)
def test_output_and_gradient_are_masked_alike(X: numpy.ndarray, rate: float, seed: int) -> None:
    """D1: training output is layer(X) * mask (kept units scaled by 1/(1-rate)), and backprop
    multiplies dY by the same mask."""
    fix_random_seed(seed)
    Y, backprop = with_dropout(noop(), rate)(X, is_train=True)
    mask = expected_mask(Y, rate)
    assert_allclose(Y, X * mask, rtol=RTOL)
    dY = X[::-1].copy()
    assert_allclose(backprop(dY), dY * mask, rtol=RTOL)


@given(X=nonzero_arrays(max_dims=2).map(numpy.atleast_2d), nO=SIZES, rate=RATES, seed=SEEDS)
def test_gradient_is_the_layers_backprop_of_the_masked_dY(
    X: numpy.ndarray, nO: int, rate: float, seed: int
) -> None:
    """D1: dX = backprop_layer(dY * mask), with the mask that the forward pass drew."""
    fix_random_seed(seed)
    model = with_dropout(Linear(nO), rate)
    model.initialize(X=X)
    layer = model.layers[0]
    full = layer.predict(X)
    Y, backprop = model(X, is_train=True)
    mask = expected_mask(Y, rate)
    assert_allclose(Y, full * mask, rtol=RTOL)
    dY = numpy.ones_like(Y) + Y
    _, backprop_layer = layer(X, is_train=True)
    assert_allclose(backprop(dY), backprop_layer(dY * mask), rtol=RTOL, atol=1e-7)


@given(X=nonzero_arrays(), rate=RATES)
def test_prediction_is_the_layers_very_output(X: numpy.ndarray, rate: float) -> None:
    """D3: prediction, or rate 0 in training, returns exactly the layer's output object."""
    assert with_dropout(noop(), rate).predict(X) is X
    Y, _ = with_dropout(noop(), 0.0)(X, is_train=True)
    assert Y is X


def assert_rows_shared(mask: numpy.ndarray) -> None:
    """Every time step (row) of one sequence's mask equals its first."""
    assert_array_equal(mask, numpy.broadcast_to(mask[:1], mask.shape))


@given(Xs=sequence_batches(), rate=RATES, seed=SEEDS)
def test_variational_ragged_and_lists_share_a_mask_per_sequence(
    Xs: List[numpy.ndarray], rate: float, seed: int
) -> None:
    """D5: variational, Ragged or list of arrays: one mask per sequence, shared by its steps."""
    fix_random_seed(seed)
    model = with_dropout(noop(), rate, mode="variational")
    lengths = numpy.array([len(x) for x in Xs], dtype="int32")
    Yr, backprop = model(Ragged(numpy.concatenate(Xs), lengths), is_train=True)
    assert_array_equal(Yr.lengths, lengths)
    dX = backprop(Ragged(numpy.ones_like(Yr.dataXd), lengths))
    assert_allclose(Yr.dataXd, numpy.concatenate(Xs) * dX.dataXd, rtol=RTOL)
    for mask in numpy.split(dX.dataXd, numpy.cumsum(lengths)[:-1]):
        assert_rows_shared(mask)
    Ys, _ = model(Xs, is_train=True)
    for x, y in zip(Xs, Ys):
        mask = expected_mask(y, rate)
        assert_allclose(y, x * mask, rtol=RTOL)
        assert_rows_shared(mask)


@given(Xs=sequence_batches(min_length=1), rate=RATES, seed=SEEDS)
def test_variational_padded_shares_a_mask_over_time(
    Xs: List[numpy.ndarray], rate: float, seed: int
) -> None:
    """D5: variational, Padded: one (batch, nO) mask, the same at every time step."""
    fix_random_seed(seed)
    Xp = noop().ops.list2padded(Xs)
    Yp, backprop = with_dropout(noop(), rate, mode="variational")(Xp, is_train=True)
    ones = numpy.ones_like(Xp.data)
    dX = backprop(Padded(ones, Xp.size_at_t, Xp.lengths, Xp.indices))
    assert_allclose(Yp.data, Xp.data * dX.data, rtol=RTOL)
    assert_rows_shared(dX.data)  # padding steps included: the mask does not know them


def dropped_fraction_tolerance(rate: float, n: int) -> float:
    """How far the dropped fraction of n independent units may stray from `rate`.

    6 standard deviations of the binomial fraction, plus 10/n for the Poisson regime of rates
    near 0 or 1. By Bernstein's inequality, P(|p - rate| > 6 sd + 10/n) <= 2 exp(-15) < 1e-6
    for every rate and n, so 30 examples fail by chance with probability below 3e-5.
    """
    return 6 * math.sqrt(rate * (1 - rate) / n) + 10 / n


@given(rate=RATES, seed=SEEDS, variational=st.booleans())
def test_dropped_fraction_is_the_rate_and_mask_mean_is_one(
    rate: float, seed: int, variational: bool
) -> None:
    """D8: the fraction of dropped units is close to the rate and the mask's mean close to 1."""
    fix_random_seed(seed)
    units = (200, 200)  # n = 40,000 independent draws: sd of the fraction <= 0.0025
    if variational:  # 3 time steps share each draw: count the independent (batch, nO) ones
        ones = numpy.ones((3, *units), dtype="float32")
        lengths = numpy.full(units[0], 3, dtype="int32")
        size_at_t = numpy.full(3, units[0], dtype="int32")
        X = Padded(ones, size_at_t, lengths, numpy.arange(units[0], dtype="int32"))
        Y, _ = with_dropout(noop(), rate, mode="variational")(X, is_train=True)
        mask = Y.data[0]
    else:
        mask, _ = with_dropout(noop(), rate)(numpy.ones(units, dtype="float32"), is_train=True)
    tolerance = dropped_fraction_tolerance(rate, mask.size)
    dropped = float((mask == 0).mean())
    assert abs(dropped - rate) <= tolerance
    # mean = (1 - dropped) / (1 - rate), so it strays by |dropped - rate| / (1 - rate), plus
    # float32 rounding of the kept scale (relative 6e-8)
    assert abs(float(mask.mean(dtype="float64")) - 1) <= tolerance / (1 - rate) + 1e-6
