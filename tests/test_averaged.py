"""averaged / use_averages: examples, one per behaviour of SPEC A1-A4."""

from typing import Any, Dict, Tuple

import numpy
import pytest
import srsly
import torch
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import SGD, Adam, Linear, Model, Relu, chain, fix_random_seed, registry

from torchlayers.averaged import averaged, averages, settle, use_averages
from torchlayers.with_torch import with_torch

from .helpers import reference_ema

X = numpy.random.default_rng(0).uniform(-1, 1, (6, 3)).astype("float32")


def torch_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def make_model(seed: int = 0, max_decay: float = 0.9999) -> Model:
    """A torch MLP and a Thinc Linear under one averaged node."""
    fix_random_seed(seed)
    model: Model = averaged(chain(with_torch(torch_mlp(seed)), Linear(2, 2)), max_decay=max_decay)
    model.initialize(X=X)
    return model


def step(model: Model, optimizer) -> None:
    Y, backprop = model(X, is_train=True)
    backprop(Y - 1)
    model.finish_update(optimizer)


def live_params(model: Model) -> Dict[Tuple[int, str], Any]:
    return {
        (i, n): node.get_param(n) for i, node in enumerate(model.walk()) for n in node.param_names
    }


def snapshot(model: Model) -> Dict[Tuple[int, str], numpy.ndarray]:
    """Copies of the live weights under the averaged node, keyed by walk index and name."""
    nodes = list(model.layers[0].walk())
    return {
        (i, n): node.get_param(n).copy() for i, node in enumerate(nodes) for n in node.param_names
    }


def averages_by_key(model: Model) -> Dict:
    settle(model)
    nodes = list(model.layers[0].walk())
    return {(nodes.index(node), name): avg for node, name, avg in averages(model)}


def test_name_dims_and_attrs():
    """A1: the node is named after the layer, copies its dims, keeps max_decay and a step count."""
    model = averaged(Linear(2, 3), max_decay=0.5)
    assert model.name == "averaged(linear)"
    assert (model.get_dim("nO"), model.get_dim("nI")) == (2, 3)
    assert model.attrs == {"max_decay": 0.5, "average_steps": 0}


