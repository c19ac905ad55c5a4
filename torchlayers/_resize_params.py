"""Resizing params in place: a torch Linear/Embedding inside a `with_torch` node, or a Thinc
W/b node. The node stays the same (same id, so optimizer keys stay stable); its arrays are
replaced by resized ones that keep the overlap, with zero weights and `fill` biases for new units.
"""

from typing import Any, Dict, List, Optional, Tuple, cast

import torch
from thinc.api import Model, get_array_module

from ._convert import to_tensor
from ._shim import TorchShim

Changes = List[Tuple[str, Tuple[int, ...]]]  # (param name, old shape) for each resized param
Spec = Tuple[str, List[Tuple[str, int, bool]]]  # size attribute, [(param attr, axis, use fill)]

# What a resize changes in each torch layer it knows; "nI" of an Embedding is its rows.
TORCH_SPECS: Dict[Tuple[type, str], Spec] = {
    (torch.nn.Linear, "nO"): ("out_features", [("weight", 0, False), ("bias", 0, True)]),
    (torch.nn.Linear, "nI"): ("in_features", [("weight", 1, False)]),
    (torch.nn.Embedding, "nO"): ("embedding_dim", [("weight", 1, True)]),
    (torch.nn.Embedding, "nI"): ("num_embeddings", [("weight", 0, False)]),
}


def is_torch_node(node: Model) -> bool:
    return bool(node.shims) and isinstance(node.shims[0], TorchShim)


def is_weights_node(node: Model) -> bool:
    """Thinc's Linear, Softmax, Maxout...: params W (nO, ..., nI) and b (nO, ...)."""
    return "W" in node.param_names and "b" in node.param_names


def torch_layer(node: Model, path: Optional[str], dim: str) -> Tuple[str, torch.nn.Module]:
    """The submodule to resize: `path`, or the first Linear/Embedding (nI) / last Linear (nO)."""
    module = cast(torch.nn.Module, cast_shim(node).module)  # callers check it is built
    if path is None:
        kinds = (torch.nn.Linear,) if dim == "nO" else (torch.nn.Linear, torch.nn.Embedding)
        found = [(n, m) for n, m in module.named_modules() if isinstance(m, kinds)]
        if not found and dim == "nO":  # an Embedding as the output layer: its columns
            found = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Embedding)]
        found = found[:1] if dim == "nI" else found[-1:]
        if not found:
            raise ValueError(f"{node.name}: no Linear or Embedding to resize; name one by path")
        return found[0]
    try:
        return path, module.get_submodule(path)
    except AttributeError as err:
        raise ValueError(f"{node.name}: no submodule '{path}' to resize ({err})") from err


def check_torch_layer(node: Model, path: str, layer: torch.nn.Module, dim: str) -> Spec:
    """Raise ValueError unless `layer` can be resized without breaking its neighbours."""
    spec = TORCH_SPECS.get((type(layer), dim))
    if spec is None:
        raise ValueError(
            f"{node.name}: cannot resize '{path}' ({type(layer).__name__}): only Linear and "
            "Embedding layers can be resized"
        )
    module = cast(torch.nn.Module, cast_shim(node).module)  # callers check it is built
    names = [name for name, _ in module.named_modules()]
    here = names.index(path)
    # Registration order stands in for data flow: what comes after the output layer (before
    # the input layer) and owns tensors would be sized by the units that change.
    others = names[here + 1 :] if dim == "nO" else names[:here]
    for name in others:
        inside = name.startswith(f"{path}.") or path.startswith(f"{name}.") or name == ""
        sub = module.get_submodule(name)
        owned = list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
        if owned and not inside:
            where = "after the output" if dim == "nO" else "before the input"
            raise ValueError(
                f"{node.name}: cannot resize '{path}': submodule '{name}' "
                f"({type(sub).__name__}) comes {where} layer and its size depends on it"
            )
    return spec


def torch_size(layer: torch.nn.Module, spec: Spec) -> int:
    return int(getattr(layer, spec[0]))


def resize_torch(
    node: Model, path: str, layer: torch.nn.Module, spec: Spec, size: int, fill: float
) -> Changes:
    """Give `layer` new Parameters of the new size that view the node's new Thinc params."""
    size_attr, params = spec
    if size_attr == "num_embeddings" and (getattr(layer, "padding_idx", None) or 0) >= size:
        raise ValueError(f"{node.name}: '{path}' has padding_idx {layer.padding_idx} >= {size}")
    changes: Changes = []
    for attr, axis, use_fill in params:
        old = getattr(layer, attr)
        if old is None:  # bias=False
            continue
        name = f"{path}.{attr}" if path else attr
        changes.append(resize_param(node, name, axis, size, fill if use_fill else 0.0))
        new = torch.nn.Parameter(to_tensor(node.get_param(name)), requires_grad=old.requires_grad)
        setattr(layer, attr, new)
    setattr(layer, size_attr, size)
    module = cast(torch.nn.Module, cast_shim(node).module)  # callers check it is built
    cast_shim(node).attach(node, module)  # re-read named_parameters; they view the node's arrays
    return changes


def resize_weights(node: Model, dim: str, size: int, fill: float) -> Changes:
    """Resize a Thinc W/b node: nO is axis 0 of W and b, nI the last axis of W."""
    if dim == "nO":
        return [resize_param(node, "W", 0, size, 0.0), resize_param(node, "b", 0, size, fill)]
    return [resize_param(node, "W", node.get_param("W").ndim - 1, size, 0.0)]


def resize_param(node: Model, name: str, axis: int, size: int, fill: float) -> Tuple[str, Any]:
    """Replace param `name` (and its gradient, new units 0) by one `size` long on `axis`."""
    array = node.get_param(name)
    node.set_param(name, resized(array, axis, size, fill))
    if node.has_grad(name):
        node.set_grad(name, resized(node.get_grad(name), axis, size, 0.0))
    return name, tuple(array.shape)


def resized(array: Any, axis: int, size: int, fill: float) -> Any:
    """A copy of `array` with `axis` cut or extended to `size`; new entries are `fill`."""
    shape = list(array.shape)
    old, shape[axis] = shape[axis], size
    out = get_array_module(array).zeros(tuple(shape), dtype=array.dtype)
    keep = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape))
    out[keep] = array[keep]
    if size > old and fill != 0:
        new = [slice(None)] * len(shape)
        new[axis] = slice(old, None)
        out[tuple(new)] = fill
    return out


def cast_shim(node: Model) -> TorchShim:
    return cast(TorchShim, node.shims[0])
