"""Examples for with_torch: each test names the SPEC items it checks."""

import copy
import pickle

import numpy
import pytest
import torch
from numpy.testing import assert_array_equal
from thinc.api import (
    SGD,
    Adam,
    ArgsKwargs,
    Linear,
    PyTorchWrapper,
    RAdam,
    chain,
    constant,
)

from torchlayers import with_torch

from .helpers import NH, NI, NO, assert_gradients_equal_torch, batch, mlp, train_step


def params_of(model) -> dict:
    return {name: model.get_param(name).copy() for name in model.param_names}


# -- W1: forward and backprop -------------------------------------------------------------


def test_forward_backprop_array():
    """W1: an array in, an array out; dX has the shape and dtype of X."""
    model = with_torch(mlp())
    X = batch()
    Y, backprop = model(X, is_train=True)
    dX = backprop(numpy.ones_like(Y))
    assert Y.shape == (4, NO) and dX.shape == X.shape and dX.dtype == numpy.float32
    assert model.has_grad("0.weight")


def test_nested_inputs_and_outputs():
    """W1: list/dict inputs and tuple/dict outputs; dX mirrors X, gradients reach each leaf."""

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, items):
            a, b = items["a"], items["b"]
            return {"sum": self.linear(a) + self.linear(b)[0], "diff": (a - a.mean())}

    model = with_torch(Pair())
    X = {"a": batch(4, 3, seed=1), "b": batch(2, 3, seed=2)}
    Y, backprop = model(X, is_train=True)
    assert set(Y) == {"sum", "diff"}
    dX = backprop({"sum": numpy.ones_like(Y["sum"]), "diff": numpy.ones_like(Y["diff"])})
    assert set(dX) == {"a", "b"}
    assert dX["a"].shape == (4, 3) and dX["b"].shape == (2, 3)
    assert numpy.abs(dX["b"][0]).sum() > 0 and not dX["b"][1].any()  # only row 0 of b is used


def test_argskwargs_spread_into_the_call():
    """W1: ArgsKwargs are spread into the call; dX is an ArgsKwargs of the same shape."""

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([2.0]))

        def forward(self, x, *, shift):
            return x * self.w + shift, x.sum()

    model = with_torch(Scale())
    X = ArgsKwargs(args=(batch(2, 3),), kwargs={"shift": batch(2, 3, seed=4)})
    (Y, total), backprop = model(X, is_train=True)
    assert_array_equal(Y, X.args[0] * 2 + X.kwargs["shift"])
    dX = backprop((numpy.ones_like(Y), None))
    assert isinstance(dX, ArgsKwargs)
    assert_array_equal(dX.args[0], numpy.full((2, 3), 2.0, dtype="float32"))
    assert_array_equal(dX.kwargs["shift"], numpy.ones((2, 3), dtype="float32"))


def test_integer_ids_pass_without_gradient():
    """W1: integer arrays (token ids) reach the module as ints; their dX is zeros of their dtype."""
    torch.manual_seed(0)
    model = with_torch(torch.nn.Embedding(10, 4))
    ids = numpy.array([1, 2, 2, 7], dtype="int64")
    Y, backprop = model(ids, is_train=True)
    dX = backprop(numpy.ones_like(Y))
    assert dX.dtype == ids.dtype and dX.shape == ids.shape and not dX.any()
    grad = model.get_grad("weight")
    assert_array_equal(grad[[1, 7]], numpy.ones((2, 4)))
    assert_array_equal(grad[2], numpy.full(4, 2.0))


def test_trains_the_very_module_and_fires_its_hooks():
    """W1: the caller's module sees the trained weights, and its forward hooks fire."""
    module = mlp()
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    model = with_torch(module)
    before = module[0].weight.detach().clone()
    train_step(model, batch(), numpy.ones((4, NO), "float32"), SGD(0.1))
    assert calls == [1]
    assert not torch.equal(before, module[0].weight.detach())
    assert_array_equal(module[0].weight.detach().numpy(), model.get_param("0.weight"))


# -- W2: gradients ------------------------------------------------------------------------


