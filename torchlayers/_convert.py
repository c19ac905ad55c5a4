"""The one place arrays become tensors and back, and the one walk over nested inputs.

numpy arrays cross with `torch.from_numpy` / `Tensor.numpy()` and cupy arrays with DLPack:
both share memory, so a contiguous float32 array and the tensor torch sees are the same bytes (P5).
"""

from collections.abc import Mapping
from typing import Any, Callable, List, Tuple

import numpy
import torch
from thinc.types import ArgsKwargs


def is_array(value: Any) -> bool:
    """True for numpy and cupy arrays and torch tensors: the leaves of a nested input."""
    return isinstance(value, (numpy.ndarray, torch.Tensor)) or hasattr(
        value, "__cuda_array_interface__"
    )


def to_tensor(array: Any) -> torch.Tensor:
    """View a numpy/cupy array as a tensor, without a copy where torch allows one."""
    if isinstance(array, numpy.ndarray):
        if not array.flags.writeable:
            array = array.copy()  # torch would share memory it may not write
        try:
            return torch.from_numpy(array)
        except ValueError:  # negative strides: torch has no such views
            return torch.from_numpy(numpy.ascontiguousarray(array))
    if isinstance(array, torch.Tensor):
        return array
    # cupy: the CUDA array interface gives a zero-copy view with less bookkeeping than DLPack
    return torch.as_tensor(array, device=f"cuda:{array.device.id}")


def to_array(tensor: torch.Tensor) -> Any:
    """View a tensor as a numpy array (CPU) or a cupy array (CUDA), without a copy."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_cuda:
        return tensor.numpy()
    return cupy_view(tensor)


def cupy_view(tensor: torch.Tensor) -> Any:
    """A cupy array over a CUDA tensor's memory, kept alive by the tensor.

    `cupy.from_dlpack` goes through torch's stream bookkeeping on every call; this wraps the
    pointer. Both libraries work on the default stream here, so no synchronisation is needed.
    (P6 in bench/: predictions run at 0.8x torch converting with DLPack.)
    """
    import cupy

    if tensor.dtype not in CUPY_DTYPES:
        return cupy.from_dlpack(tensor)
    itemsize = tensor.element_size()
    memory = cupy.cuda.UnownedMemory(
        tensor.data_ptr(), tensor.numel() * itemsize, tensor, tensor.get_device()
    )
    return cupy.ndarray(
        tuple(tensor.shape),
        dtype=CUPY_DTYPES[tensor.dtype],
        memptr=cupy.cuda.MemoryPointer(memory, 0),
        strides=tuple(step * itemsize for step in tensor.stride()),
    )


CUPY_DTYPES = {
    torch.float16: numpy.float16,
    torch.float32: numpy.float32,
    torch.float64: numpy.float64,
    torch.int8: numpy.int8,
    torch.int16: numpy.int16,
    torch.int32: numpy.int32,
    torch.int64: numpy.int64,
    torch.uint8: numpy.uint8,
    torch.bool: numpy.bool_,
}


def map_arrays(fn: Callable[[Any], Any], value: Any) -> Any:
    """Apply `fn` to every array leaf of a list/tuple/dict/ArgsKwargs structure, keeping its shape.

    Leaves that are not arrays (ints, strings, None) are returned as they are. The order in which
    `fn` sees the leaves is fixed: depth first, dicts in key order.
    """
    if is_array(value):
        return fn(value)
    if isinstance(value, ArgsKwargs):
        return ArgsKwargs(
            args=tuple(map_arrays(fn, arg) for arg in value.args),
            kwargs={key: map_arrays(fn, arg) for key, arg in value.kwargs.items()},
        )
    if isinstance(value, list):
        return [map_arrays(fn, item) for item in value]
    if isinstance(value, tuple):
        return tuple(map_arrays(fn, item) for item in value)
    if isinstance(value, dict):
        return {key: map_arrays(fn, item) for key, item in value.items()}
    return value


def pair_leaves(outputs: Any, grads: Any) -> List[Tuple[Any, Any]]:
    """Pair each array leaf of `outputs` with the leaf at the same place in `grads`.

    `grads` mirrors `outputs` (as Thinc's dY mirrors Y); a missing or None gradient pairs with None.
    A gradient of another structure (an array for a dict output) raises TypeError saying the
    structure expected, for the caller to prefix with the layer's name.
    """
    if is_array(outputs):
        if grads is not None and not is_array(grads):
            raise TypeError(
                f"expected an array as the gradient of output {describe(outputs)}, "
                f"got {describe(grads)}"
            )
        return [(outputs, grads)]
    if grads is None:
        return [(leaf, None) for leaf in _leaves(outputs)]
    if isinstance(outputs, (list, tuple)):
        if not isinstance(grads, (list, tuple)):
            raise TypeError(
                f"expected the gradient as a list or tuple mirroring the output "
                f"{describe(outputs)}, got {describe(grads)}"
            )
        return [pair for out, grad in zip(outputs, grads) for pair in pair_leaves(out, grad)]
    if isinstance(outputs, dict):
        if not isinstance(grads, Mapping):
            raise TypeError(
                f"expected the gradient as a dict with the output's keys {list(outputs)} "
                f"(None or missing where an output has none), got {describe(grads)}"
            )
        return [pair for key in outputs for pair in pair_leaves(outputs[key], grads.get(key))]
    return []


def _leaves(value: Any) -> List[Any]:
    leaves: List[Any] = []
    map_arrays(leaves.append, value)
    return leaves


def describe(value: Any) -> str:
    """A short description of an input for error messages: shapes and dtypes, not contents."""
    if is_array(value):
        return f"{type(value).__name__}{tuple(value.shape)} {value.dtype}"
    if isinstance(value, ArgsKwargs):
        return f"ArgsKwargs({describe(list(value.args))}, {describe(value.kwargs)})"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "[" + ", ".join(describe(item) for item in value) + "]"
    if isinstance(value, Mapping):  # a dict, or a tokenizer's BatchEncoding (a UserDict)
        kind = "" if isinstance(value, dict) else type(value).__name__
        return kind + "{" + ", ".join(f"{k}: {describe(item)}" for k, item in value.items()) + "}"
    return type(value).__name__
