"""with_torch: a PyTorch module as a Thinc layer whose parameters Thinc owns."""

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union, cast

import torch
from thinc.api import Model, registry

from ._convert import is_array, map_arrays
from ._loading import Layer
from ._modes import torch_dropouts
from ._shim import ShimLink, TorchShim
from ._torch_calls import (
    backward,
    check_input,
    input_grad,
    input_tensor,
    output_gradients,
    predict,
    to_arrays,
    train_call,
)
from ._torch_module import (
    Factory,
    build_module,
    check_device,
    set_dims_from_module,
)

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

    Args:
        module: A ready float32 `nn.Module` (`nI`/`nO` are read from its first/last `Linear`
            or `Embedding`), or a factory called at `initialize` with the dims Thinc inferred
            or that were set. A float64 module runs forward and backward (gradient checks)
            but Thinc's optimizers train float32 only; float16 is refused: use
            `mixed_precision`.
        mixed_precision: On CUDA, run the forward pass under `torch.autocast` (float16) with
            loss scaling; Thinc still sees float32 outputs and unscaled gradients. No effect
            on CPU.
        torch_dropout: Hand the module's own `nn.Dropout` submodules the rate in
            `attrs["dropout_rate"]` during training (so `set_dropout_rate` reaches them).
            The module must have at least one.

    Returns:
        A Thinc `Model`. In: an array, a list/tuple/dict of arrays, or `ArgsKwargs` (spread
            into the call); integer arrays pass through without a gradient. Out: what the module
            returns (a tensor, tuple or dict), as arrays.

    Raises:
        TypeError: `module` is neither a module nor a callable; parameters not float32/64.
        ValueError: `torch_dropout=True` on a module without `nn.Dropout`.

    The module rests in eval mode between calls: a prediction runs it as it rests, with autograd
    off (as under `torch.no_grad()`), and writes no flags, so many threads may predict at once.
    A training call switches it to train mode for its forward pass and back. A prediction that
    overlaps a training call on another thread raises RuntimeError.
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
    model: Model[InT, OutT] = Layer(
        f"with_torch({label})",
        forward,
        init=init,
        dims={"nI": None, "nO": None},
        shims=[shim],
        attrs=attrs,
    )
    shim.bind(model)
    if ready is not None:
        attach(model, shim, ready)
    return model


def forward(model: Model[InT, OutT], X: InT, is_train: bool) -> Tuple[OutT, Callable]:
    shim: TorchShim = model.shims[0]  # type: ignore[assignment]
    module = shim._model
    if module is None:
        raise ValueError(f"{model.name}: call initialize() first: the factory has not been built")
    if shim.links.stale:  # Thinc set a param since the last call: point torch at it
        shim.sync(model)
    if not is_train:
        return predict(model, shim, module, X), no_backprop
    leaves: List[Optional[torch.Tensor]] = []  # per input leaf: the tensor that gets a gradient
    if is_array(X):
        Xt = input_tensor(shim.links.dtype, True, leaves, X)
    else:
        Xt = map_arrays(partial(input_tensor, shim.links.dtype, True, leaves), X)
    Yt = train_call(model, shim, module, Xt, X)
    done = False

    def backprop(dY: OutT) -> InT:
        nonlocal done
        if done:
            raise ValueError(
                f"{model.name}: backprop was already called for this forward pass; torch frees "
                "the graph after one backward, so run the forward pass again"
            )
        outputs, d_outputs = output_gradients(model, Yt, dY)  # a refused dY keeps the graph
        done = True
        backward(model, shim, outputs, d_outputs, leaves)
        if len(leaves) == 1 and is_array(X):
            return cast(InT, input_grad(X, leaves[0]))
        grads = iter(leaves)
        return cast(InT, map_arrays(lambda x: input_grad(x, next(grads)), X))

    return to_arrays(Yt), backprop


def init(model: Model[InT, OutT], X: Optional[InT] = None, Y: Optional[OutT] = None) -> None:
    shim = cast(TorchShim, model.shims[0])
    if shim.module is None:
        if is_array(X) and model.maybe_get_dim("nI") is None and X.dtype.kind == "f":  # type: ignore
            model.set_dim("nI", X.shape[-1])  # type: ignore
        if is_array(Y) and model.maybe_get_dim("nO") is None:
            model.set_dim("nO", Y.shape[-1])  # type: ignore
        attach(model, shim, build_module(model, shim.factory))
    check_input(model, X)  # a wrong width fails here, not at the first predict


def attach(model: Model, shim: TorchShim, module: torch.nn.Module) -> None:
    """Link `module` to the node: its params become Thinc params, its dims the node's."""
    check_device(model, module)
    if "dropout_rate" in model.attrs and not torch_dropouts(module):
        raise ValueError(
            f"{model.name}: torch_dropout=True, but the module has no nn.Dropout submodule "
            "for the rate to reach"
        )
    set_dims_from_module(model, module, force=shim.factory is not None)  # before it has params
    shim.attach(model, module)


def no_backprop(dY: Any) -> Any:
    raise ValueError("with_torch: no backprop after a prediction (is_train=False)")
