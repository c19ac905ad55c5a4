"""How a with_torch node calls its module, arrays in and arrays out.

A prediction runs the module as it rests (eval mode) with autograd off; a training call runs
it in train mode, with the caller's dropout rate where the layer hands one on, and its
backward pass adds into the node's Thinc gradients. `with_torch.py` holds the layer (factory,
forward, init); this file the calls, written for a fixed cost per call of a few microseconds
(P11): the common cases are spelled out rather than routed through general helpers.
"""

from collections.abc import Mapping
from functools import partial
from typing import Any, Dict, List, NoReturn, Optional, Tuple

import numpy
import torch
from thinc.api import ArgsKwargs, Model
from torch.autograd.graph import _engine_run_backward
from torch.autograd.variable import Variable

from ._checks import check_rate
from ._convert import describe, is_array, map_arrays, pair_leaves, to_array, to_tensor
from ._modes import busy
from ._precision import run_autocast
from ._shim import TorchShim


def predict(model: Model, shim: TorchShim, module: torch.nn.Module, X: Any) -> Any:
    """Run the module as it rests (eval mode), with autograd off: no flag is written, so
    threads may overlap. The common case (one numpy array in, no autocast) is spelled
    out here rather than through the general helpers: at batch 1 each helper call is a
    measurable share of P11's budget."""
    modes = shim.modes
    calls = modes.training_calls
    if calls & 1 or modes.root["training"]:  # the cheap test of Modes.begin_prediction
        calls = modes.begin_prediction(model.name)
    grad_was_on = is_grad_enabled()
    set_grad_enabled(False)
    try:
        if type(X) is numpy.ndarray and not shim.autocast:
            Xt = to_tensor(X)
            if Xt.dtype is not shim.links.dtype and Xt.is_floating_point():
                Xt = Xt.to(shim.links.dtype)
            try:
                Yt = module(Xt)
            except CALL_ERRORS as err:
                raise_rejected(model, X, err)
        else:
            Xt = map_arrays(partial(input_tensor, shim.links.dtype, False, []), X)
            Yt = call_module(model, shim, module, Xt, X)
    finally:
        set_grad_enabled(grad_was_on)
    if modes.training_calls != calls:  # a training call overlapped this one
        raise RuntimeError(busy(model.name))
    return to_array(Yt) if type(Yt) is torch.Tensor else to_arrays(Yt)


# What `torch.no_grad()` does, without its Python context manager: the grad mode is
# thread-local, as the inference-mode guard is, and the pair costs a fraction of entering that
# guard (or `torch.inference_mode()`, several us a call here): most of P11's budget.
is_grad_enabled = torch.is_grad_enabled
set_grad_enabled = torch._C._set_grad_enabled


def train_call(model: Model, shim: TorchShim, module: torch.nn.Module, Xt: Any, X: Any) -> Any:
    """Run the module in train mode, with the caller's dropout rate if it takes one (D6)."""
    rate = model.attrs.get("dropout_rate")  # only with torch_dropout=True; None until set
    if rate is not None:
        check_rate(model.name, rate)  # set_dropout_rate writes attrs without a check
        rate = float(rate)
    rates = shim.modes.begin_training(rate)
    try:
        return call_module(model, shim, module, Xt, X)
    finally:
        shim.modes.end_training(rates)


def call_module(model: Model, shim: TorchShim, module: torch.nn.Module, Xt: Any, X: Any) -> Any:
    """Call the module; reword errors about its input."""
    try:
        if isinstance(Xt, ArgsKwargs):
            if shim.autocast:
                return run_autocast(module, Xt.args, Xt.kwargs)
            return module(*Xt.args, **Xt.kwargs)
        if shim.autocast:
            return run_autocast(module, (Xt,), NO_KWARGS)
        return module(Xt)
    except CALL_ERRORS as err:
        raise_rejected(model, X, err)


# What torch raises for a wrong input; AttributeError: what a module that reads `.size()` or
# `.shape` of its argument raises for a dict (Hugging Face models given a BatchEncoding).
CALL_ERRORS = (RuntimeError, TypeError, IndexError, AttributeError)


def raise_rejected(model: Model, X: Any, err: Exception) -> NoReturn:
    """Raise the error a module raised for input `X` as a ValueError that names the layer and
    what it expected; out-of-memory errors as they are."""
    if isinstance(err, torch.OutOfMemoryError):
        raise err
    check_input(model, X)  # the clearer message, where the dims tell what was expected
    hint = ""
    if isinstance(X, Mapping):
        hint = (
            "; a dict goes to the module as one positional argument, module(X): for keyword "
            "arguments (a tokenizer's BatchEncoding: input_ids=..., attention_mask=...) pass "
            "ArgsKwargs(args=(), kwargs=dict(X))"
        )
    raise ValueError(
        f"{model.name}: the module rejected input {describe(X)}{expected_input(model, X)}: "
        f"{type(err).__name__}: {err}{hint}"
    ) from err