def test_gradients_equal_torch_autograd_bit_for_bit():
    """W2: parameter gradients and dX equal plain torch autograd exactly in float32."""
    assert_gradients_equal_torch(mlp(), batch(), batch(4, NO, seed=3))


def test_gradients_agree_with_finite_differences_float64():
    """W2: in float64, gradients agree with central finite differences."""
    model = with_torch(mlp().double())
    X, dY = batch(3, dtype="float64"), batch(3, NO, seed=5, dtype="float64")
    _, backprop = model(X, is_train=True)
    dX = backprop(dY)

    def loss(inputs):
        return float((model.predict(inputs) * dY).sum())

    eps = 1e-6
    numeric = numpy.zeros_like(X)
    for index in numpy.ndindex(X.shape):
        up, down = X.copy(), X.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (loss(up) - loss(down)) / (2 * eps)
    numpy.testing.assert_allclose(dX, numeric, rtol=1e-6, atol=1e-8)
    weight = model.get_param("2.weight")
    analytic = model.get_grad("2.weight").copy()
    for index in numpy.ndindex(weight.shape):
        saved = weight[index]
        weight[index] = saved + eps
        up = loss(X)
        weight[index] = saved - eps
        down = loss(X)
        weight[index] = saved
        assert abs((up - down) / (2 * eps) - analytic[index]) < 1e-6


# -- W3: prediction -----------------------------------------------------------------------


@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_predict_runs_in_eval_without_grad_and_flags_rest_in_eval(start_in_train_mode):
    """W3: predict runs in eval mode with autograd off (no_grad) and keeps no graph, and puts
    the caller's grad mode back; training calls run in train mode; between calls the module
    rests in eval mode (the documented place)."""
    module = torch.nn.Sequential(torch.nn.Linear(NI, NO), torch.nn.Dropout(0.5))
    module.train(start_in_train_mode)
    seen = []
    module.register_forward_hook(
        lambda mod, inp, out: seen.append(
            (mod.training, mod[1].training, torch.is_grad_enabled(), out.requires_grad)
        )
    )
    model = with_torch(module)
    assert module.training is False and module[1].training is False
    X = batch()
    assert_array_equal(model.predict(X), model.predict(X))  # dropout is off
    Y, _ = model(X, is_train=False)
    assert seen[-1] == (False, False, False, False) and torch.is_grad_enabled()
    model(X, is_train=True)
    assert seen[-1][:2] == (True, True)
    assert module.training is False and module[1].training is False
    module.train()  # the caller moves the flags: the next prediction puts them back to rest
    assert_array_equal(model.predict(X), Y)
    assert seen[-1] == (False, False, False, False) and module[1].training is False
    with torch.no_grad():
        model.predict(X)
        assert not torch.is_grad_enabled()  # a caller's no_grad block stays one


def test_no_backprop_after_prediction():
    """W3: a prediction keeps no graph: its callback refuses with a clear error."""
    model = with_torch(mlp())
    Y, backprop = model(batch(), is_train=False)
    with pytest.raises(ValueError, match="no backprop after a prediction"):
        backprop(numpy.ones_like(Y))


# -- W4: finish_update ----------------------------------------------------------------------


OPTIMIZERS = {
    "sgd": lambda: SGD(0.1),
    "sgd-l2-clip": lambda: SGD(0.1, L2=0.01, grad_clip=0.5),
    "adam": lambda: Adam(0.01),
    "radam": lambda: RAdam(0.01),
    "adam-schedule": lambda: Adam(constant(0.02)),
}


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_finish_update_applies_thinc_optimizer_to_every_param(make_optimizer):
    """W4: every torch parameter gets exactly the Thinc optimizer's update; grads are cleared."""
    model = with_torch(mlp())
    X, dY = batch(), batch(4, NO, seed=7)
    optimizer, reference = make_optimizer(), make_optimizer()
    for _ in range(3):
        before = params_of(model)
        _, backprop = model(X, is_train=True)
        backprop(dY)
        grads = {name: model.get_grad(name).copy() for name in model.param_names}
        model.finish_update(optimizer)
        for name in model.param_names:
            expected, _ = reference((model.id, name), before[name], grads[name])
            assert_array_equal(model.get_param(name), expected)
            assert not model.get_grad(name).any()


