"""Laws of with_torch over random module stacks and batches."""

import copy

import numpy
import torch
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import SGD, Adam

from tests.helpers import assert_gradients_equal_torch
from torchlayers import with_torch

from .strategies import module_and_input


def output_grad(model, X, seed: int) -> numpy.ndarray:
    Y = model.predict(X)
    return numpy.random.default_rng(seed).uniform(-1, 1, Y.shape).astype(Y.dtype)


@given(case=module_and_input(), seed=st.integers(0, 100))
def test_gradients_equal_plain_torch(case, seed):
    """W2: gradients equal those of plain torch autograd on the same module and inputs (bit for
    bit in float32)."""
    module, X = case
    dY = output_grad(with_torch(copy.deepcopy(module)), X, seed)
    assert_gradients_equal_torch(module, X, dY)


@given(case=module_and_input(dtype=torch.float64), seed=st.integers(0, 100))
def test_gradients_agree_with_finite_differences(case, seed):
    """W2: gradients agree with finite differences in float64."""
    module, X = case
    model = with_torch(module)
    dY = output_grad(model, X, seed)
    _, backprop = model(X, is_train=True)
    dX = backprop(dY)
    eps = 1e-6
    numeric = numpy.zeros_like(X)
    for index in numpy.ndindex(X.shape):
        up, down = X.copy(), X.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = ((model.predict(up) - model.predict(down)) * dY).sum() / (2 * eps)
    # Central differences err by O(eps^2) times the third derivative: 1e-6 is ample at unit scale.
    assert_allclose(dX, numeric, rtol=1e-5, atol=1e-6)


@given(case=module_and_input(), seed=st.integers(0, 100))
def test_bytes_round_trip(case, seed):
    """W6: to_bytes/from_bytes into a rebuilt architecture gives identical parameters and
    outputs."""
    module, X = case
    model = with_torch(module)
    optimizer = Adam(0.05)
    _, backprop = model(X, is_train=True)
    backprop(output_grad(model, X, seed))
    model.finish_update(optimizer)
    rebuilt = copy.deepcopy(module)
    with torch.no_grad():
        for param in rebuilt.parameters():
            param.normal_()
    fresh = with_torch(rebuilt)
    fresh.from_bytes(model.to_bytes())
    for name in model.param_names:
        assert_array_equal(fresh.get_param(name), model.get_param(name))
    assert_array_equal(fresh.predict(X), model.predict(X))


@given(case=module_and_input(), steps=st.integers(1, 3), raises=st.booleans())
def test_use_params_restores_live_weights(case, steps, raises):
    """W5: use_params swaps the averages in and restores the live values on exit, also when the
    block raises."""
    module, X = case
    model = with_torch(module)
    optimizer = Adam(0.1, use_averages=True)
    for seed in range(steps):
        _, backprop = model(X, is_train=True)
        backprop(output_grad(model, X, seed))
        model.finish_update(optimizer)
    live = {name: model.get_param(name).copy() for name in model.param_names}
    expected = model.predict(X)
    try:
        with model.use_params(optimizer.averages):
            for name in model.param_names:
                average = optimizer.averages[(model.id, name)]
                assert_array_equal(dict(module.named_parameters())[name].detach().numpy(), average)
            if raises:
                raise RuntimeError("inside the block")
    except RuntimeError:
        assert raises
    for name, value in live.items():
        assert_array_equal(model.get_param(name), value)
        assert_array_equal(dict(module.named_parameters())[name].detach().numpy(), value)
    assert_array_equal(model.predict(X), expected)


@given(case=module_and_input(), seeds=st.lists(st.integers(0, 100), min_size=2, max_size=4))
def test_no_gradient_leaks_across_updates(case, seeds):
    """W4: finish_update clears the gradients: nothing leaks from one update into the next."""
    module, X = case
    model = with_torch(module)
    reference = copy.deepcopy(module)
    optimizer = SGD(0.0)  # weights stay put, so each step's gradient is computable afresh
    for seed in seeds:
        dY = output_grad(model, X, seed)
        _, backprop = model(X, is_train=True)
        backprop(dY)
        reference.zero_grad(set_to_none=True)
        reference(torch.from_numpy(X)).backward(torch.from_numpy(dY))
        for name, param in reference.named_parameters():
            assert_array_equal(model.get_grad(name), param.grad.numpy())
        model.finish_update(optimizer)
        for name in model.param_names:
            assert not model.get_grad(name).any()


OPERATIONS = st.sampled_from(
    ["new array", "view", "in place", "backprop", "update", "new grad", "torch zero_grad"]
)


def reference_of(module: torch.nn.Module, model) -> torch.nn.Module:
    """A copy of `module` running on the node's current arrays, whatever the layer linked."""
    reference = copy.deepcopy(module).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(torch.from_numpy(model.get_param(name)))
    return reference


@given(
    case=module_and_input(),
    operations=st.lists(st.tuples(OPERATIONS, st.integers(0, 2**16)), min_size=1, max_size=8),
)
def test_torch_follows_every_write_of_thinc(case, operations):
    """W4, W5: whatever Thinc or torch code writes between calls (a new param array, a view of
    it, an edit in place, an optimizer step, a new gradient array, torch's zero_grad), the next
    prediction runs on the node's current arrays and the next backprop adds its gradient into
    the node's current gradients. The layer tests a flag rather than each param per call, so
    this is the law that flag must keep."""
    module, X = case
    model = with_torch(module)
    names = list(model.param_names)
    optimizer = SGD(0.1)
    for operation, seed in operations:
        rng = numpy.random.default_rng(seed)
        name = names[seed % len(names)]
        shape = model.get_param(name).shape
        if operation == "new array":
            model.set_param(name, rng.uniform(-1, 1, shape).astype("float32"))
        elif operation == "view":
            model.set_param(name, model.get_param(name).reshape(-1).reshape(shape))
        elif operation == "in place":
            model.get_param(name)[...] += numpy.float32(0.5)
        elif operation == "new grad":
            model.set_grad(name, rng.uniform(-1, 1, shape).astype("float32"))
        elif operation == "torch zero_grad":
            module.zero_grad()
        elif operation == "update":
            _, backprop = model(X, is_train=True)
            backprop(output_grad(model, X, seed))
            model.finish_update(optimizer)
        else:  # backprop: adds this pass's gradient to whatever the node holds
            before = {n: model.get_grad(n).copy() for n in names if model.has_grad(n)}
            reference = reference_of(module, model).train()
            dY = output_grad(model, X, seed)
            reference(torch.from_numpy(X)).backward(torch.from_numpy(dY))
            _, backprop = model(X, is_train=True)
            backprop(dY)
            for n, param in reference.named_parameters():
                expected = before.get(n, 0) + param.grad.numpy()
                assert_allclose(model.get_grad(n), expected, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            expected = reference_of(module, model)(torch.from_numpy(X)).numpy()
        assert_allclose(model.predict(X), expected, rtol=1e-6, atol=1e-6)
