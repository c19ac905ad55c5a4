"""with_torch against Thinc's PyTorchWrapper: the evidence for each row of docs/comparison.md.

Each test runs the same check on a `PyTorchWrapper` model and a `with_torch` model of the same
module and asserts the difference the table documents (or, where the table says they agree,
that they agree). If Thinc fixes one of these, the test fails and the table needs a new row.
"""

from typing import Any, Callable, List

import numpy
import pytest
import srsly
import torch
from numpy.testing import assert_array_equal
from thinc.api import Adam, PyTorchWrapper, set_dropout_rate

from torchlayers import resizable, resize_output, with_torch

from .helpers import NI, NO, batch, mlp, train_step


def both(module_fn=mlp):
    """A PyTorchWrapper and a with_torch model around identical modules."""
    return PyTorchWrapper(module_fn()), with_torch(module_fn())


def module_of(model) -> torch.nn.Module:
    return model.shims[0]._model


def record(module: torch.nn.Module, what: Callable[[torch.nn.Module], Any]) -> List[Any]:
    """A list that gets `what(module)` at each of the module's forward passes."""
    seen: List[Any] = []
    module.register_forward_hook(lambda mod, args, out: seen.append(what(mod)))
    return seen


def shim_bytes(model) -> bytes:
    """The bytes the model's first shim wrote into its to_bytes message."""
    return srsly.msgpack_loads(model.to_bytes())["shims"][0][0]


# -- forward and backward, speed ---------------------------------------------------------


def test_forward_backward_agree_bit_for_bit():
    """W1, W2: same module, same X and dY: Y, dX and the weight gradients are equal bit for bit.
    PyTorchWrapper's gradients stay in torch's .grad; ours are Thinc gradients of the node."""
    wrapper, ours = both()
    X, dY = batch(), batch(4, NO, seed=1)
    Y_w, backprop_w = wrapper(X, is_train=True)
    Y_o, backprop_o = ours(X, is_train=True)
    assert_array_equal(Y_w, Y_o)
    assert_array_equal(backprop_w(dY), backprop_o(dY))
    for name, param in module_of(wrapper).named_parameters():
        assert_array_equal(param.grad.numpy(), ours.get_grad(name))
    assert wrapper.param_names == () and not wrapper.grad_names  # Thinc sees no weights
    assert ours.param_names == tuple(name for name, _ in mlp().named_parameters())


def test_same_training_steps_give_the_same_weights():
    """W4, P1: three steps with Thinc's Adam give the same weights: the benchmark
    (docs/benchmarks.md) times the same work on both sides."""
    wrapper, ours = both()
    optimizer_w, optimizer_o = Adam(0.01), Adam(0.01)
    for seed in range(3):
        X, dY = batch(seed=seed), batch(4, NO, seed=seed + 10)
        train_step(wrapper, X, dY, optimizer_w)
        train_step(ours, X, dY, optimizer_o)
    for name, param in module_of(wrapper).named_parameters():
        numpy.testing.assert_allclose(
            param.detach().numpy(), ours.get_param(name), rtol=1e-6, atol=1e-7
        )


def test_integer_ids_in_training():
    """W1: token ids into an nn.Embedding in training: PyTorchWrapper asks torch for a gradient
    of an integer tensor and fails; with_torch passes them through without one."""
    ids = numpy.array([1, 2, 2, 7], dtype="int64")
    torch.manual_seed(0)
    wrapper = PyTorchWrapper(torch.nn.Embedding(10, 4))
    with pytest.raises(RuntimeError, match="floating point"):
        wrapper(ids, is_train=True)
    torch.manual_seed(0)
    ours = with_torch(torch.nn.Embedding(10, 4))
    Y, backprop = ours(ids, is_train=True)
    dX = backprop(numpy.ones_like(Y))
    assert dX.dtype == ids.dtype and not dX.any()
    assert ours.get_grad("weight")[[1, 2, 7]].all()


# -- optimizer keys, use_params -------------------------------------------------------------


def test_optimizer_keys():
    """W4: PyTorchWrapper keys the optimizer by the shim's id, from a counter apart from the
    nodes'; with_torch by (node id, param name), like every Thinc layer."""
    names = [name for name, _ in mlp().named_parameters()]
    for model in both():
        optimizer = Adam(0.01)
        train_step(model, batch(), batch(4, NO), optimizer)
        owner = model.shims[0].id if model.name == "pytorch" else model.id
        assert set(optimizer.mom1) == {(owner, name) for name in names}
        assert all(model.has_param(name) for name in names) is (model.name != "pytorch")


