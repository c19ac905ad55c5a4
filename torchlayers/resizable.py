"""resizable: grow or shrink the input and output units of a trained layer, in place."""

from typing import List, Optional, Tuple, TypeVar, cast

from thinc.api import Model, registry

from ._checks import check_size
from ._loading import Layer
from ._optimizer_state import OptimizerState
from ._resize_params import (
    Changes,
    check_torch_layer,
    is_torch_node,
    is_weights_node,
    resize_torch,
    resize_weights,
    torch_layer,
    torch_size,
)
from ._shim import TorchShim
from ._thinc import NodeShim, wrapper_forward, write_dim

InT = TypeVar("InT")
OutT = TypeVar("OutT")


@registry.layers("torchlayers.resizable.v1")
def resizable(
    layer: Model[InT, OutT],
    *,
    input_layer: Optional[str] = None,
    output_layer: Optional[str] = None,
    fill: float = 0.0,
) -> Model[InT, OutT]:
    """Make `layer`'s input and output units resizable after training, keeping what it predicts.

    The resized layer is the last (output) or first (input) `with_torch` or Thinc W/b layer
    (Linear, Softmax, ...) under `layer`. Resizing keeps the node and its ids: optimizer moments
    and averages of kept units carry over, new units start from zero state, and `averaged` nodes
    between the model and the resized layer resize their averages alike (A5). Before
    `initialize` a resize only sets the dim the layer will be built with.

    Args:
        layer: The layer to make resizable.
        input_layer: Inside a torch module, the dotted path of the submodule whose inputs
            resize ("0", "embed"); default the first `nn.Linear` or `nn.Embedding` (an
            Embedding's inputs are its rows).
        output_layer: Likewise for the outputs; default the last `nn.Linear`.
        fill: The bias of new output units (`attrs["fill"]`). New weights are 0, so a new unit
            outputs exactly `fill`. Before a softmax, -16 keeps old-class probabilities to
            float32 rounding (e^-16 < 1.2e-7) while the new class still learns; -1e4 gives it
            probability exactly 0 and then also a zero gradient: it never learns. 0 suits
            sigmoids.

    Returns:
        A model that takes and returns what `layer` does, with `attrs["resize_output"]` and
            `attrs["resize_input"]` as `(model, n) -> model` (spaCy's convention, which
            `TrainablePipe.add_label` calls). New input units get zero weights: old inputs give
            old outputs. Shrinking drops the last units.

    Raises:
        ValueError: `fill` is not a number, or nothing under `layer` can be resized (checked
            here, and again at `initialize` once a factory's module exists).
    """
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise ValueError(f"resizable({layer.name}): fill must be a number, got {fill!r}")
    model: Model[InT, OutT] = Layer(
        f"resizable({layer.name})",
        forward,
        init=init,
        layers=[layer],
        dims={name: layer.maybe_get_dim(name) for name in ("nI", "nO")},
        shims=[OptimizerState()],
        attrs={
            "resize_output": resize_output,
            "resize_input": resize_input,
            "input_layer": input_layer,
            "output_layer": output_layer,
            "fill": float(fill),
        },
    )
    check_resizable(model)  # nothing to resize: say so now, not at the first resize
    return model


forward = wrapper_forward  # the layer's own forward: resizing happens between calls


def init(model: Model[InT, OutT], X: Optional[InT] = None, Y: Optional[OutT] = None) -> None:
    layer = model.layers[0]
    layer.initialize(X, Y)
    for name in ("nI", "nO"):
        if layer.has_dim(name):
            model.set_dim(name, layer.get_dim(name), force=True)
    check_resizable(model)  # a factory's module exists now


def check_resizable(model: Model) -> None:
    """Raise ValueError unless `model` holds a layer that a resize can reach on some side."""
    errors = []
    for dim in ("nO", "nI"):
        try:
            target = find_target(model, dim)
            if is_torch_node(target) and built(target):
                path = model.attrs["input_layer" if dim == "nI" else "output_layer"]
                torch_layer(target, path, dim)
        except ValueError as err:
            errors.append(err)
    if len(errors) == 2:
        raise errors[0]


def resize_output(model: Model, n_out: int, *, fill: Optional[float] = None) -> Model:
    """Resize the output units of the one `resizable` layer in `model`.

    Args:
        model: A model holding exactly one `resizable` node.
        n_out: The new number of output units, an int >= 1.
        fill: The new units' bias; default the layer's `attrs["fill"]`.

    Returns:
        `model`, resized in place.

    Raises:
        ValueError: No or several resizable nodes, a bad size, or a layer after the output
            whose size depends on it.
    """
    return resize(model, "nO", n_out, fill)


def resize_input(model: Model, n_in: int) -> Model:
    """Resize the input units of the one `resizable` layer in `model`.

    Args:
        model: A model holding exactly one `resizable` node.
        n_in: The new number of input units, an int >= 1.

    Returns:
        `model`, resized in place.

    Raises:
        ValueError: As for `resize_output`, on the input side.
    """
    return resize(model, "nI", n_in, None)