def test_nothing_leaks_from_one_update_into_the_next():
    """W4: after an update, the next backprop's gradients are its own, not a sum."""
    model = with_torch(mlp())
    optimizer = SGD(0.0)  # no change to the weights: the gradients must repeat exactly
    X, dY = batch(), batch(4, NO, seed=8)
    train_step(model, X, dY, optimizer)
    _, backprop = model(X, is_train=True)
    backprop(dY)
    first = model.get_grad("0.weight").copy()
    model.finish_update(optimizer)
    _, backprop = model(X, is_train=True)
    backprop(dY)
    assert_array_equal(model.get_grad("0.weight"), first)


def test_two_backprops_before_an_update_accumulate():
    """W4: two forward/backprop passes before one update add their gradients."""
    model = with_torch(mlp())
    reference = with_torch(mlp())
    X1, X2, dY = batch(seed=1), batch(seed=2), batch(4, NO, seed=3)
    for X in (X1, X2):
        _, backprop = model(X, is_train=True)
        backprop(dY)
    grads = []
    for X in (X1, X2):
        _, backprop = reference(X, is_train=True)
        backprop(dY)
        grads.append(reference.get_grad("0.weight").copy())
        reference.finish_update(SGD(0.0))
    numpy.testing.assert_allclose(model.get_grad("0.weight"), grads[0] + grads[1], rtol=1e-6)


def test_optimizer_keys_are_stable_and_unique():
    """W4: optimizer keys are (node id, param name): stable across steps, unique across models."""
    first, second = with_torch(mlp()), with_torch(mlp())
    optimizer = Adam(0.01)
    for _ in range(2):
        for model in (first, second):
            train_step(model, batch(), batch(4, NO), optimizer)
    keys = set(optimizer.mom1)
    expected = {(m.id, n) for m in (first, second) for n in m.param_names}
    assert keys == expected and len(keys) == 8
    assert all(optimizer.nr_update[key] == 2 for key in keys)


# -- W5: use_params -----------------------------------------------------------------------


def trained_with_averages(model):
    optimizer = Adam(0.05, use_averages=True)
    for seed in range(4):
        train_step(model, batch(seed=seed), batch(4, NO, seed=seed + 10), optimizer)
    return optimizer


def test_use_params_swaps_the_averages_in_and_restores():
    """W5: use_params(optimizer.averages) predicts with the averages, then the live weights."""
    module = mlp()
    model = with_torch(module)
    optimizer = trained_with_averages(model)
    X = batch()
    live = model.predict(X)
    live_weight = module[0].weight.detach().clone()
    with model.use_params(optimizer.averages):
        inside = model.predict(X)
        average = optimizer.averages[(model.id, "0.weight")]
        assert module[0].weight.data_ptr() == average.ctypes.data  # swapped in, not copied
    assert not numpy.allclose(inside, live)
    reference = copy.deepcopy(module)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(torch.from_numpy(optimizer.averages[(model.id, name)]))
        expected = reference.eval()(torch.from_numpy(X)).numpy()
    assert_array_equal(inside, expected)
    assert_array_equal(model.predict(X), live)
    assert torch.equal(module[0].weight.detach(), live_weight)


def test_use_params_restores_when_the_block_raises():
    """W5: the live weights come back when the block raises (Thinc's Model restores nothing)."""
    model = with_torch(mlp())
    optimizer = trained_with_averages(model)
    composed = chain(model, Linear(2, NO))
    composed.initialize(X=batch(), Y=batch(4, 2))
    live = params_of(model)
    with pytest.raises(KeyError):
        with composed.use_params(optimizer.averages):
            raise KeyError("boom")
    for name, value in live.items():
        assert_array_equal(model.get_param(name), value)
    assert_array_equal(model.shims[0].module[0].weight.detach().numpy(), live["0.weight"])


def expected_of(module: torch.nn.Module, X: numpy.ndarray) -> numpy.ndarray:
    with torch.no_grad():
        return copy.deepcopy(module).eval()(torch.from_numpy(X)).numpy()


