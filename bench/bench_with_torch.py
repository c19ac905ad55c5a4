"""P1, P2: a training step and a prediction of with_torch against plain torch and PyTorchWrapper."""

from typing import Callable, Dict, Tuple

import numpy
import torch
from thinc.api import Adam, PyTorchWrapper

from torchlayers import with_torch

from ._timing import medians, report

SHAPES = [(64, 300, 128, 10), (128, 768, 3072, 768)]


def mlp(nI: int, nH: int, nO: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(nI, nH), torch.nn.ReLU(), torch.nn.Linear(nH, nO))


def thinc_adam() -> Adam:
    """Thinc's Adam doing what torch.optim.Adam does: no gradient clipping, no averages."""
    return Adam(1e-3, grad_clip=0.0, use_averages=False)


def training_steps(batch: int, nI: int, nH: int, nO: int) -> Dict[str, Callable[[], object]]:
    """One training step each: forward, backward from a fixed dY, an Adam update.

    A Thinc layer's backprop returns dX, so "torch" computes the input gradient too (as a torch
    layer in the middle of a network does); "torch, no dX" skips it, printed for information.
    """
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((batch, nI), dtype=numpy.float32)
    dY = rng.standard_normal((batch, nO), dtype=numpy.float32)
    plain = mlp(nI, nH, nO)
    torch_adam = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def torch_step(needs_dX: bool) -> object:
        X_leaf = torch.from_numpy(X).requires_grad_(needs_dX)
        plain(X_leaf).backward(torch.from_numpy(dY))
        torch_adam.step()
        torch_adam.zero_grad(set_to_none=True)
        return X_leaf.grad.numpy() if needs_dX else None

    ours = with_torch(mlp(nI, nH, nO))
    ours_adam = thinc_adam()

    def ours_step() -> object:
        _, backprop = ours(X, is_train=True)
        dX = backprop(dY)
        ours.finish_update(ours_adam)
        return dX

    wrapper = PyTorchWrapper(mlp(nI, nH, nO))
    wrapper_adam = thinc_adam()

    def wrapper_step() -> object:
        _, backprop = wrapper(X, is_train=True)
        dX = backprop(dY)
        wrapper.finish_update(wrapper_adam)
        return dX

    return {
        "torch": lambda: torch_step(True),
        "torch, no dX": lambda: torch_step(False),
        "with_torch": ours_step,
        "PyTorchWrapper": wrapper_step,
    }


def predictions(batch: int, nI: int, nH: int, nO: int) -> Dict[str, Callable[[], object]]:
    """One prediction each, from the same numpy batch to a numpy result.

    "torch" is the module in eval mode under `inference_mode`, with `torch.from_numpy` in and
    `.numpy()` out (what a caller holding Thinc's arrays must do); "torch, tensors" skips both
    conversions and is printed beside, for information.
    """
    X = numpy.random.default_rng(0).standard_normal((batch, nI), dtype=numpy.float32)
    X_t = torch.from_numpy(X)
    plain = mlp(nI, nH, nO).eval()

    def torch_predict() -> object:
        with torch.inference_mode():
            return plain(torch.from_numpy(X)).numpy()

    def torch_tensors() -> object:
        with torch.inference_mode():
            return plain(X_t)

    ours = with_torch(mlp(nI, nH, nO))
    wrapper = PyTorchWrapper(mlp(nI, nH, nO))
    return {
        "torch": torch_predict,
        "torch, tensors": torch_tensors,
        "with_torch": lambda: ours.predict(X),
        "PyTorchWrapper": lambda: wrapper.predict(X),
    }


def scale(shape: Tuple[int, int, int, int]) -> Tuple[int, int]:
    """(rounds, calls per round): fewer calls for the big shape, about a second per case."""
    return (15, 40) if shape[2] < 1000 else (9, 3)


def main() -> bool:
    ok = True
    for shape in SHAPES:
        label = "batch {}, {}->{}->{}".format(*shape)
        rounds, number = scale(shape)
        step = medians(training_steps(*shape), rounds, number)
        ok &= report(f"P1 step vs torch ({label})", step["with_torch"] / step["torch"], 1.00)
        ok &= report(
            f"P1 step vs PyTorchWrapper ({label})",
            step["with_torch"] / step["PyTorchWrapper"],
            1.00,
        )
        print(
            f"   (vs torch without dX: {step['with_torch'] / step['torch, no dX']:.2f}x; "
            f"PyTorchWrapper vs torch: {step['PyTorchWrapper'] / step['torch']:.2f}x)"
        )
        pred = medians(predictions(*shape), rounds, number * 4)
        ok &= report(f"P2 predict vs torch ({label})", pred["with_torch"] / pred["torch"], 1.05)
        print(
            f"   (vs torch on tensors: {pred['with_torch'] / pred['torch, tensors']:.2f}x; "
            f"PyTorchWrapper vs torch: {pred['PyTorchWrapper'] / pred['torch']:.2f}x)"
        )
    return ok
