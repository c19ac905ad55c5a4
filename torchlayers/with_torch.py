"""with_torch: a PyTorch module as a Thinc layer whose parameters Thinc owns."""

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union, cast

import torch
from thinc.api import ArgsKwargs, Model, registry
from torch.nn.modules.dropout import _DropoutNd

from ._checks import check_rate
from ._convert import describe, is_array, map_arrays, pair_leaves, to_array, to_tensor
from ._precision import run_autocast, scaled_backward
from ._shim import Factory, ShimLink, TorchShim, build_module

InT = TypeVar("InT")
OutT = TypeVar("OutT")


@registry.layers("torchlayers.with_torch.v1")
def with_torch(
    module: Union[torch.nn.Module, Factory],
    *,
    mixed_precision: bool = False,
    torch_dropout: bool = False,
) -> Model[InT, OutT]:
    """Wrap a torch module (or a factory `(nI, nO) -> Module`) as a Thinc layer.

    The layer runs and trains the very module it is given: its parameters become the layer's
    Thinc params (same memory), so any Thinc optimizer, `use_params(optimizer.averages)`,
    `to_bytes` and `copy` reach them.

    module: a ready `nn.Module` (`nI`/`nO` are read from its first/last `Linear` or `Embedding`),
        or a factory called at `initialize` with the dims Thinc inferred or that were set.
    mixed_precision: on CUDA, run the forward pass under `torch.autocast` (float16) with loss
        scaling; Thinc still sees float32 outputs and unscaled gradients. No effect on CPU.
    torch_dropout: hand the module's own `nn.Dropout` submodules the rate in
        `attrs["dropout_rate"]` during training (so `set_dropout_rate` reaches them).
    In: an array, a list/tuple/dict of arrays, or `ArgsKwargs` (spread into the call).
        Integer arrays pass through without a gradient. Out: a tensor, tuple or dict, as arrays.
    Training runs the module in train mode; prediction in eval mode under `inference_mode`;
    either way its own train/eval flags are put back afterwards.
    """
    if isinstance(module, torch.nn.Module):
        ready: Optional[torch.nn.Module] = module
        factory: Optional[Factory] = None
        label = type(module).__name__
    elif callable(module):
        ready, factory = None, module
        label = getattr(module, "__name__", type(module).__name__)
    else:
        raise TypeError(f"with_torch: expected a torch.nn.Module or a factory, got {module!r}")
    shim = TorchShim(ready, factory, mixed_precision)
    attrs: Dict[str, Any] = {"with_torch": ShimLink()}
    if torch_dropout:
        attrs["dropout_rate"] = None
    model: Model[InT, OutT] = Model(
        f"with_torch({label})",
        forward,
        init=init,
        dims={"nI": None, "nO": None},
        shims=[shim],
        attrs=attrs,
    )
    shim.bind(model)
    if ready is not None:
        shim.attach(model, ready)
        set_dims_from_module(model, ready)
    return model


def forward(model: Model[InT, OutT], X: InT, is_train: bool) -> Tuple[OutT, Callable]:
    shim: TorchShim = model.shims[0]  # type: ignore[assignment]
    module = shim.module
    if module is None:
        raise ValueError(f"{model.name}: call initialize() first: the factory has not been built")
    shim.sync(model)
    leaves: List[Optional[torch.Tensor]] = []  # per input leaf: the tensor that gets a gradient
    if is_array(X):
        Xt = input_tensor(shim.dtype, is_train, leaves, X)
    else:
        Xt = map_arrays(partial(input_tensor, shim.dtype, is_train, leaves), X)
    if not is_train:
        with torch.inference_mode():
            Yt = call_module(model, shim, module, Xt, X, training=False)
        return to_arrays(Yt), no_backprop
    Yt = call_module(model, shim, module, Xt, X, training=True)
    done = False

    def backprop(dY: OutT) -> InT:
        nonlocal done
        if done:
            raise ValueError(
                f"{model.name}: backprop was already called for this forward pass; torch frees "
                "the graph after one backward, so run the forward pass again"
            )
        done = True
        backward(model, shim, Yt, dY, leaves)
        grads = iter(leaves)
        return cast(InT, map_arrays(lambda x: input_grad(x, next(grads)), X))

    return to_arrays(Yt), backprop