def test_every_thinc_write_of_a_param_reaches_torch():
    """W5: whatever array Thinc sets as a param (a new one, a view of the old one, the same one
    again), the next call runs on it; the layer does not look up each param per call, so this
    checks the flag that Thinc's writes raise."""
    module = torch.nn.Linear(NI, NO)
    model = with_torch(module)
    X = batch()
    model.predict(X)
    weight = model.get_param("weight")
    model.set_param("weight", weight * 2)  # a new array
    assert_array_equal(model.predict(X), expected_of(module, X))
    assert module.weight.data_ptr() == model.get_param("weight").ctypes.data
    view = model.get_param("weight").reshape(-1).reshape(NO, NI)  # what optimizers write back
    model.set_param("weight", view)
    view[0, 0] += 1.0  # the same memory: torch sees it without a relink
    assert_array_equal(model.predict(X), expected_of(module, X))
    model.set_param("bias", numpy.zeros(NO, dtype="float32"))
    Y, _ = model(X, is_train=True)
    assert numpy.allclose(Y, X @ model.get_param("weight").T, atol=1e-6)  # bias 0


def test_a_remote_param_server_is_checked_every_call():
    """W5: a node whose ParamServer is remote (Thinc's `proxy`, as in its Ray integration)
    cannot raise the flag: the layer then compares each param on every call."""
    from thinc.backends import ParamServer

    class Proxy:  # Thinc's proxy protocol, kept in a dict
        def __init__(self) -> None:
            self.params: dict = {}

        def get_param(self, model_id, name):
            return self.params[(model_id, name)]

        def set_param(self, model_id, name, value):
            self.params[(model_id, name)] = value

        def set_grad(self, model_id, name, value):
            pass

        def inc_grad(self, model_id, name, value):
            pass

    model = with_torch(lambda nI, nO: torch.nn.Linear(nI, nO))
    proxy = Proxy()
    model._params = ParamServer(proxy=proxy)  # before the module's params become the node's
    X = batch()
    model.initialize(X=X, Y=batch(4, NO))
    module = model.shims[0].module
    assert_array_equal(model.predict(X), expected_of(module, X))
    proxy.params[(model.id, "weight")] = model.get_param("weight") * 3  # written remotely
    assert_array_equal(model.predict(X), expected_of(module, X))
    assert module.weight.data_ptr() == proxy.params[(model.id, "weight")].ctypes.data


def test_a_gradient_thinc_sets_or_torch_resets_is_followed():
    """W4: backprop adds into the node's current gradient arrays: a gradient Thinc set since
    the last pass, or a `.grad` that torch code reset (`zero_grad()`), is linked anew."""
    module = torch.nn.Linear(NI, NO)
    model = with_torch(module)
    X, dY = batch(), batch(4, NO, seed=3)
    expected_dW = dY.T @ X
    model(X, is_train=True)[1](dY)
    assert numpy.allclose(model.get_grad("weight"), expected_dW, atol=1e-6)
    fresh = numpy.zeros((NO, NI), dtype="float32")
    model.set_grad("weight", fresh)
    model(X, is_train=True)[1](dY)
    assert model.get_grad("weight") is fresh
    assert numpy.allclose(fresh, expected_dW, atol=1e-6)
    module.zero_grad()  # set_to_none: torch would allocate a new .grad
    model(X, is_train=True)[1](dY)
    assert model.get_grad("weight") is fresh
    assert numpy.allclose(fresh, 2 * expected_dW, atol=1e-6)
    assert numpy.allclose(model.get_grad("bias"), 3 * dY.sum(axis=0), atol=1e-5)


def test_a_gradient_set_after_an_update_is_added_to():
    """W4: after finish_update the layer lets torch allocate fresh `.grad`s (Thinc zeroed the
    old ones); a gradient the caller sets in between is not zero, so backprop adds into it."""
    model = with_torch(torch.nn.Linear(NI, NO, bias=False))
    X, dY = batch(), batch(4, NO, seed=3)
    model(X, is_train=True)[1](dY)
    model.finish_update(SGD(0.0))
    preset = numpy.ones((NO, NI), dtype="float32")
    model.set_grad("weight", preset.copy())
    model(X, is_train=True)[1](dY)
    assert numpy.allclose(model.get_grad("weight"), preset + dY.T @ X, atol=1e-6)


