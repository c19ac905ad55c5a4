"""OptimizerState: carries a resized layer's optimizer state over to its new shapes.

Thinc's optimizers keep state per param key `(node.id, name)`: `mom1`/`mom2` as flat arrays of
`weights.size`, `averages` in the weight's shape. A resize keeps the node (so the keys), but the
shapes change, and the next `optimizer(key, weights, grad)` would fail on the old state. The
`resizable` node owns this shim; Thinc calls `finish_update(optimizer)` on every shim before it
runs the optimizer over the params, which is where pending state is moved. `refit_average`
also fits the averages of an `averaged` node to a resized param (A5).
"""

from typing import Any, Dict, List, Optional, Tuple

from thinc.api import Model, Optimizer, get_array_module

from ._thinc import NodeShim

Key = Tuple[int, str]
Shape = Tuple[int, ...]


class OptimizerState(NodeShim):
    """Moves optimizer state of resized params: kept units keep theirs, new units start fresh.

    New units get zero moments and, for `averages`, their live value (0 weights, `fill` bias):
    with a zero average a new class's bias would average to 0, not `fill`, and
    `use_params(optimizer.averages)` would change the old classes' probabilities.
    """

    def __init__(self) -> None:
        super().__init__(None)
        self.pending: List[Tuple[Key, Shape, Any]] = []  # (key, old shape, new param array)

    def after_resize(self, node: Model, target: Model, changes: List[Tuple[str, Any]]) -> None:
        if any(shim is self for shim in node.shims):  # the resizable node's own state
            for name, old_shape in changes:
                self.record((target.id, name), old_shape, target.get_param(name))

    def record(self, key: Key, old_shape: Shape, new: Any) -> None:
        """A param was resized: move the state of the last optimizer seen now (so
        `use_params(optimizer.averages)` works at once), and any other at its next update."""
        self.pending.append((key, old_shape, new))
        if self._optimizer is not None:
            migrate(self._optimizer, key, old_shape, new)

    def finish_update(self, optimizer: Optimizer) -> None:
        if optimizer is not self._optimizer:
            for key, old_shape, new in self.pending:
                migrate(optimizer, key, old_shape, new)
        self.pending.clear()
        self._optimizer = optimizer  # spaCy's add_label resizes with no optimizer in reach

    def copy(self) -> "OptimizerState":
        return OptimizerState()  # a copy's nodes have new ids: no state of ours applies

    def to_device(self, device_type: str, device_id: int) -> None:
        pass

    def to_bytes(self) -> bytes:
        return b""

    def from_bytes(self, data: bytes) -> "OptimizerState":
        return self

    def check_saved(self, node: Model, data: Any, params: Dict[str, Any], verify: bool) -> None:
        if data != b"":
            raise ValueError(f"{node.name}: the data's resizable state is not empty")


def migrate(optimizer: Any, key: Key, old_shape: Shape, new: Any) -> None:
    """Fit `optimizer`'s state for `key` from `old_shape` to `new.shape`, keeping the overlap."""
    new_shape = tuple(new.shape)
    for moments in (getattr(optimizer, "mom1", None), getattr(optimizer, "mom2", None)):
        flat = moments.get(key) if moments is not None else None
        if flat is not None:
            zeros = get_array_module(flat).zeros(new_shape, dtype=flat.dtype)
            moved = refit(flat, old_shape, zeros)
            store(moments, key, None if moved is None else moved.ravel(), flat.size, new.size)
    averages = getattr(optimizer, "averages", None)
    average = averages.get(key) if averages is not None else None
    if average is not None:
        store(averages, key, refit_average(average, old_shape, new), average.size, new.size)


def refit_average(average: Any, old_shape: Shape, new: Any) -> Optional[Any]:
    """`average` (of a param of `old_shape`) fitted to the resized param `new`: kept units keep
    their average, new units start at their value in `new`; None if the shapes do not fit."""
    if len(old_shape) != new.ndim:
        return None
    live = get_array_module(new).asarray(new, dtype=average.dtype).copy()
    return refit(average.ravel(), old_shape, live)


def refit(flat: Any, old_shape: Shape, out: Any) -> Optional[Any]:
    """Copy the overlap of `flat` (seen in `old_shape`) into `out`; None if sizes disagree."""
    size = 1
    for n in old_shape:
        size *= n
    if flat.size != size:
        return None
    old = flat.reshape(old_shape)
    keep = tuple(slice(0, min(a, b)) for a, b in zip(old_shape, out.shape))
    out[keep] = old[keep]
    return out


def store(state: Any, key: Key, moved: Optional[Any], size: int, new_size: int) -> None:
    """Keep the moved state; drop state that fits neither shape (the optimizer starts afresh)."""
    if moved is not None:
        state[key] = moved
    elif size != new_size:
        del state[key]
