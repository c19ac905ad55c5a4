"""A learning-rate scale for one node's params under a single Thinc optimizer (T5).

Thinc's `Model.finish_update` calls `optimizer(key, param, grad)` for every param with a
gradient, with no per-key rate, but the optimizer itself takes `lr_scale` (Adam, RAdam and SGD
multiply their step by it). Scaling the gradient instead would not do: Adam divides the step by
the gradient's own scale. So a node placed after the target in the model (Thinc calls every
shim's `finish_update` before it steps any param, in breadth-first order: ancestors first, then
siblings in order) steps the target's params itself with `lr_scale`, and drops their gradients
so that Thinc's own loop skips them. (The node holds the target as its layer, shared with the
parent: Thinc's refs must point into a node's own subtree.) Optimizer keys, moments and
averages are those Thinc would use: `use_params(optimizer.averages)` still finds them.

With the scale 1.0 it does nothing: Thinc's loop steps the params as usual.
"""

import numbers
from typing import Any, Dict, Tuple

from thinc.api import Model, Optimizer

from .._loading import Layer
from .._thinc import NodeShim, drop_grad


def learn_rate_node(target: Model, scale: float) -> Model:
    """A node that steps `target`'s params at `scale` times the optimizer's rate. Its one layer
    is `target`, which its parent must also hold, earlier in its `layers`: a breadth-first
    walk then meets `target` (and its shim's `finish_update`: the loss scaler's overflow
    check) first. It is never called."""
    check_scale(target.name, scale)
    shim = ScaleShim()
    node: Model = Layer(
        f"learn_rate_scale({target.name})",
        never_called,
        init=lambda model, X=None, Y=None: None,
        layers=[target],  # shared with the parent, which lists it first
        shims=[shim],
        attrs={"learn_rate_scale": scale},
    )
    shim.bind(node)  # Layer._copy binds a copy's
    return node


def never_called(model: Model, X: Any, is_train: bool) -> Tuple[Any, Any]:
    raise ValueError(f"{model.name}: this node only scales an update; it takes no input")


def check_scale(layer: str, scale: Any) -> None:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not float(scale) >= 0:
        raise ValueError(f"{layer}: learn_rate_scale must be a number >= 0, got {scale!r}")


class ScaleShim(NodeShim):
    """The node's hook into `finish_update`: the target's step, at the scaled rate."""

    def __init__(self) -> None:
        super().__init__(None)

    def finish_update(self, optimizer: Optimizer) -> None:
        node = self.node()
        if node is None:
            return
        scale = node.attrs["learn_rate_scale"]
        check_scale(node.name, scale)  # attrs may be set directly
        if scale == 1.0:
            return
        target = node.layers[0]
        for name in target.param_names:
            if target.has_grad(name) and target.has_param(name):
                param, _ = optimizer(
                    (target.id, name),
                    target.get_param(name),
                    target.get_grad(name),
                    lr_scale=float(scale),
                )
                target.set_param(name, param)
                drop_grad(target, name)  # stepped: Thinc's loop must not step it again

    def copy(self) -> "ScaleShim":
        return ScaleShim()

    def to_device(self, device_type: str, device_id: int) -> None:
        pass

    def to_bytes(self) -> bytes:
        return b""

    def from_bytes(self, data: bytes) -> "ScaleShim":
        return self

    def check_saved(self, node: Model, data: Any, params: Dict[str, Any], verify: bool) -> None:
        if data != b"":
            raise ValueError(f"{node.name}: the data's learn-rate state is not empty")