def test_dims_inferred_at_initialize():
    """A1: dims the layer infers at initialize reach the averaged node."""
    model = averaged(Linear())
    model.initialize(X=X, Y=numpy.zeros((6, 5), dtype="float32"))
    assert (model.get_dim("nI"), model.get_dim("nO")) == (3, 5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.9"])
def test_bad_max_decay(bad):
    """A1: max_decay outside [0, 1] is a ValueError naming the layer."""
    with pytest.raises(ValueError, match="averaged.*max_decay"):
        averaged(Linear(2, 2), max_decay=bad)


def test_first_average_is_first_update():
    """A1: after one update the averages are exactly the post-update weights."""
    model = make_model()
    step(model, Adam(0.1))
    weights = snapshot(model)
    found = averages_by_key(model)
    assert set(found) == set(weights)
    for key, avg in found.items():
        assert_array_equal(avg, weights[key])


@pytest.mark.parametrize("max_decay", [0.9999, 0.5, 0.0])
def test_averages_follow_reference_ema(max_decay):
    """A1, A3: after 12 Adam updates the averages equal the float64 reference EMA."""
    model = make_model(max_decay=max_decay)
    optimizer = Adam(0.05)
    history = []
    for _ in range(12):
        step(model, optimizer)
        history.append(snapshot(model))
    assert model.attrs["average_steps"] == 12
    expected = reference_ema(history, max_decay)
    found = averages_by_key(model)
    assert set(found) == set(expected)
    for key, avg in found.items():
        assert_allclose(avg, expected[key], rtol=1e-6, atol=1e-6)
    at_last = all(numpy.array_equal(found[k], history[-1][k]) for k in found)
    assert at_last == (max_decay == 0)  # decay 0: the average is the last weights


def test_frozen_parameters_and_buffers_are_not_averaged():
    """A1: only params with a gradient are averaged: not frozen torch params, not buffers."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    module[0].bias.requires_grad_(False)
    model = averaged(with_torch(module))
    model.initialize(X=X)
    step(model, SGD(0.1))
    assert sorted(model.param_names) == ["0/0.weight", "0/1.bias", "0/1.weight"]


def test_use_averages_swaps_and_restores():
    """A2: predictions change inside the block; live arrays and outputs are bit-identical after."""
    model = make_model()
    optimizer = Adam(0.1)
    for _ in range(4):
        step(model, optimizer)
    torch_module = model.layers[0].layers[0].shims[0].module
    before, live = model.predict(X), live_params(model)
    torch_before = torch_module(torch.from_numpy(X)).detach().clone()
    with use_averages(model):
        inside = model.predict(X)
        assert not numpy.allclose(inside, before)
        with torch.no_grad():  # the torch module itself sees the averages
            assert not torch.allclose(torch_module(torch.from_numpy(X)), torch_before)
    assert all(live_params(model)[key] is array for key, array in live.items())
    assert_array_equal(model.predict(X), before)
    assert torch.equal(torch_module(torch.from_numpy(X)).detach(), torch_before)
    with use_averages(model):
        assert_array_equal(model.predict(X), inside)


def test_use_averages_restores_on_exception():
    """A2: live weights come back when the block raises."""
    model = make_model()
    step(model, Adam(0.1))
    step(model, Adam(0.1))
    before, live = model.predict(X), live_params(model)
    with pytest.raises(KeyError), use_averages(model):
        raise KeyError("boom")
    assert all(live_params(model)[key] is array for key, array in live.items())
    assert_array_equal(model.predict(X), before)


def test_use_averages_nests():
    """A2: a nested use_averages keeps the averages in; the outer exit restores the live ones."""
    model = make_model()
    optimizer = SGD(0.2)
    for _ in range(3):
        step(model, optimizer)
    before = model.predict(X)
    with use_averages(model):
        outer = model.predict(X)
        with use_averages(model):
            assert_array_equal(model.predict(X), outer)
        assert_array_equal(model.predict(X), outer)
    assert_array_equal(model.predict(X), before)
    assert not numpy.array_equal(outer, before)


def test_nested_averaged_nodes_innermost_wins():
    """A2: every averaged node in the model is swapped; the innermost average wins."""
    inner = averaged(Linear(2, 3), max_decay=0.0)  # its average is always the last weights
    model: Model = averaged(chain(inner, Relu(2, 2)), max_decay=0.9999)
    model.initialize(X=X)
    optimizer = SGD(0.5)
    for _ in range(3):
        step(model, optimizer)
    linear = inner.layers[0]
    live_W = linear.get_param("W").copy()
    relu_W = model.layers[0].layers[1].get_param("W")
    with use_averages(model):
        assert_array_equal(linear.get_param("W"), live_W)  # inner: decay 0, the live value
        assert not numpy.array_equal(model.layers[0].layers[1].get_param("W"), relu_W)
    assert model.layers[0].layers[1].get_param("W") is relu_W


def test_use_averages_before_any_update_changes_nothing():
    """A2: with no update yet there are no averages and use_averages leaves the weights."""
    model = make_model()
    before = model.predict(X)
    with use_averages(model):
        assert_array_equal(model.predict(X), before)


def test_to_bytes_includes_averages_and_steps():
    """A4: to_bytes right after an update includes that update's average and the step count."""
    model = make_model()
    optimizer = Adam(0.1)
    for _ in range(3):
        step(model, optimizer)
    data = model.to_bytes()  # the third update is still pending here: to_bytes folds it in
    with use_averages(model):
        expected = model.predict(X)
    loaded = make_model(seed=1).from_bytes(data)
    assert loaded.attrs["average_steps"] == 3
    assert_array_equal(loaded.predict(X), model.predict(X))
    with use_averages(loaded):
        assert_array_equal(loaded.predict(X), expected)


def test_bytes_without_averages_load():
    """A4: a model saved before any update loads, also into a trained one (whose averages go)."""
    fresh = make_model()
    data = fresh.to_bytes()
    trained = make_model(seed=1)
    step(trained, SGD(0.1))
    trained.from_bytes(data)
    assert trained.attrs["average_steps"] == 0
    assert trained.param_names == ()
    assert_array_equal(trained.predict(X), fresh.predict(X))
    with use_averages(trained):
        assert_array_equal(trained.predict(X), fresh.predict(X))


def test_foreign_shim_bytes_raise():
    """A4: bytes whose averaged entry is not ours raise ValueError."""
    model = make_model()
    msg = srsly.msgpack_loads(model.to_bytes())
    msg["shims"][0] = [b"not ours"]
    with pytest.raises(ValueError, match="averaged"):
        make_model().from_bytes(srsly.msgpack_dumps(msg))


def test_to_bytes_inside_use_params_saves_live_average():
    """A1, A4: saving inside use_params(optimizer.averages) (as spaCy does) still averages the
    live post-update weights, not the swapped-in ones."""
    model, twin = make_model(), make_model()
    opt_a, opt_b = SGD(0.2, use_averages=True), SGD(0.2, use_averages=True)
    for _ in range(3):
        step(model, opt_a)
        step(twin, opt_b)
    with model.use_params(opt_a.averages):
        model.to_bytes()
    settle(twin)
    for (_, _, saved), (_, _, expected) in zip(averages(model), averages(twin)):
        assert_array_equal(saved, expected)


def test_copy_after_update_keeps_pending_average():
    """A1: a copy taken right after an update has that update's average; the two are independent."""
    model = make_model()
    optimizer = SGD(0.2)
    step(model, optimizer)
    step(model, optimizer)
    twin = model.copy()
    with use_averages(model):
        expected = model.predict(X)
    with use_averages(twin):
        assert_array_equal(twin.predict(X), expected)
    step(twin, SGD(0.2))
    with use_averages(model):
        assert_array_equal(model.predict(X), expected)


def test_a_copy_knows_its_nodes_before_it_ever_runs():
    """A1, W5: Thinc copies shims before it builds the copy's nodes; each copied node is
    introduced to its shims at once, so a copy can step and average before any forward."""
    from torchlayers._thinc import NodeShim

    model = make_model()
    step(model, SGD(0.2))
    twin = model.copy()
    shims = [(node, shim) for node in twin.walk() for shim in node.shims]
    assert shims and all(shim.node() is node for node, shim in shims if isinstance(shim, NodeShim))
    step(twin, SGD(0.2))
    step(model, SGD(0.2))
    with use_averages(model):
        expected = model.predict(X)
    with use_averages(twin):
        assert_array_equal(twin.predict(X), expected)


def test_with_thinc_optimizer_averages():
    """A2: averaged and Optimizer(use_averages=True) together: both swap in and restore."""
    model = make_model()
    optimizer = Adam(0.1, use_averages=True)
    for _ in range(4):
        step(model, optimizer)
    before = model.predict(X)
    with model.use_params(optimizer.averages):
        thinc_avg = model.predict(X)
        with use_averages(model):
            ours = model.predict(X)
        assert_array_equal(model.predict(X), thinc_avg)
    assert_array_equal(model.predict(X), before)
    assert not numpy.allclose(thinc_avg, before)
    assert not numpy.allclose(ours, thinc_avg)  # Thinc's start at zero, ours at the first update


def test_without_thinc_optimizer_averages():
    """A1: averaged works with an optimizer that keeps no averages of its own."""
    model = make_model()
    optimizer = Adam(0.1, use_averages=False)
    for _ in range(2):
        step(model, optimizer)
    assert optimizer.averages is None
    before = model.predict(X)
    with use_averages(model):
        assert not numpy.allclose(model.predict(X), before)


def test_registered_and_built_from_config():
    """A1: torchlayers.averaged.v1 is in Thinc's registry and builds from a config."""
    config = {
        "model": {
            "@layers": "torchlayers.averaged.v1",
            "max_decay": 0.99,
            "layer": {"@layers": "Linear.v1", "nO": 2, "nI": 3},
        }
    }
    model = registry.resolve(config)["model"]
    assert model.name == "averaged(linear)"
    assert model.attrs["max_decay"] == 0.99


def test_average_of_another_shape_raises_and_restores():
    """A2: an average whose shape no longer fits its parameter is a ValueError naming both, and
    the parameters swapped before it are put back."""
    first, second = Linear(2, 3), Linear(2, 2)
    model = averaged(chain(first, second))
    model.initialize(X=X)
    step(model, SGD(0.1))
    live_W = first.get_param("W")
    second.set_param("W", numpy.zeros((5, 2), dtype="float32"))
    with pytest.raises(ValueError, match=r"averaged\(linear>>linear\).*'W'.*\(2, 2\).*\(5, 2\)"):
        with use_averages(model):
            pass
    assert first.get_param("W") is live_W


def test_use_averages_swaps_references_and_updates_in_one_fused_call(monkeypatch):
    """P3, P4: use_averages re-points each param at its average (the very array: no copy, so
    its cost is O(number of tensors)); one EMA update is one `torch._foreach_lerp_` call over
    every averaged tensor."""
    model = make_model()
    optimizer = Adam(0.1)
    for _ in range(2):
        step(model, optimizer)
    settle(model)
    expected = {(node.id, name): average for node, name, average in averages(model)}
    with use_averages(model):
        for (node_id, name), average in expected.items():
            node = next(n for n in model.walk() if n.id == node_id)
            assert node.get_param(name) is average
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: calls.append(len(a[0])) or real(*a))
    step(model, optimizer)
    settle(model)
    assert calls == [len(expected)]
