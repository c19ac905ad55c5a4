"""averaged: an exponential moving average of a layer's parameters, swapped in for evaluation.

The averages are Thinc params of the averaged node, so msgpack serialization, `copy` and `to_gpu`
handle them: the average of param `name` of node `i` of `layer.walk()` is the param `"{i}/{name}"`
(e.g. `"1/0.weight"`, `"2/W"`); `attrs["average_steps"]` counts the updates. Thinc has no hook
after the optimizer, so `AverageShim.finish_update` (called before it) records which arrays the
optimizer is about to update in place, and `settle` folds those values in at the next look:
the next `finish_update`, `use_averages`, `to_bytes`, `copy` or `to_gpu`. A resize of a layer
under it refits the averages (`fit_averages`; A5). See docs/averaged.md.
"""

import contextlib
import json
from typing import Any, Dict, Iterator, List, Tuple, TypeVar, cast

import torch
from thinc.api import Model, Optimizer, registry

from ._checks import check_decay
from ._convert import to_tensor
from ._loading import Layer
from ._optimizer_state import refit_average
from ._thinc import NodeShim, drop_param, wrapper_forward, wrapper_init

InT = TypeVar("InT")
OutT = TypeVar("OutT")
FORMAT = "torchlayers.averaged/1"


@registry.layers("torchlayers.averaged.v1")
def averaged(layer: Model[InT, OutT], max_decay: float = 0.9999) -> Model[InT, OutT]:
    """Keep an exponential moving average (EMA) of every trained parameter under `layer`.

    After the t-th optimizer step (t = 1, 2, ...; `attrs["average_steps"]` holds it) with
    post-update weights w: the average is w at t = 1, then `avg -= (1 - d_t) * (avg - w)` with
    `d_t = min((1 + t) / (10 + t), max_decay)` -- Thinc's `ops.update_averages(avg, w, t)`,
    without the zero start. Averaged: every Thinc param under `layer` that has a gradient at the
    step (with_torch's torch parameters included; buffers such as BatchNorm statistics are not).

    Args:
        layer: Any Thinc model; its forward pass is used unchanged.
        max_decay: In [0, 1], kept in `attrs["max_decay"]`; the EMA spans about
            1 / (1 - max_decay) steps.

    Returns:
        A model that takes and returns what `layer` does. The averages are used only inside
            `with use_averages(model):`.

    Raises:
        ValueError: `max_decay` outside [0, 1].

    Step with `finish_update` on a model that contains this node (as `nlp.update` does): a
    step on `layer` alone is not averaged.
    """
    check_decay("averaged", max_decay)
    shim = AverageShim()
    model: Model[InT, OutT] = Layer(
        f"averaged({layer.name})",
        forward,
        init=init,
        layers=[layer],
        shims=[shim],
        dims={name: layer.maybe_get_dim(name) for name in layer.dim_names},
        attrs={"max_decay": max_decay, "average_steps": 0},
    )
    shim.bind(model)
    return model


forward = wrapper_forward  # run the layer
init = wrapper_init


@contextlib.contextmanager
def use_averages(model: Model) -> Iterator[Model]:
    """Swap the averages in for the live weights of every averaged node in `model`.

    Restores the very live arrays on exit, also when the block raises; nests. No copies: each
    parameter is re-pointed at its average (O(number of tensors)), so do not train inside the
    block. Where averaged nodes nest, the innermost average is the one used.

    Args:
        model: A model holding `averaged` nodes anywhere (a spaCy component's model, say).

    Returns:
        A context manager that yields `model`.
    """
    swaps: List[Tuple[Model, str, Any]] = []  # (node, param, live array), in the order made
    try:
        for node in model.walk():
            if is_averaged(node):
                settle(node)
                for target, name, average in averages(node):
                    swaps.append((target, name, target.get_param(name)))
                    target.set_param(name, average)
        follow_params(target for target, _, _ in swaps)
        yield model
    finally:
        for target, name, live in reversed(swaps):
            target.set_param(name, live)
        follow_params(target for target, _, _ in swaps)


def settle(model: Model) -> None:
    """Fold the pending update of averaged node `model` into its averages (a no-op if none)."""
    cast(AverageShim, model.shims[0]).bind(model)
    cast(AverageShim, model.shims[0]).settle()


def averages(model: Model) -> List[Tuple[Model, str, Any]]:
    """(node, param name, average) for each parameter that averaged node `model` averages."""
    found = []
    for key, node, name in averaged_params(model):
        average = model.get_param(key)
        if node.get_param(name).shape != average.shape:
            raise ValueError(
                f"{model.name}: the average of {node.name}'s '{name}' has shape "
                f"{average.shape}, the parameter {node.get_param(name).shape}"
            )
        found.append((node, name, average))
    return found


def fit_averages(model: Model) -> None:
    """Fit the averages of averaged node `model` to parameters that were resized (A5): kept
    units keep their average, new units start at their live value. `resize_output` and
    `resize_input` call it (after `settle`: the pending step has the old shapes); so does the
    next update, for a resize made where this node was out of sight."""
    for key, node, name in averaged_params(model):
        average, live = model.get_param(key), node.get_param(name)
        if average.shape != live.shape:
            fitted = refit_average(average, average.shape, live)
            model.set_param(key, live.copy() if fitted is None else fitted)


