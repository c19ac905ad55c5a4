"""with_torch on CUDA (W8, P6). Skipped where there is no GPU or no cupy, as in CI."""

import numpy
import pytest
import torch
from numpy.testing import assert_allclose
from thinc.api import Adam

from torchlayers import with_torch

try:
    import cupy
except ImportError:  # pragma: no cover - CPU machines
    cupy = None

pytestmark = pytest.mark.skipif(
    cupy is None or not torch.cuda.is_available(), reason="needs a CUDA GPU and cupy"
)

NI, NH, NO = 6, 5, 3


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(NI, NH), torch.nn.ReLU(), torch.nn.Linear(NH, NO))


def batch(n: int = 4, width: int = NI, seed: int = 0) -> numpy.ndarray:
    return numpy.random.default_rng(seed).uniform(-1, 1, (n, width)).astype("float32")


def on_gpu(model):
    model.to_gpu(0)
    return model


def train_on_gpu(model, optimizer, X, steps: int) -> None:
    for seed in range(steps):
        _, backprop = model(X, is_train=True)
        backprop(cupy.asarray(batch(len(X), NO, seed=seed)))
        model.finish_update(optimizer)


def test_to_gpu_moves_the_module_and_shares_memory():
    """W8, P6: to_gpu moves the module; cupy arrays cross to torch and back without copies."""
    module = mlp()
    seen = {}
    module.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    model = on_gpu(with_torch(module))
    weight = model.get_param("0.weight")
    assert isinstance(weight, cupy.ndarray)
    assert all(p.is_cuda for p in module.parameters())
    assert module[0].weight.data_ptr() == weight.data.ptr
    X = cupy.asarray(batch())
    Y, backprop = model(X, is_train=True)
    assert isinstance(Y, cupy.ndarray)
    assert seen["x"].data_ptr() == X.data.ptr and seen["y"].data_ptr() == Y.data.ptr
    dX = backprop(cupy.ones_like(Y))
    assert isinstance(dX, cupy.ndarray) and dX.shape == X.shape


def test_training_on_gpu_follows_cpu():
    """W8: the same steps on GPU and CPU give the same weights (to float32 rounding)."""
    cpu, gpu = with_torch(mlp()), on_gpu(with_torch(mlp()))
    cpu_opt, gpu_opt = Adam(0.01), Adam(0.01)
    for seed in range(3):
        X, dY = batch(seed=seed), batch(4, NO, seed=seed + 5)
        for model, opt, xp in ((cpu, cpu_opt, numpy), (gpu, gpu_opt, cupy)):
            _, backprop = model(xp.asarray(X), is_train=True)
            backprop(xp.asarray(dY))
            model.finish_update(opt)
    for name in cpu.param_names:
        assert_allclose(
            cupy.asnumpy(gpu.get_param(name)), cpu.get_param(name), rtol=1e-4, atol=1e-6
        )


def test_to_cpu_brings_it_back():
    """W8: to_cpu moves the module and the params back to numpy."""
    model = on_gpu(with_torch(mlp()))
    expected = cupy.asnumpy(model.predict(cupy.asarray(batch())))
    model.to_cpu()
    assert isinstance(model.get_param("0.weight"), numpy.ndarray)
    assert not any(p.is_cuda for p in model.shims[0].module.parameters())
    assert_allclose(model.predict(batch()), expected, rtol=1e-5, atol=1e-6)


def test_use_params_on_gpu():
    """W5, W8: the optimizer's averages reach the torch weights on the GPU too."""
    model = on_gpu(with_torch(mlp()))
    optimizer = Adam(0.05, use_averages=True)
    X = cupy.asarray(batch())
    train_on_gpu(model, optimizer, X, steps=3)
    live = model.predict(X)
    with model.use_params(optimizer.averages):
        assert not cupy.allclose(model.predict(X), live)
    assert cupy.array_equal(model.predict(X), live)