def test_pytorch_wrapper_ignores_averages_with_torch_does_not():
    """W5: Thinc's PyTorchWrapper leaves predictions unchanged under use_params; ours swaps."""
    wrapper = PyTorchWrapper(mlp())
    optimizer = trained_with_averages(wrapper)
    X = batch()
    live = wrapper.predict(X)
    with wrapper.use_params(optimizer.averages):
        assert_array_equal(wrapper.predict(X), live)  # the averages never reach torch
    ours = with_torch(mlp())
    optimizer = trained_with_averages(ours)
    live = ours.predict(X)
    with ours.use_params(optimizer.averages):
        assert not numpy.allclose(ours.predict(X), live)


# -- W6: serialization --------------------------------------------------------------------


def batchnorm_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(NI, NH), torch.nn.BatchNorm1d(NH))


def test_bytes_round_trip_with_buffers():
    """W6: parameters and buffers (BatchNorm statistics) round-trip through to_bytes."""
    model = with_torch(batchnorm_net())
    train_step(model, batch(8), batch(8, NH), Adam(0.1))
    data = model.to_bytes()
    fresh = with_torch(batchnorm_net(seed=1))
    fresh.from_bytes(data)
    module, loaded = model.shims[0].module, fresh.shims[0].module
    assert torch.equal(module[1].running_mean, loaded[1].running_mean)
    assert int(loaded[1].num_batches_tracked) == 1
    assert_array_equal(fresh.predict(batch()), model.predict(batch()))


def test_disk_round_trip(tmp_path):
    """W6: to_disk/from_disk store the weights, not the architecture."""
    model = with_torch(mlp(seed=1))
    model.to_disk(tmp_path / "model")
    fresh = with_torch(mlp(seed=2))
    fresh.from_disk(tmp_path / "model")
    assert_array_equal(fresh.predict(batch()), model.predict(batch()))


def test_loading_never_unpickles(monkeypatch):
    """W6: from_bytes does not call pickle or torch.load."""
    source = with_torch(batchnorm_net())
    data = source.to_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = with_torch(batchnorm_net(seed=3))
    fresh.from_bytes(data)
    assert_array_equal(fresh.get_param("0.weight"), source.get_param("0.weight"))


def corrupt_cases():
    good = with_torch(mlp()).to_bytes()
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "random": numpy.random.default_rng(0).bytes(300),
        "pickle": pickle.dumps({"0.weight": numpy.zeros((NH, NI))}),
        "thinc-chain": chain(Linear(NH, NI), Linear(NO, NH)).initialize().to_bytes(),
        "other-with_torch": with_torch(torch.nn.Linear(NI, NO)).to_bytes(),
        "pytorch-wrapper": PyTorchWrapper(mlp()).to_bytes(),
    }


@pytest.mark.parametrize("case", corrupt_cases().keys())
def test_corrupt_or_foreign_bytes_raise_and_change_nothing(case):
    """W6: corrupt, truncated or foreign bytes raise ValueError and leave the model as it was."""
    model = with_torch(mlp())
    before, X = params_of(model), batch()
    expected = model.predict(X)
    with pytest.raises(ValueError):
        model.from_bytes(corrupt_cases()[case])
    assert model.name == "with_torch(Sequential)"
    assert set(model.param_names) == set(before)
    for name, value in before.items():
        assert_array_equal(model.get_param(name), value)
    assert_array_equal(model.predict(X), expected)


def test_shape_mismatch_names_the_parameter_and_both_shapes():
    """W6: loading weights of another width names the parameter and both shapes."""
    data = with_torch(mlp(nH=7)).to_bytes()
    model = with_torch(mlp())
    before = params_of(model)
    with pytest.raises(ValueError, match=r"'0.weight'.*\(5, 6\).*\(7, 6\)"):
        model.from_bytes(data)
    for name, value in before.items():
        assert_array_equal(model.get_param(name), value)


# -- W7: shape inference ------------------------------------------------------------------


def linear_factory(nI, nO):
    return torch.nn.Linear(nI, nO)


