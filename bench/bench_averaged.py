"""P3, P4: swapping averages in and out on a 100M-parameter model; one EMA update."""

import gc
from typing import Callable, Dict

import numpy
import torch
from thinc.api import SGD, Model, NumpyOps, Optimizer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from torchlayers._shim import TorchShim
from torchlayers.averaged import AverageShim, averaged, averages, settle, use_averages
from torchlayers.with_torch import with_torch

from ._timing import medians, report

P3_LAYERS, P3_WIDTH = 8, 3584  # 8 x (3584^2 + 3584) = 102.8M float32 parameters, 411 MB
P4_LAYERS, P4_WIDTH = 4, 2048  # 16.8M parameters: big enough to time the arithmetic
MILLISECOND = 1e-3


def stack(layers: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))


def trained(layers: int, width: int, optimizer: Optimizer) -> Model:
    """An averaged with_torch stack after two updates: averages exist (ours, and Thinc's if
    the optimizer keeps them)."""
    model: Model = averaged(with_torch(stack(layers, width)))
    X = numpy.random.default_rng(0).standard_normal((2, width), dtype=numpy.float32)
    for _ in range(2):
        Y, backprop = model(X, is_train=True)
        backprop(Y * 1e-3)
        model.finish_update(optimizer)
    settle(model)
    return model


def swaps() -> Dict[str, Callable[[], object]]:
    """Enter and exit each way of swapping averages in, on one ~100M-parameter model."""
    optimizer = SGD(1e-3, use_averages=True)
    model = trained(P3_LAYERS, P3_WIDTH, optimizer)
    thinc_averages = optimizer.averages or {}

    def ours() -> None:
        with use_averages(model):
            pass

    def thinc() -> None:
        with model.use_params(thinc_averages):
            pass

    return {"use_averages": ours, "use_params(optimizer.averages)": thinc}


def ema_updates() -> Dict[str, Callable[[], object]]:
    """One EMA update over the same ~17M parameters, four ways."""
    optimizer = SGD(1e-3, use_averages=False)
    model = trained(P4_LAYERS, P4_WIDTH, optimizer)
    shim = model.shims[0]
    assert isinstance(shim, AverageShim)
    pairs = [(avg, node.get_param(name)) for node, name, avg in averages(model)]
    avg_tensors = [torch.from_numpy(avg) for avg, _ in pairs]
    live_tensors = [torch.from_numpy(live) for _, live in pairs]
    ops = NumpyOps()
    torch_shim = model.layers[0].shims[0]
    assert isinstance(torch_shim, TorchShim) and torch_shim.module is not None
    module = torch_shim.module  # its parameters are the same arrays
    swa = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.999))
    swa.update_parameters(module)  # the first call copies; time the averaging ones

    def ours() -> None:
        shim.finish_update(optimizer)  # what Model.finish_update calls; `settle` folds it in
        shim.settle()

    def foreach_lerp() -> None:
        torch._foreach_lerp_(avg_tensors, live_tensors, 1e-3)

    def thinc() -> None:
        for avg, live in pairs:
            ops.update_averages(avg, live, 1000)

    return {
        "averaged": ours,
        "_foreach_lerp_": foreach_lerp,
        "ops.update_averages": thinc,
        "AveragedModel": lambda: swa.update_parameters(module),
    }


def main() -> bool:
    ok = True
    swap = medians(swaps(), rounds=9, number=50)
    gc.collect()  # give the 100M model's memory back before the next one
    for name, seconds in swap.items():
        ok &= report(f"P3 {name} enter+exit / 1 ms", seconds / MILLISECOND, 1.00)
    ema = medians(ema_updates(), rounds=9, number=5)
    ok &= report("P4 EMA update vs _foreach_lerp_", ema["averaged"] / ema["_foreach_lerp_"], 1.50)
    for name in ("ops.update_averages", "AveragedModel"):
        print(f"   ({name} vs _foreach_lerp_: {ema[name] / ema['_foreach_lerp_']:.2f}x)")
    return ok