def test_use_params_with_optimizer_averages():
    """W5: model.use_params(optimizer.averages) (spaCy's nlp.use_params): PyTorchWrapper
    predicts with the live weights inside the block; with_torch with the averages."""
    X = batch()
    for model, uses_averages in zip(both(), (False, True)):
        optimizer = Adam(0.05, use_averages=True)
        for seed in range(4):
            train_step(model, batch(seed=seed), batch(4, NO, seed=seed + 10), optimizer)
        live = model.predict(X)
        with model.use_params(optimizer.averages):
            inside = model.predict(X)
        assert numpy.array_equal(inside, live) is not uses_averages
        assert_array_equal(model.predict(X), live)


# -- dropout, resizing ---------------------------------------------------------------------


def dropout_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(NI, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, NO)
    )


def test_set_dropout_rate_reaches_torch_dropout():
    """D2, D6: set_dropout_rate (nlp.update(drop=...)) never reaches PyTorchWrapper's
    nn.Dropout; with torch_dropout=True it sets the rate of with_torch's."""
    for wrap, expected in ((PyTorchWrapper, 0.5), (with_torch, 0.1)):
        module = dropout_net()
        seen = record(module[1], lambda mod: mod.p)
        model = wrap(module, torch_dropout=True) if wrap is with_torch else wrap(module)
        set_dropout_rate(model, 0.1)
        model(batch(), is_train=True)
        assert seen == [expected]
        assert ("dropout_rate" in model.attrs) is (wrap is with_torch)


def test_resize_output():
    """R1, R3: PyTorchWrapper has no resize_output attr (spaCy's add_label needs one) and
    resizable() finds nothing to resize in it; resizable(with_torch) grows, keeping old outputs."""
    wrapper, ours = both()
    assert "resize_output" not in wrapper.attrs
    with pytest.raises(ValueError, match="no with_torch or Thinc W/b layer to resize"):
        resize_output(resizable(wrapper), NO + 1)
    model = resizable(ours)
    assert model.attrs["resize_output"] is resize_output
    X = batch()
    before = model.predict(X)
    resize_output(model, NO + 1)
    after = model.predict(X)
    assert after.shape == (4, NO + 1)
    numpy.testing.assert_allclose(after[:, :NO], before, rtol=1e-5, atol=1e-6)


# -- serialization --------------------------------------------------------------------------


