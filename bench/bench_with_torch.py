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


def training_steps(batch: int, nI: int, nH: int, nO: int) -> Dict[str, Callable[[], object]]:
    """One training step each: forward, backward from a fixed dY, an Adam update."""
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((batch, nI), dtype=numpy.float32)
    dY = rng.standard_normal((batch, nO), dtype=numpy.float32)
    X_t, dY_t = torch.from_numpy(X), torch.from_numpy(dY)

    plain = mlp(nI, nH, nO)
    torch_adam = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def torch_step() -> None:
        plain(X_t).backward(dY_t)
        torch_adam.step()
        torch_adam.zero_grad(set_to_none=True)

    ours = with_torch(mlp(nI, nH, nO))
    ours_adam = Adam(1e-3)

    def ours_step() -> None:
        _, backprop = ours(X, is_train=True)
        backprop(dY)
        ours.finish_update(ours_adam)

    wrapper = PyTorchWrapper(mlp(nI, nH, nO))
    wrapper_adam = Adam(1e-3)

    def wrapper_step() -> None:
        _, backprop = wrapper(X, is_train=True)
        backprop(dY)
        wrapper.finish_update(wrapper_adam)

    return {"torch": torch_step, "with_torch": ours_step, "PyTorchWrapper": wrapper_step}


def predictions(batch: int, nI: int, nH: int, nO: int) -> Dict[str, Callable[[], object]]:
    """One prediction each; plain torch gets a ready tensor and an eval-mode module."""
    X = numpy.random.default_rng(0).standard_normal((batch, nI), dtype=numpy.float32)
    X_t = torch.from_numpy(X)
    plain = mlp(nI, nH, nO).eval()

    def torch_predict() -> object:
        with torch.inference_mode():
            return plain(X_t)

    ours = with_torch(mlp(nI, nH, nO))
    wrapper = PyTorchWrapper(mlp(nI, nH, nO))
    return {"torch": torch_predict, "with_torch": lambda: ours.predict(X),
            "PyTorchWrapper": lambda: wrapper.predict(X)}


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
            step["with_torch"] / step["PyTorchWrapper"], 1.00)
        print(f"   (PyTorchWrapper vs torch: {step['PyTorchWrapper'] / step['torch']:.2f}x)")
        pred = medians(predictions(*shape), rounds, number * 4)
        ok &= report(f"P2 predict vs torch ({label})", pred["with_torch"] / pred["torch"], 1.05)
        print(f"   (PyTorchWrapper predict vs torch: {pred['PyTorchWrapper'] / pred['torch']:.2f}x)")
    return ok