def test_factory_built_at_initialize_from_inferred_dims():
    """W7: a factory is built at initialize with nI from X and nO from Y."""
    model = with_torch(linear_factory)
    assert model.shims[0].module is None and model.param_names == ()
    model.initialize(X=batch(), Y=batch(4, 2))
    assert (model.get_dim("nI"), model.get_dim("nO")) == (NI, 2)
    assert model.get_param("weight").shape == (2, NI)
    assert model.predict(batch()).shape == (4, 2)


def test_factory_built_from_set_dim_in_a_chain():
    """W7: dims set with set_dim (as spaCy sets nO from the labels) reach the factory."""
    output = with_torch(linear_factory)
    output.set_dim("nO", 5)
    model = chain(with_torch(mlp()), output)
    model.initialize(X=batch())
    assert model.predict(batch()).shape == (4, 5)


def test_dims_follow_the_module_a_factory_built():
    """W7: a factory that builds another width than chain asked for: the dims say what it built."""
    hidden = with_torch(lambda nI, nO: torch.nn.Linear(nI, 24))
    output = with_torch(linear_factory)
    output.set_dim("nO", 3)
    model = chain(hidden, output)
    model.initialize(X=batch(), Y=batch(4, 3))
    assert hidden.get_dim("nO") == 24 and output.get_dim("nI") == 24
    assert model.predict(batch()).shape == (4, 3)


def test_from_bytes_before_initialize_builds_from_saved_dims():
    """W7: from_bytes on a never-initialized factory layer builds it from the saved dims."""
    trained = with_torch(linear_factory)
    trained.initialize(X=batch(), Y=batch(4, 2))
    fresh = with_torch(linear_factory)
    fresh.from_bytes(trained.to_bytes())
    assert (fresh.get_dim("nI"), fresh.get_dim("nO")) == (NI, 2)
    assert_array_equal(fresh.predict(batch()), trained.predict(batch()))


def test_dims_read_from_a_ready_module():
    """W7: given a module, nI/nO come from its first and last Linear/Embedding."""
    model = with_torch(mlp())
    assert (model.get_dim("nI"), model.get_dim("nO")) == (NI, NO)
    embed = with_torch(torch.nn.Embedding(11, 4))
    assert (embed.get_dim("nI"), embed.get_dim("nO")) == (11, 4)


def test_uninitialized_factory_raises_clearly():
    """W7: running a factory layer before initialize says what to do."""
    with pytest.raises(ValueError, match="initialize"):
        with_torch(linear_factory).predict(batch())


# -- W9: copy -----------------------------------------------------------------------------


def test_copy_is_independent_optimizer_state_included():
    """W9: training the copy changes neither the original's weights nor its Adam moments."""
    model = with_torch(mlp())
    optimizer = Adam(0.05)
    train_step(model, batch(), batch(4, NO), optimizer)
    twin = model.copy()
    assert twin.id != model.id and twin.shims[0].id != model.shims[0].id
    assert twin.shims[0].module is not model.shims[0].module
    before, moments = params_of(model), optimizer.mom1[(model.id, "0.weight")].copy()
    X = batch()
    expected = model.predict(X)
    assert_array_equal(twin.predict(X), expected)
    for seed in range(3):
        train_step(twin, batch(seed=seed), batch(4, NO, seed=seed), optimizer)
    assert not numpy.allclose(twin.predict(X), expected)
    assert_array_equal(model.predict(X), expected)
    for name, value in before.items():
        assert_array_equal(model.get_param(name), value)
    assert_array_equal(optimizer.mom1[(model.id, "0.weight")], moments)


def test_a_copy_loads_before_it_ever_ran():
    """W6, W9: from_bytes into a fresh copy (its shim has not met its node yet) loads it."""
    source = with_torch(mlp(seed=1))
    twin = with_torch(mlp()).copy()
    twin.from_bytes(source.to_bytes())
    assert_array_equal(twin.predict(batch()), source.predict(batch()))


# -- W10: bad input -----------------------------------------------------------------------