def init(model: Model[InT, OutT], X: Optional[InT] = None, Y: Optional[OutT] = None) -> None:
    shim = cast(TorchShim, model.shims[0])
    if shim.module is not None:
        return
    if is_array(X) and model.maybe_get_dim("nI") is None and X.dtype.kind == "f":  # type: ignore
        model.set_dim("nI", X.shape[-1])  # type: ignore
    if is_array(Y) and model.maybe_get_dim("nO") is None:
        model.set_dim("nO", Y.shape[-1])  # type: ignore
    module = build_module(model, shim.factory)
    set_dims_from_module(model, module, force=True)  # the module is the truth, not the request
    shim.attach(model, module)


def call_module(
    model: Model, shim: TorchShim, module: torch.nn.Module, Xt: Any, X: Any, training: bool
) -> Any:
    """Run the module with its flags set for training or prediction; reword input errors."""
    args, kwargs = (Xt.args, Xt.kwargs) if isinstance(Xt, ArgsKwargs) else ((Xt,), NO_KWARGS)
    flags = shim.set_training(training)
    rates = set_torch_dropout(model, module) if training and "dropout_rate" in model.attrs else None
    try:
        if shim.autocast:
            Yt = run_autocast(module, args, kwargs)
        else:
            Yt = module(*args, **kwargs) if kwargs else module(*args)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError, IndexError) as err:
        check_input(model, X)  # the clearer message, where the dims tell what was expected
        raise ValueError(
            f"{model.name}: the module rejected input {describe(X)}{expected_input(model)}: {err}"
        ) from err
    finally:
        shim.restore_training(flags)
        if rates is not None:
            restore_torch_dropout(module, rates)
    return Yt


def backward(
    model: Model, shim: TorchShim, Yt: Any, dY: Any, inputs: List[Optional[torch.Tensor]]
) -> None:
    """Run torch's backward from `dY`, accumulating into the node's Thinc gradients."""
    outputs, grads = [], []
    for y, dy in pair_leaves(Yt, dY):
        if dy is None or not y.requires_grad:
            continue
        if tuple(dy.shape) != tuple(y.shape):
            raise ValueError(
                f"{model.name}: expected a gradient of shape {tuple(y.shape)}, got {dy.shape}"
            )
        outputs.append(y)
        grads.append(to_tensor(dy).to(y.dtype))
    kept = shim.prepare_grads(model, separate=shim.autocast)
    if outputs and shim.autocast:
        scaled_backward(shim, outputs, grads, inputs)
    elif outputs:
        torch.autograd.backward(outputs, grads)
    shim.collect_grads(model, kept)


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


def no_backprop(dY: Any) -> Any:
    raise ValueError("with_torch: no backprop after a prediction (is_train=False)")


NO_KWARGS: Dict[str, Any] = {}


def check_input(model: Model, X: Any) -> None:
    nI = model.maybe_get_dim("nI")
    if nI is None or not is_array(X) or X.dtype.kind != "f":
        return
    if X.ndim == 0 or X.shape[-1] != nI:
        raise ValueError(f"{model.name}: expected input (*, {nI}), got shape {tuple(X.shape)}")


def expected_input(model: Model) -> str:
    nI = model.maybe_get_dim("nI")
    return f" (expected (*, {nI}))" if nI is not None else ""


def set_dims_from_module(model: Model, module: torch.nn.Module, force: bool = False) -> None:
    """Read nI/nO from the first and last layers that say them (Linear, Embedding).

    force: overwrite dims already set (a factory may build another width than it was asked:
    chain's init hands every unset nO the output's width).
    """
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    if not layers:
        return
    first, last = layers[0], layers[-1]
    nI = first.in_features if isinstance(first, torch.nn.Linear) else first.num_embeddings
    nO = last.out_features if isinstance(last, torch.nn.Linear) else last.embedding_dim
    for name, value in (("nI", nI), ("nO", nO)):
        if force or model.maybe_get_dim(name) is None:
            model.set_dim(name, value, force=True)


def set_torch_dropout(model: Model, module: torch.nn.Module) -> Optional[List[float]]:
    """D6: give the module's own Dropout submodules the caller's rate; return their own rates."""
    rate = model.attrs["dropout_rate"]
    if rate is None:
        return None
    check_rate(model.name, rate)
    dropouts = torch_dropouts(module)
    before = [m.p for m in dropouts]
    for m in dropouts:
        m.p = float(rate)
    return before


def restore_torch_dropout(module: torch.nn.Module, rates: List[float]) -> None:
    for m, p in zip(torch_dropouts(module), rates):
        m.p = p


def torch_dropouts(module: torch.nn.Module) -> List[_DropoutNd]:
    return [m for m in module.modules() if isinstance(m, _DropoutNd)]
