"""averaged laws (A2, A3, A4) over generated MLP stacks, decays and numbers of updates."""

from typing import Any, Dict, Tuple

import numpy
import torch
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import SGD, Model, Optimizer

from tests.helpers import reference_ema
from torchlayers._shim import TorchShim
from torchlayers.averaged import averages, settle, use_averages

from .strategies import averaged_models, averaged_twins

TOL = 1e-6  # float32 lerp against a float64 reference, unit-scale weights, <= 8 updates
STEPS = st.integers(1, 8)
RATES = st.floats(0.01, 0.5)  # learning rates


def step(model: Model, X: numpy.ndarray, optimizer: Optimizer) -> None:
    Y, backprop = model(X, is_train=True)
    backprop(Y - 1)
    model.finish_update(optimizer)


def weights(model: Model) -> Dict[Tuple[int, str], Any]:
    """The live arrays under the averaged node, by walk index and name."""
    nodes = list(model.layers[0].walk())
    return {
        (i, name): node.get_param(name) for i, node in enumerate(nodes) for name in node.param_names
    }


def found_averages(model: Model) -> Dict[Tuple[int, str], numpy.ndarray]:
    settle(model)
    nodes = list(model.layers[0].walk())
    return {(nodes.index(node), name): avg for node, name, avg in averages(model)}


@given(case=averaged_models(), k=STEPS, rate=RATES)
def test_averages_equal_reference_ema(case, k, rate):
    """A3: after k updates the averages equal the reference EMA of the k post-update values."""
    model, X = case
    optimizer = SGD(rate, use_averages=False)
    history = []
    for _ in range(k):
        step(model, X, optimizer)
        history.append({key: w.copy() for key, w in weights(model).items()})
    expected = reference_ema(history, model.attrs["max_decay"])
    found = found_averages(model)
    assert model.attrs["average_steps"] == k
    assert set(found) == set(expected)
    for key, avg in found.items():
        assert_allclose(avg, expected[key], rtol=TOL, atol=TOL)


@given(case=averaged_models(), k=st.integers(0, 4), raises=st.booleans())
def test_use_averages_restores_live_weights(case, k, raises):
    """A2: use_averages swaps the averages in and restores the live weights on exit, bit for bit,
    also when the block raises."""
    model, X = case
    optimizer = SGD(0.1, use_averages=False)
    for _ in range(k):
        step(model, X, optimizer)
    live = weights(model)
    values = {key: w.copy() for key, w in live.items()}
    before = model.predict(X)
    expected = found_averages(model)
    try:
        with use_averages(model):
            for key, w in weights(model).items():
                assert w is expected.get(key, live[key])
            if raises:
                raise RuntimeError("inside the block")
    except RuntimeError:
        assert raises
    for key, w in weights(model).items():
        assert w is live[key]
        assert_array_equal(w, values[key])
    torch_node = next(n for n in model.walk() if n.shims and isinstance(n.shims[0], TorchShim))
    for name, param in torch_node.shims[0].module.named_parameters():  # torch sees them too
        assert param.data_ptr() == torch.from_numpy(torch_node.get_param(name)).data_ptr()
    assert_array_equal(model.predict(X), before)


@given(case=averaged_twins(), saved_at=st.integers(0, 4), more=st.integers(1, 4))
def test_resume_from_bytes_follows_same_trajectory(case, saved_at, more):
    """A4: a model saved (averages and step count) and loaded resumes the trajectory of one
    that never stopped."""
    model, fresh, X = case  # fresh: the same architecture and weights, built again
    optimizer = SGD(0.1, use_averages=False)
    for _ in range(saved_at):
        step(model, X, optimizer)
    resumed = fresh.from_bytes(model.to_bytes())
    for _ in range(more):
        step(model, X, optimizer)
        step(resumed, X, optimizer)
    assert resumed.attrs["average_steps"] == model.attrs["average_steps"] == saved_at + more
    expected, found = found_averages(model), found_averages(resumed)
    assert set(found) == set(expected)
    for key, avg in found.items():
        assert_array_equal(avg, expected[key])
    for key, w in weights(resumed).items():
        assert_array_equal(w, weights(model)[key])