def test_a_copy_uses_params_before_it_ever_ran():
    """W5: a copy's use_params(averages) swaps and restores the torch side from the start
    (Thinc copies the shims before it builds the node; the copy introduces them)."""
    model = with_torch(mlp())
    optimizer = trained_with_averages(model)
    twin = model.copy()
    averages = {(twin.id, name): value for (_, name), value in optimizer.averages.items()}
    X = batch()
    live = model.predict(X)
    with pytest.raises(KeyError):
        with twin.use_params(averages):
            assert_array_equal(twin.predict(X), expected_of(twin.shims[0].module, X))
            assert not numpy.allclose(twin.predict(X), live)
            raise KeyError("boom")
    assert_array_equal(twin.predict(X), live)


def test_wrong_width_names_layer_expected_and_actual():
    """W10: an input of the wrong width names the layer, the expected and the actual shape."""
    model = with_torch(mlp())
    with pytest.raises(ValueError, match=r"with_torch\(Sequential\).*\(\*, 6\).*\(4, 7\)"):
        model.predict(batch(4, 7))


def test_wrong_dtype_names_the_layer():
    """W10: an input of a dtype the module cannot take raises a ValueError naming the layer."""
    model = with_torch(mlp())
    with pytest.raises(ValueError, match=r"with_torch\(Sequential\).*int64"):
        model.predict(numpy.ones((4, NI), dtype="int64"))


def test_float64_input_is_accepted_and_dx_is_float64():
    """W10: float64 input runs through a float32 module; dX comes back float64."""
    model = with_torch(mlp())
    X = batch(dtype="float64")
    Y, backprop = model(X, is_train=True)
    assert Y.dtype == numpy.float32
    dX = backprop(numpy.ones_like(Y))
    assert dX.dtype == numpy.float64
    numpy.testing.assert_allclose(Y, model.predict(X.astype("float32")), rtol=1e-6)


def test_second_backprop_raises_a_clear_error():
    """W10: calling one backprop callback twice says so, not torch's internals message."""
    model = with_torch(mlp())
    Y, backprop = model(batch(), is_train=True)
    backprop(numpy.ones_like(Y))
    with pytest.raises(ValueError, match="already called"):
        backprop(numpy.ones_like(Y))


def test_wrong_gradient_shape_is_named():
    """W10: a dY of the wrong shape names the layer and both shapes."""
    model = with_torch(mlp())
    Y, backprop = model(batch(), is_train=True)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        backprop(numpy.ones((4, 2), dtype="float32"))


def test_not_a_module_is_a_type_error():
    """W10: with_torch of something that is neither a module nor a factory says what it got."""
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        with_torch(42)  # type: ignore[arg-type]


# -- P5: no copies --------------------------------------------------------------------------


def test_contiguous_float32_crosses_without_copies():
    """P5: a contiguous float32 input and the output share memory with torch's tensors."""
    module = mlp()
    seen = {}
    module.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    model = with_torch(module)
    X = batch()
    for is_train in (False, True):
        Y, _ = model(X, is_train=is_train)
        assert seen["x"].data_ptr() == X.ctypes.data
        assert seen["y"].data_ptr() == Y.ctypes.data
    assert module[0].weight.data_ptr() == model.get_param("0.weight").ctypes.data


# -- errors at the first wrong step ---------------------------------------------------------


def test_wrong_width_fails_at_initialize():
    """W10: initialize(X=...) with the wrong width fails there, naming both widths."""
    with pytest.raises(ValueError, match=r"expected input \(\*, 6\), got shape \(4, 5\)"):
        with_torch(mlp()).initialize(X=batch(width=5))


def test_float16_module_is_refused_and_float64_cannot_step():
    """W10: a float16 module is refused at with_torch(...); a float64 one runs forward and
    backward (W2 checks) but an optimizer step says what to do instead of failing in Thinc."""
    with pytest.raises(TypeError, match=r"float16.*module.float\(\)"):
        with_torch(mlp().half())
    model = with_torch(mlp().double())
    with pytest.raises(TypeError, match=r"float64.*module.float\(\)"):
        train_step(model, batch(dtype="float64"), batch(4, NO, dtype="float64"), Adam(0.1))


def test_torch_dropout_without_a_dropout_submodule_is_refused():
    """D6, W10: torch_dropout=True on a module without nn.Dropout fails at once, or at the
    initialize that builds a factory's module."""
    with pytest.raises(ValueError, match="no nn.Dropout"):
        with_torch(mlp(), torch_dropout=True)
    model = with_torch(lambda nI, nO: torch.nn.Linear(nI, 2), torch_dropout=True)
    with pytest.raises(ValueError, match="no nn.Dropout"):
        model.initialize(X=batch())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA/cupy")