def test_serialization_format():
    """W6: PyTorchWrapper's shim bytes are a torch.save zip holding a pickle (data.pkl), and
    loading calls torch.load; with_torch writes safetensors and never calls torch.load."""
    wrapper, ours = both()
    state = srsly.msgpack_loads(shim_bytes(wrapper))["state"]
    assert state[:4] == b"PK\x03\x04" and b"data.pkl" in state  # a zip holding a pickle
    ours_bytes = shim_bytes(ours)
    header_size = int.from_bytes(ours_bytes[:8], "little")  # safetensors: u64 size, JSON header
    assert ours_bytes[8:9] == b"{" and b"torchlayers.with_torch/" in ours_bytes[: 8 + header_size]

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(1)
        return real_load(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", spy)
        PyTorchWrapper(mlp(seed=1)).from_bytes(wrapper.to_bytes())
        assert calls == [1]
        with_torch(mlp(seed=1)).from_bytes(ours.to_bytes())
        assert calls == [1]


def test_shape_mismatch_on_load():
    """W6: loading weights of another hidden width: PyTorchWrapper raises torch's RuntimeError
    after loading the parameters that did fit (a half-loaded model); with_torch raises
    ValueError naming the parameter and both shapes, and changes nothing."""
    for wrap in (PyTorchWrapper, with_torch):
        data = wrap(mlp(nH=7, seed=1)).to_bytes()
        model = wrap(mlp(seed=2))
        bias = module_of(model)[2].bias.detach().clone()  # (NO,): the same shape in both
        if wrap is PyTorchWrapper:
            with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
                model.from_bytes(data)
            assert not torch.equal(module_of(model)[2].bias.detach(), bias)
        else:
            with pytest.raises(ValueError, match=r"'0.weight' has shape \(5, 6\).*\(7, 6\)"):
                model.from_bytes(data)
            assert torch.equal(module_of(model)[2].bias.detach(), bias)


def test_corrupt_shim_bytes():
    """W6: a well-formed message whose shim bytes are truncated: PyTorchWrapper raises torch's
    RuntimeError from its zip reader; with_torch a ValueError naming the layer."""
    for wrap, error, message in (
        (PyTorchWrapper, RuntimeError, "zip archive"),
        (with_torch, ValueError, r"with_torch\(Sequential\): the data is not a saved"),
    ):
        message_dict = srsly.msgpack_loads(wrap(mlp()).to_bytes())
        shim = message_dict["shims"][0][0]
        if wrap is PyTorchWrapper:
            inner = srsly.msgpack_loads(shim)
            inner["state"] = inner["state"][:200]
            message_dict["shims"][0][0] = srsly.msgpack_dumps(inner)
        else:
            message_dict["shims"][0][0] = shim[: len(shim) // 2]
        model = wrap(mlp(seed=3))
        with pytest.raises(error, match=message):
            model.from_bytes(srsly.msgpack_dumps(message_dict))


# -- copy -----------------------------------------------------------------------------------


def test_copy_and_optimizer_state():
    """W9: PyTorchWrapper's copy keeps the shim id, so training the copy moves the original's
    Adam moments; with_torch's copy has its own keys and leaves them alone."""
    for model in both():
        optimizer = Adam(0.05)
        train_step(model, batch(), batch(4, NO), optimizer)
        twin = model.copy()
        key = (model.shims[0].id, "0.weight") if model.name == "pytorch" else (model.id, "0.weight")
        moments = optimizer.mom1[key].copy()
        train_step(twin, batch(seed=1), batch(4, NO, seed=1), optimizer)
        shared = twin.shims[0].id == model.shims[0].id
        assert shared is (model.name == "pytorch")
        assert (not numpy.array_equal(optimizer.mom1[key], moments)) is shared
        assert module_of(twin) is not module_of(model)  # the weights are copied either way


# -- shape inference, errors, prediction ----------------------------------------------------


def test_shape_inference():
    """W7: PyTorchWrapper leaves nI/nO unset and takes no factory; with_torch reads them from
    the module, or builds a factory at initialize from the inferred dims."""
    wrapper, ours = both()
    assert (wrapper.maybe_get_dim("nI"), wrapper.maybe_get_dim("nO")) == (None, None)
    assert (ours.get_dim("nI"), ours.get_dim("nO")) == (NI, NO)

    def factory(nI, nO):
        return torch.nn.Linear(nI, nO)

    with pytest.raises(AttributeError):
        PyTorchWrapper(factory)
    built = with_torch(factory)
    built.initialize(X=batch(), Y=batch(4, 2))
    assert built.predict(batch()).shape == (4, 2)


def test_wrong_width_error():
    """W10: a too-narrow input: PyTorchWrapper passes on torch's matmul error, which names
    no layer; with_torch raises ValueError naming the layer and both shapes."""
    wrapper, ours = both()
    X = batch(4, NI - 1)
    with pytest.raises(RuntimeError, match=r"cannot be multiplied") as caught:
        wrapper.predict(X)
    assert "pytorch" not in str(caught.value)
    with pytest.raises(ValueError, match=r"with_torch\(Sequential\).*\(\*, 6\).*\(4, 5\)"):
        ours.predict(X)


def test_float64_input():
    """W10: float64 input into a float32 module: PyTorchWrapper fails on the dtype; with_torch
    runs it and returns a float64 dX."""
    wrapper, ours = both()
    X = batch(dtype="float64")
    with pytest.raises(RuntimeError, match="dtype"):
        wrapper(X, is_train=True)
    Y, backprop = ours(X, is_train=True)
    assert backprop(numpy.ones_like(Y)).dtype == numpy.float64


def test_second_backprop_error():
    """W10: one backprop callback called twice: torch's internals message from PyTorchWrapper,
    a ValueError that names the layer from with_torch."""
    for model, error, message in zip(
        both(),
        (RuntimeError, ValueError),
        ("backward through the graph a second time", r"with_torch\(Sequential\).*already"),
    ):
        Y, backprop = model(batch(), is_train=True)
        backprop(numpy.ones_like(Y))
        with pytest.raises(error, match=message):
            backprop(numpy.ones_like(Y))


def test_prediction_mode():
    """W3: PyTorchWrapper predicts under no_grad and leaves the module in train mode afterwards,
    whatever mode it was in; with_torch predicts without grad too, and restores the flags."""
    for wrap, restores in ((PyTorchWrapper, False), (with_torch, True)):
        module = mlp().eval()
        seen = record(module, lambda mod: (mod.training, torch.is_grad_enabled()))
        wrap(module).predict(batch())
        assert seen == [(False, False)]
        assert (module.training is False) is restores
