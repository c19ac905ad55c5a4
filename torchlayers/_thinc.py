"""Every place torchlayers reaches past Thinc's public API, in one file (Thinc is pinned < 8.4).

Each function says why the public API does not do: read this file when Thinc changes.
"""

from typing import Any, Dict, List, Optional, Tuple

from thinc.api import Model
from thinc.backends import ParamServer
from thinc.shims.shim import Shim


class NodeShim(Shim):
    """A shim that knows its node. Thinc calls shims' hooks (`use_params`, `from_bytes`,
    `finish_update`) without the node; the node's forward/init and our own hooks `bind` it.
    A copy's shim is copied before Thinc builds the copy's node: `Layer._copy` binds it."""

    def __init__(self, model: Any = None, config: Optional[Dict] = None) -> None:
        super().__init__(model, config=config)
        self._node: Optional[Model] = None

    def bind(self, node: Model) -> None:
        self._node = node

    def node(self) -> Optional[Model]:
        """The node this shim belongs to, or None (a copy not yet run, a stale deepcopy)."""
        node = self._node
        return node if node is not None and any(s is self for s in node.shims) else None

    # Hooks a combinator calls on the shims of other nodes, so that no combinator imports
    # another: each shim that keeps state about params takes part by overriding them.

    mirrors_params = False  # the node's params track other nodes' params (averages)

    def follow_params(self, node: Model) -> None:
        """`node`'s param arrays were swapped (use_averages): follow them."""

    def before_resize(self, node: Model) -> None:
        """A layer under `node` is about to be resized."""

    def after_resize(self, node: Model, target: Model, changes: List[Tuple[str, Any]]) -> None:
        """`target` (under or at `node`) was resized: `changes` is [(param, old shape)]."""

    # Loading (torchlayers._loading): check a node's part of a message before Thinc applies
    # it, and put back what applying it changed if the load fails later.

    def check_saved(self, node: Model, data: Any, params: Dict[str, Any], verify: bool) -> None:
        """Raise ValueError unless `data` (this shim's saved bytes) and `params` (the node's
        saved params) fit. verify: compare checksums (the message had no seal)."""

    def snapshot(self, node: Model) -> Any:
        """What `restore` needs to undo a load of this shim."""
        return None

    def restore(self, node: Model, saved: Any) -> None:
        """Undo a load (the node's params, name and dims are restored already)."""


class WatchedParams(ParamServer):
    """A node's own ParamServer, made to tell a watcher whenever a param or gradient is set.

    Every swap of a node's arrays (an optimizer's step, `use_params`, `from_bytes`, `to_gpu`,
    a resize) goes through `ParamServer.set_param`, and every new gradient array through
    `set_grad` or `inc_grad`. with_torch's links test one flag per call instead of looking up
    each parameter and gradient: at batch 1 those lookups were a third of the fixed cost of a
    call (P11). The server's dicts and values stay as they were.
    """

    watcher: Any = None  # has param_set() and grad_set()

    # Each tells after the write: a sync that runs in between reads the new array.
    def set_param(self, model_id: int, name: str, value: Any) -> None:
        super().set_param(model_id, name, value)
        if self.watcher is not None:
            self.watcher.param_set()

    def set_grad(self, model_id: int, name: str, value: Any) -> None:
        super().set_grad(model_id, name, value)
        if self.watcher is not None:
            self.watcher.grad_set()

    def inc_grad(self, model_id: int, name: str, value: Any) -> None:
        super().inc_grad(model_id, name, value)
        if self.watcher is not None:
            self.watcher.grad_set()


def watch_params(node: Model, watcher: Any) -> bool:
    """Have `watcher.param_set()` called whenever one of `node`'s params is set, and
    `watcher.grad_set()` whenever a gradient is. False where the node's ParamServer is not
    Thinc's plain local one (a remote `proxy`): then the watcher cannot rely on being told and
    must check every call."""
    server = node._params
    if type(server) is ParamServer and server.proxy is None:
        server.__class__ = WatchedParams  # the same object: nothing that holds it is left behind
    if type(server) is not WatchedParams or server.proxy is not None:
        return False
    server.watcher = watcher
    return True


def drop_param(node: Model, name: str) -> None:
    """Forget a param name (one Thinc's from_dict added, or an average saved before any
    update). `set_param(name, None)` would keep the name listed."""
    node._has_params.pop(name, None)


def drop_grad(node: Model, name: str) -> None:
    """Forget a gradient, so Model.finish_update skips the param (an overflowed mixed-precision
    step). A zero gradient would still move Adam's moments; ParamServer has no delete."""
    node._params._grads.pop((node.id, name), None)


def write_dim(node: Model, name: str, value: int) -> None:
    """Change a dim of a node that has params. Thinc's set_dim refuses even with force=True
    (its own resize builds a new node); resizable resizes params and dims together, in place."""
    if name in node.dim_names:
        node._dims[name] = value


def wrapper_forward(model: Model, X: Any, is_train: bool) -> Tuple[Any, Any]:
    """Forward of a node that wraps one layer and adds no work of its own to a call
    (averaged, data_parallel, resizable): run the layer unchanged."""
    return model.layers[0](X, is_train)


def wrapper_init(model: Model, X: Any = None, Y: Any = None) -> None:
    """Init of such a node: initialize the layer, take its dims."""
    layer = model.layers[0]
    layer.initialize(X, Y)
    for name in layer.dim_names:
        if layer.has_dim(name):
            model.set_dim(name, layer.get_dim(name))