def test_to_gpu_without_cupy_or_cuda_says_what_to_do():
    """W8, W10: to_gpu on a machine without cupy or CUDA names what to install or do."""
    with pytest.raises(ValueError, match="to_gpu needs"):
        with_torch(mlp()).to_gpu(0)


def test_inputs_of_any_layout_predict_alike():
    """P2, P11, W10: the prediction path that P2 and P11 time (a float32 array) agrees with
    float64, non-contiguous and nested inputs."""
    model = with_torch(mlp())
    X = batch(6)
    fast = model.predict(X)
    assert_array_equal(model.predict(X.astype("float64")), fast)
    # other memory layouts: torch's kernels may round differently (float32 rounding)
    numpy.testing.assert_allclose(model.predict(numpy.asfortranarray(X)), fast, 1e-5, 1e-6)
    numpy.testing.assert_allclose(model.predict(X[::-1])[::-1], fast, 1e-5, 1e-6)
    assert_array_equal(with_torch(torch.nn.ModuleDict({"a": mlp()})["a"]).predict(X), fast)


class TokenEncoder(torch.nn.Module):
    """A module called as a Hugging Face model is: token ids and a mask as keyword arguments,
    a dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 4)

    def forward(self, input_ids, attention_mask):
        hidden = self.embed(input_ids) * attention_mask[..., None]
        return {"last_hidden_state": hidden, "pooled": hidden.mean(1)}


def test_a_dict_of_token_ids_names_the_layer_and_argskwargs():
    """W1, W10: a dict (or a tokenizer's BatchEncoding, a UserDict) goes to the module as one
    argument; the refusal names the layer and ArgsKwargs, not the vocabulary's size as an
    input width; ArgsKwargs then works."""
    from collections import UserDict

    model = with_torch(TokenEncoder())
    ids = {"input_ids": numpy.array([[1, 2, 3]]), "attention_mask": numpy.ones((1, 3), "int64")}
    for X in (ids, UserDict(ids)):
        with pytest.raises(ValueError, match=r"with_torch\(TokenEncoder\).*ArgsKwargs") as err:
            model.predict(X)
        assert "(*, 50)" not in str(err.value) and "input_ids: ndarray(1, 3)" in str(err.value)
    Y = model.predict(ArgsKwargs(args=(), kwargs=ids))
    assert Y["last_hidden_state"].shape == (1, 3, 4)


def test_a_bare_array_as_the_gradient_of_a_dict_output_names_the_keys():
    """W1, W10: the gradient of a dict output is a dict; an array there is refused with the
    layer's name and the output's keys (no AttributeError from inside), and a dict with one
    key (the other output without a gradient) works."""
    model = with_torch(TokenEncoder())
    ids = {"input_ids": numpy.array([[1, 2, 3]]), "attention_mask": numpy.ones((1, 3), "int64")}
    Y, backprop = model(ArgsKwargs(args=(), kwargs=ids), is_train=True)
    dH = numpy.ones_like(Y["last_hidden_state"])
    with pytest.raises(TypeError, match=r"with_torch\(TokenEncoder\).*\['last_hidden_state', "):
        backprop(dH)
    Y, backprop = model(ArgsKwargs(args=(), kwargs=ids), is_train=True)
    backprop({"last_hidden_state": dH})
    assert model.get_grad("embed.weight")[1:4].sum() == 12


def test_a_refused_gradient_leaves_the_backprop_callable() -> None:
    """W10: a gradient of the wrong shape is refused before the graph is used, so the same
    backprop then takes the right one; only a call after a backward that ran is refused."""
    model = with_torch(mlp())
    X = batch()
    Y, backprop = model(X, is_train=True)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(4, 3\)"):
        backprop(numpy.ones((4, 2), dtype="f"))
    assert backprop(numpy.ones_like(Y)).shape == X.shape
    with pytest.raises(ValueError, match="already called"):
        backprop(numpy.ones_like(Y))