def resize(model: Model, dim: str, size: int, fill: Optional[float]) -> Model:
    path = path_to_resizable(model)
    node = path[-1]
    check_size(node.name, f"new {dim}", size)
    target = find_target(node, dim)
    path += path_within(node, target)[1:]
    old = target.maybe_get_dim(dim)
    if built(target):
        # every shim on the path that keeps per-param state (optimizer state, averages) hears
        # of the resize: before it (to settle) and after it (to refit)
        hooks = [(other, s) for other in path for s in other.shims if isinstance(s, NodeShim)]
        for other, shim in hooks:
            shim.before_resize(other)
        old, changes = resize_target(node, target, dim, size, fill)
        for other, shim in hooks:
            shim.after_resize(other, target, changes)
    follow_dims(path, dim, old, size)
    write_dim(node, dim, size)
    return model


def resize_target(
    node: Model, target: Model, dim: str, size: int, fill: Optional[float]
) -> Tuple[Optional[int], Changes]:
    """Resize the built target; return its old size and what changed (nothing if same size)."""
    fill = node.attrs["fill"] if fill is None else fill
    if is_torch_node(target):
        path = node.attrs["input_layer" if dim == "nI" else "output_layer"]
        path, layer = torch_layer(target, path, dim)
        spec = check_torch_layer(target, path, layer, dim)
        old = torch_size(layer, spec)
        return old, [] if old == size else resize_torch(target, path, layer, spec, size, fill)
    old = target.get_param("W").shape[0 if dim == "nO" else -1]
    return old, [] if old == size else resize_weights(target, dim, size, fill)


def path_to_resizable(model: Model) -> List[Model]:
    """The nodes from `model` down to its one `resizable` node."""
    found = [node for node in model.walk() if is_resizable(node)]
    if is_resizable(model):
        found = [model]
    if len(found) != 1:
        what = "no resizable layer" if not found else f"{len(found)} resizable layers"
        raise ValueError(
            f"{model.name}: found {what}; resize_output/resize_input need exactly one "
            "(wrap the layer in resizable(), or call the resizable node's attrs['resize_output'])"
        )
    return path_within(model, found[0])


def find_target(node: Model, dim: str) -> Model:
    """The with_torch or W/b node to resize: the last (nO) or first (nI) under `node`."""
    nodes = list(node.layers[0].walk(order="dfs_pre"))
    candidates = [n for n in nodes if is_torch_node(n) or is_weights_node(n)]
    if not candidates:
        raise ValueError(f"{node.name}: no with_torch or Thinc W/b layer to resize")
    target = candidates[-1] if dim == "nO" else candidates[0]
    here = nodes.index(target)
    for other in nodes[here + 1 :] if dim == "nO" else nodes[:here]:
        # an averaged node's params are averages of the nodes under it: resized with them
        if other.param_names and not mirrors_params(other):
            where = "after the output" if dim == "nO" else "before the input"
            raise ValueError(
                f"{node.name}: cannot resize {target.name}: {other.name} comes {where} "
                "layer and has parameters that depend on its size"
            )
    return target


def follow_dims(path: List[Model], dim: str, old: Optional[int], size: int) -> None:
    """Set `dim` on the target and on each ancestor whose `dim` is the target's, going up
    while no layer after the child on the path (before it, for nI) sets `dim` of its own: a
    softmax_activation after the output layer keeps its width."""
    write_dim(path[-1], dim, size)
    for parent, child in zip(path[-2::-1], path[:0:-1]):
        value = parent.maybe_get_dim(dim)
        where = next(i for i, layer in enumerate(parent.layers) if layer is child)
        others = parent.layers[where + 1 :] if dim == "nO" else parent.layers[:where]
        if any(layer.maybe_get_dim(dim) is not None for layer in others):
            return
        if value not in (old, None):
            return
        if value is not None:  # an unset dim stays for the ancestor's own init to set
            write_dim(parent, dim, size)


def path_within(root: Model, node: Model) -> List[Model]:
    """The nodes from `root` down to `node` (depth first)."""
    if root is node:
        return [root]
    for layer in root.layers:
        if any(n is node for n in layer.walk()):
            return [root] + path_within(layer, node)
    raise ValueError(f"{node.name} is not inside {root.name}")


def built(node: Model) -> bool:
    if is_torch_node(node):
        return cast(TorchShim, node.shims[0]).module is not None
    return bool(node.has_param("W"))


def mirrors_params(node: Model) -> bool:
    """A node whose params track other nodes' params (an averaged node): they are refitted."""
    return any(isinstance(shim, NodeShim) and shim.mirrors_params for shim in node.shims)


def is_resizable(node: Model) -> bool:
    return any(isinstance(shim, OptimizerState) for shim in node.shims)