def averaged_params(model: Model) -> Iterator[Tuple[str, Model, str]]:
    """(average key, node, param name) for each average that averaged node `model` holds."""
    nodes = list(model.layers[0].walk())
    for key in model.param_names:
        if model.has_param(key):
            index, name = key.split("/", 1)
            yield key, nodes[int(index)], name


def is_averaged(node: Model) -> bool:
    return bool(node.shims) and isinstance(node.shims[0], AverageShim)


def follow_params(nodes: Iterator[Model]) -> None:
    """Tell the shims of nodes whose arrays were swapped (with_torch re-points torch)."""
    for node in {id(node): node for node in nodes}.values():
        for shim in node.shims:
            if isinstance(shim, NodeShim):
                shim.follow_params(node)


class AverageShim(NodeShim):
    """The averaged node's hook into `finish_update`, and the step that waits to be folded in."""

    mirrors_params = True  # a resize under it refits the averages (after_resize)

    def __init__(self) -> None:
        super().__init__(None)
        self.pending: List[Tuple[str, Any, bool]] = []  # (average key, live array, first time)
        self.pending_step = 0

    def finish_update(self, optimizer: Optimizer) -> None:
        # Thinc calls this before the optimizer: note the arrays it will update in place (Thinc's
        # optimizers write into the parameter's memory); their values are read at `settle`.
        node = self.node()
        if node is None:
            return
        self.settle()
        fit_averages(node)
        step = node.attrs["average_steps"] + 1
        node.attrs["average_steps"] = step  # now: to_dict writes attrs before it asks the shims
        for index, sub in enumerate(node.layers[0].walk()):
            for name in sub.param_names:
                if sub.has_grad(name) and sub.has_param(name):
                    key, live = f"{index}/{name}", sub.get_param(name)
                    first = not node.has_param(key)
                    if first:
                        node.set_param(key, live.copy())  # in place from here on: see copy()
                    self.pending.append((key, live, first))
        self.pending_step = step

    def settle(self) -> None:
        node = self.node()
        if node is None or not self.pending:
            return
        max_decay = node.attrs["max_decay"]
        check_decay(node.name, max_decay)
        t = self.pending_step
        weight = 1.0 - min((1.0 + t) / (10.0 + t), max_decay)
        averages, lives = [], []
        for key, live, first in self.pending:
            average = to_tensor(node.get_param(key))
            values = to_tensor(live)
            if values.device != average.device:  # to_gpu/to_cpu moved the averages already
                values = values.to(average.device)
            if first:
                average.copy_(values)
            else:
                averages.append(average)
                lives.append(values)
        if averages:
            torch._foreach_lerp_(averages, lives, weight)  # avg += (1 - d_t) * (w - avg)
        self.pending.clear()

    def to_device(self, device_type: str, device_id: int) -> None:
        self.settle()

    def to_bytes(self) -> bytes:
        self.settle()  # Thinc's to_dict asks the shims before it reads the params
        return json.dumps({"format": FORMAT}).encode("utf8")

    def from_bytes(self, data: bytes) -> "AverageShim":
        node = self.node()
        read_header(node.name if node is not None else "averaged", data)
        self.pending.clear()  # the loaded averages include every loaded step
        node = self.node()
        if node is not None and node.attrs["average_steps"] == 0:
            for key in list(node.param_names):  # saved before any update: no averages
                drop_param(node, key)
        return self

    def before_resize(self, node: Model) -> None:
        self.bind(node)
        self.settle()  # the pending step has the old shapes

    def after_resize(self, node: Model, target: Model, changes: List[Tuple[str, Any]]) -> None:
        fit_averages(node)  # A5: kept units keep their averages, new ones start live

    def check_saved(self, node: Model, data: Any, params: Dict[str, Any], verify: bool) -> None:
        read_header(node.name, data)
        nodes = list(node.layers[0].walk())
        for key in params:
            index, _, name = key.partition("/")
            target = nodes[int(index)] if index.isdigit() and int(index) < len(nodes) else None
            # an unbuilt with_torch node lists no params yet: it is built from the data
            if target is None or (target.param_names and name not in target.param_names):
                raise ValueError(
                    f"{node.name}: the data has an average {key!r} of no parameter here"
                )

    def snapshot(self, node: Model) -> Any:
        return list(self.pending), self.pending_step

    def restore(self, node: Model, saved: Any) -> None:
        self.pending, self.pending_step = list(saved[0]), saved[1]

    def copy(self) -> "AverageShim":
        # Model._copy took references to the node's arrays and deep-copies them after asking the
        # shims: folding in place now puts the pending step into both copies.
        self.settle()
        return AverageShim()


def read_header(layer: str, data: Any) -> None:
    try:
        header = json.loads(bytes(data))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{layer}: the data is not a saved averaged layer ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{layer}: unknown format in {header!r}, expected {FORMAT}")