def test_mixed_precision_returns_unscaled_float32_gradients():
    """W8: mixed_precision runs under autocast, and Thinc sees float32 outputs and unscaled
    float32 gradients close to the float32 ones."""
    full = on_gpu(with_torch(mlp()))
    mixed = on_gpu(with_torch(mlp(), mixed_precision=True))
    mixed.shims[0].loss_scale = 2.0**8  # no overflow at this size: compare the values
    X, dY = cupy.asarray(batch(16)), cupy.asarray(batch(16, NO, seed=3))
    results = []
    for model in (full, mixed):
        Y, backprop = model(X, is_train=True)
        dX = backprop(dY)
        results.append((Y, dX, model.get_grad("0.weight")))
    (Y32, dX32, g32), (Y16, dX16, g16) = results
    assert Y16.dtype == dX16.dtype == g16.dtype == cupy.float32
    # float16 products keep about 3 decimal digits: compare at that precision.
    assert_allclose(cupy.asnumpy(Y16), cupy.asnumpy(Y32), rtol=1e-2, atol=1e-2)
    assert_allclose(cupy.asnumpy(dX16), cupy.asnumpy(dX32), rtol=1e-2, atol=1e-2)
    assert_allclose(cupy.asnumpy(g16), cupy.asnumpy(g32), rtol=1e-2, atol=1e-2)


def test_mixed_precision_skips_an_update_that_overflowed():
    """W8: an update whose gradients overflowed is skipped and the loss scale backs off."""
    model = on_gpu(with_torch(mlp(), mixed_precision=True))
    shim = model.shims[0]
    shim.loss_scale = scale = 2.0**8
    optimizer = Adam(0.01)
    X = cupy.asarray(batch())
    before = {name: model.get_param(name).copy() for name in model.param_names}
    _, backprop = model(X, is_train=True)
    backprop(cupy.full((4, NO), 1e30, dtype="float32"))  # times the scale: inf in float32
    model.finish_update(optimizer)
    for name, value in before.items():
        assert cupy.array_equal(model.get_param(name), value)
    assert shim.loss_scale == scale / 2
    _, backprop = model(X, is_train=True)
    backprop(cupy.ones((4, NO), dtype="float32"))
    model.finish_update(optimizer)
    assert not cupy.array_equal(model.get_param("0.weight"), before["0.weight"])


def test_with_dropout_masks_cupy_outputs():
    """D1, D4, D5, W8: with_dropout makes its masks with cupy on the GPU, Ragged included."""
    from thinc.api import Ragged, with_array

    from torchlayers import with_dropout

    model = on_gpu(with_dropout(with_torch(mlp()), 0.5))
    X = cupy.asarray(batch(64))
    Y, backprop = model(X, is_train=True)
    full = model.layers[0].predict(X)
    kept = Y != 0
    assert 0.3 < float(kept.mean()) < 0.7
    assert cupy.allclose(Y[kept], full[kept] * 2)
    dX = backprop(cupy.ones_like(Y))
    assert isinstance(dX, cupy.ndarray) and dX.shape == X.shape
    wide = with_array(with_torch(torch.nn.Linear(NI, 32)))
    ragged = on_gpu(with_dropout(wide, 0.5, mode="variational"))
    data = cupy.asarray(batch(6))
    lengths = cupy.asarray([2, 4], dtype="int32")
    out, _ = ragged(Ragged(data, lengths), is_train=True)
    zeros = out.data == 0
    assert zeros.any() and not zeros.all()
    assert cupy.array_equal(zeros[0], zeros[1]) and cupy.array_equal(zeros[2], zeros[5])


def test_averaged_on_gpu_swaps_and_restores():
    """A1, A2, W8: averages kept on the GPU are swapped in and the live weights come back."""
    from torchlayers import averaged, use_averages

    model = on_gpu(averaged(with_torch(mlp())))
    optimizer = Adam(0.05)
    X = cupy.asarray(batch())
    train_on_gpu(model, optimizer, X, steps=3)
    live = model.predict(X)
    with use_averages(model):
        assert not cupy.allclose(model.predict(X), live)
    assert cupy.array_equal(model.predict(X), live)


def test_resize_output_on_gpu_keeps_old_outputs():
    """R3, W8: growing a torch output layer on the GPU keeps the old outputs."""
    from torchlayers import resizable, resize_output

    model = on_gpu(resizable(with_torch(mlp())))
    X = cupy.asarray(batch())
    before = model.predict(X)
    resize_output(model, NO + 2)
    after = model.predict(X)
    assert after.shape == (4, NO + 2)
    assert_allclose(cupy.asnumpy(after[:, :NO]), cupy.asnumpy(before), rtol=1e-5, atol=1e-6)
    assert not after[:, NO:].any()
