"""averaged and resizable together (A5) over generated layers, nestings, sizes and updates.

Averages are copied, not computed, by a resize: compared exactly. Outputs use RTOL/ATOL (SPEC,
note under R5: matrix kernels sum in another order when a dimension changes).
"""

from typing import Any, Dict, Tuple

import numpy
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import SGD, Model

from torchlayers.averaged import averages, is_averaged, settle, use_averages
from torchlayers.resizable import is_resizable, resize_input, resize_output

from .strategies import SIZES, averaged_resizable_layers
from .test_resizable_properties import fit, output_has_bias, overlap

RTOL, ATOL = 1e-5, 1e-6
STEPS = st.integers(1, 3)


@given(
    case=averaged_resizable_layers(),
    k=STEPS,
    which=st.sampled_from(["nI", "nO"]),
    new_size=SIZES,
)
def test_resizing_resizes_the_averages(case, k, which, new_size):
    """A5: Resizing an averaged layer resizes its averages: kept units keep theirs, new units
    start at their live value. (Resized right after an update, whose step is still pending.)"""
    model, X = case
    twin = model.copy()  # trained alike, never resized: the averages to keep
    for _ in range(k):
        step(model, X)
        step(twin, X)
    resize(model, which, new_size)
    assert averaged_node(model).attrs["average_steps"] == k
    old, found = by_key(twin), by_key(model)
    assert set(found) == set(old)
    for key, (average, live) in found.items():
        keep = overlap(average, old[key][0])
        assert_array_equal(average[keep], old[key][0][keep])
        new = numpy.ones(average.shape, dtype=bool)
        new[keep] = False
        assert_array_equal(average[new], live[new])


@given(case=averaged_resizable_layers(), k=STEPS, extra=st.integers(1, 4))
def test_averaged_outputs_after_growing_the_output(case, k, extra):
    """A5 (R3): after growing the output, use_averages gives the old averaged outputs for the old
    units and exactly `fill` (0 without a bias) for the new ones."""
    model, X = case
    for _ in range(k):
        step(model, X)
    with use_averages(model):
        before = model.predict(X)
    n_out = before.shape[1]
    resize_output(model, n_out + extra)
    with use_averages(model):
        after = model.predict(X)
    assert_allclose(after[:, :n_out], before, rtol=RTOL, atol=ATOL)
    node = next(node for node in model.walk() if is_resizable(node))
    fill = node.attrs["fill"] if output_has_bias(node) else 0.0
    assert_array_equal(after[:, n_out:], numpy.float32(fill))


@given(
    case=averaged_resizable_layers(),
    k=STEPS,
    which=st.sampled_from(["nI", "nO"]),
    new_size=SIZES,
)
def test_bytes_round_trip_after_a_resize(case, k, which, new_size):
    """A5 (A4): after a resize and an update, to_bytes loads into a model resized the same way
    (averages and step count included): same live and averaged outputs."""
    model, X = case
    twin = model.copy()
    twin.predict(X)  # a with_torch copy can load bytes only once it has run (lead: _shim.py)
    for _ in range(k):
        step(model, X)
    resize(model, which, new_size)
    X = fit(X, model.get_dim("nI"))
    step(model, X)
    resize(twin, which, new_size)
    twin.from_bytes(model.to_bytes())
    assert averaged_node(twin).attrs["average_steps"] == k + 1
    assert_array_equal(twin.predict(X), model.predict(X))
    with use_averages(model), use_averages(twin):
        assert_array_equal(twin.predict(X), model.predict(X))


# helpers


def step(model: Model, X: numpy.ndarray) -> None:
    Y, backprop = model(X, is_train=True)
    backprop(Y - 1)
    model.finish_update(SGD(0.1, use_averages=False))


def resize(model: Model, which: str, size: int) -> None:
    (resize_output if which == "nO" else resize_input)(model, size)


def averaged_node(model: Model) -> Model:
    return next(node for node in model.walk() if is_averaged(node))


def by_key(model: Model) -> Dict[Tuple[int, str], Tuple[Any, Any]]:
    """(average, live param) by walk index and name, for the averaged node in `model`."""
    node = averaged_node(model)
    settle(node)
    nodes = list(node.layers[0].walk())
    return {(nodes.index(n), name): (avg, n.get_param(name)) for n, name, avg in averages(node)}
