"""P1, P2 (P6 on CUDA): with_torch against plain torch and Thinc's PyTorchWrapper.

Each case goes from the same arrays (numpy on CPU, cupy on CUDA) to the same results.
"""

from typing import Any, Callable, Dict, Tuple

import numpy
import torch
from thinc.api import Adam, Optimizer, PyTorchWrapper

from torchlayers import with_torch

from ._timing import medians, report

SHAPES = [(64, 300, 128, 10), (128, 768, 3072, 768)]


def mlp(nI: int, nH: int, nO: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(nI, nH), torch.nn.ReLU(), torch.nn.Linear(nH, nO)]
    return torch.nn.Sequential(*layers).to(device)


def thinc_adam() -> Optimizer:
    """Thinc's Adam doing what torch.optim.Adam does: no gradient clipping, no averages."""
    return Adam(1e-3, grad_clip=0.0, use_averages=False)


def on_device(model: Any, device: str) -> Any:
    if device == "cuda":
        model.to_gpu(0)
    return model


def arrays(device: str, *shapes: Tuple[int, int]) -> list:
    rng = numpy.random.default_rng(0)
    made = [rng.standard_normal(shape, dtype=numpy.float32) for shape in shapes]
    if device == "cuda":
        import cupy

        made = [cupy.asarray(array) for array in made]
    return made


def as_tensor(array: Any) -> torch.Tensor:
    return torch.from_numpy(array) if isinstance(array, numpy.ndarray) else torch.from_dlpack(array)


def as_array(tensor: Any) -> Any:  # a tensor; typed Any so the timed steps need no cast
    if tensor.is_cuda:
        import cupy

        return cupy.from_dlpack(tensor.detach())
    return tensor.detach().numpy()


def training_steps(shape: Tuple[int, int, int, int], device: str) -> Dict[str, Callable]:
    """One training step each: forward, backward from a fixed dY, an Adam update.

    A Thinc layer's backprop returns dX, so "torch" computes the input gradient too (as a torch
    layer in the middle of a network does); "torch, no dX" skips it, printed for information.
    """
    batch, nI, nH, nO = shape
    X, dY = arrays(device, (batch, nI), (batch, nO))
    plain = mlp(nI, nH, nO, device)
    torch_adam = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def torch_step(needs_dX: bool) -> object:
        X_leaf = as_tensor(X).requires_grad_(needs_dX)
        plain(X_leaf).backward(as_tensor(dY))
        torch_adam.step()
        torch_adam.zero_grad(set_to_none=True)
        return as_array(X_leaf.grad) if needs_dX else None

    ours = on_device(with_torch(mlp(nI, nH, nO, "cpu")), device)
    wrapper = on_device(PyTorchWrapper(mlp(nI, nH, nO, device)), device)
    return {
        "torch": lambda: torch_step(True),
        "torch, no dX": lambda: torch_step(False),
        "with_torch": thinc_step(ours, X, dY, thinc_adam()),
        "PyTorchWrapper": thinc_step(wrapper, X, dY, thinc_adam()),
    }


def thinc_step(model: Any, X: Any, dY: Any, optimizer: Optimizer) -> Callable[[], object]:
    """One Thinc training step: forward, backprop from the fixed `dY`, the optimizer."""

    def step() -> object:
        _, backprop = model(X, is_train=True)
        dX = backprop(dY)
        model.finish_update(optimizer)
        return dX

    return step


def predictions(shape: Tuple[int, int, int, int], device: str) -> Dict[str, Callable]:
    """One prediction each, from the same array to an array.

    "torch" is the module in eval mode under `inference_mode`, converting the array in and the
    result out (what a caller holding Thinc's arrays must do); "torch, tensors" skips both
    conversions and is printed beside, for information.
    """
    batch, nI, nH, nO = shape
    (X,) = arrays(device, (batch, nI))
    X_t = as_tensor(X)
    plain = mlp(nI, nH, nO, device).eval()

    def torch_predict() -> object:
        with torch.inference_mode():
            return as_array(plain(as_tensor(X)))

    def torch_tensors() -> object:
        with torch.inference_mode():
            return plain(X_t)

    ours = on_device(with_torch(mlp(nI, nH, nO, "cpu")), device)
    wrapper = on_device(PyTorchWrapper(mlp(nI, nH, nO, device)), device)
    return {
        "torch": torch_predict,
        "torch, tensors": torch_tensors,
        "with_torch": lambda: ours.predict(X),
        "PyTorchWrapper": lambda: wrapper.predict(X),
    }


def shares_memory(device: str) -> bool:
    """P5: the input, the output and the weights torch sees are the arrays Thinc holds."""
    model = on_device(with_torch(mlp(8, 16, 4, "cpu")), device)
    seen: Dict[str, torch.Tensor] = {}
    module = model.shims[0].module
    module.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    (X,) = arrays(device, (4, 8))
    Y, _ = model(X, is_train=True)
    pointer = (lambda a: a.ctypes.data) if device == "cpu" else (lambda a: a.data.ptr)
    checks = {
        "input": seen["x"].data_ptr() == pointer(X),
        "output": seen["y"].data_ptr() == pointer(Y),
        "weights": module[0].weight.data_ptr() == pointer(model.get_param("0.weight")),
    }
    shared = ", ".join(f"{name} {'shared' if ok else 'COPIED'}" for name, ok in checks.items())
    print(f"P5 no copies (contiguous float32, {device}): {shared}")
    return all(checks.values())


def scale(shape: Tuple[int, int, int, int], device: str) -> Tuple[int, int]:
    """(rounds, calls per round): about a second per case."""
    if device == "cuda":
        return (15, 50)
    return (15, 40) if shape[2] < 1000 else (9, 3)


def main(device: str = "cpu") -> bool:
    sync = torch.cuda.synchronize if device == "cuda" else None
    tag = "P6 " if device == "cuda" else ""
    ok = shares_memory(device)
    for shape in SHAPES:
        label = "batch {}, {}->{}->{}".format(*shape) + (", CUDA" if device == "cuda" else "")
        rounds, number = scale(shape, device)
        step = medians(training_steps(shape, device), rounds, number, sync)
        ok &= report(f"{tag}P1 step vs torch ({label})", step["with_torch"] / step["torch"], 1.00)
        ok &= report(
            f"{tag}P1 step vs PyTorchWrapper ({label})",
            step["with_torch"] / step["PyTorchWrapper"],
            1.00,
        )
        print(
            f"   (vs torch without dX: {step['with_torch'] / step['torch, no dX']:.2f}x; "
            f"PyTorchWrapper vs torch: {step['PyTorchWrapper'] / step['torch']:.2f}x)"
        )
        # Short blocks, many rounds: a prediction is short, and the machine's drift over a long
        # block moved this ratio by +-0.1 between runs.
        pred = medians(predictions(shape, device), rounds * 4, number, sync)
        ratio = pred["with_torch"] / pred["torch"]
        ok &= report(f"{tag}P2 predict vs torch ({label})", ratio, 1.05)
        print(
            f"   (vs torch on tensors: {pred['with_torch'] / pred['torch, tensors']:.2f}x; "
            f"PyTorchWrapper vs torch: {pred['PyTorchWrapper'] / pred['torch']:.2f}x)"
        )
    return ok