def output_gradients(model: Model, Yt: Any, dY: Any) -> Tuple[List[Any], List[torch.Tensor]]:
    """The outputs that take a gradient and `dY`'s tensors for them, checked: a `dY` of another
    structure or shape is refused here, before the graph is used, so a corrected call can
    follow."""
    if isinstance(Yt, torch.Tensor) and is_array(dY):
        pairs = [(Yt, dY)]
    else:
        try:
            pairs = pair_leaves(Yt, dY)
        except TypeError as err:  # dY of another structure than the output
            raise TypeError(f"{model.name}: {err}") from None
    outputs, grads = [], []
    for y, dy in pairs:
        if dy is None or not y.requires_grad:
            continue
        if tuple(dy.shape) != tuple(y.shape):
            raise ValueError(
                f"{model.name}: expected a gradient of shape {tuple(y.shape)}, got {dy.shape}"
            )
        outputs.append(y)
        grad = to_tensor(dy)
        grads.append(grad if grad.dtype is y.dtype else grad.to(y.dtype))
    return outputs, grads


def backward(
    model: Model,
    shim: TorchShim,
    outputs: List[Any],
    grads: List[torch.Tensor],
    inputs: List[Optional[torch.Tensor]],
) -> None:
    """Run torch's backward from `output_gradients`, accumulating into the node's Thinc
    gradients."""
    links = shim.links
    kept = links.prepare_grads(model, separate=shim.autocast)
    if outputs and shim.autocast:
        shim.scaler.backward(outputs, grads, list(links.params.values()) + inputs)
    elif outputs:
        run_backward(outputs, grads, links.on_cuda)
    links.collect_grads(model, kept)


def run_backward(outputs: List[torch.Tensor], grads: List[torch.Tensor], on_cuda: bool) -> None:
    """`torch.autograd.backward(outputs, grads)` without its argument checks, which `backward`
    has made (shapes, dtypes). On the CPU it also skips what `_engine_run_backward` adds around
    the engine: a copy of the caller's contextvars stashed for CUDA's device threads (a CPU
    graph runs on the calling thread, which has them) and autograd's debug-logging hooks. That
    stash alone cost ~13 us per backward here, more than P11's budget. Same engine call."""
    if on_cuda:
        _engine_run_backward(
            tuple(outputs), tuple(grads), False, False, (), allow_unreachable=True,
            accumulate_grad=True,
        )  # fmt: skip
    else:
        ENGINE.run_backward(tuple(outputs), tuple(grads), False, False, (), True, True)


ENGINE = Variable._execution_engine  # what `_engine_run_backward` calls


def to_arrays(Yt: Any) -> Any:
    return to_array(Yt) if isinstance(Yt, torch.Tensor) else map_arrays(to_array, Yt)


def input_tensor(
    dtype: torch.dtype, is_train: bool, leaves: List[Optional[torch.Tensor]], x: Any
) -> torch.Tensor:
    """One input leaf as a tensor: shared memory; floats in the module's dtype, with a grad."""
    tensor = to_tensor(x)
    if tensor.dtype is not dtype:  # torch dtypes are singletons: `is` is the cheap test
        if not tensor.is_floating_point():
            leaves.append(None)  # token ids and masks: no gradient
            return tensor
        tensor = tensor.to(dtype)  # float64 into a float32 module: one copy, dX cast back
    leaves.append(tensor.requires_grad_() if is_train else None)
    return tensor


def input_grad(x: Any, tensor: Optional[torch.Tensor]) -> Any:
    """dX for one input leaf: its gradient in the input's own dtype; zeros for integer ids."""
    grad = tensor.grad if tensor is not None else None
    if grad is None:
        return x * 0 if hasattr(x, "dtype") else None
    array = to_array(grad)
    return array if array.dtype == x.dtype else array.astype(x.dtype)


NO_KWARGS: Dict[str, Any] = {}


def check_input(model: Model, X: Any) -> None:
    nI = model.maybe_get_dim("nI")
    if nI is None or not is_array(X) or X.dtype.kind != "f":
        return
    if X.ndim == 0 or X.shape[-1] != nI:
        raise ValueError(f"{model.name}: expected input (*, {nI}), got shape {tuple(X.shape)}")


def expected_input(model: Model, X: Any) -> str:
    """The input width, where it means one: for float arrays (nI is read from the module's
    first Linear or Embedding: for token ids it is the vocabulary's size, not a width)."""
    nI = model.maybe_get_dim("nI")
    if nI is None or not is_array(X) or X.dtype.kind != "f":
        return ""
    return f" (expected (*, {nI}))"
