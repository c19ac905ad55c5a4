"""Every place torchlayers reaches past Thinc's public API, in one file (Thinc is pinned < 8.4).

Each function says why the public API does not do: read this file when Thinc changes.
"""

from typing import Any, Dict, List, Optional, Tuple

from thinc.api import Model
from thinc.shims.shim import Shim


class NodeShim(Shim):
    """A shim that knows its node. Thinc calls shims' hooks (`use_params`, `from_bytes`,
    `finish_update`) without the node; the node's forward/init and our own hooks `bind` it.
    A copy's shim starts unbound: Thinc builds the copy's node after copying the shims."""

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


def param_store(node: Model) -> Tuple[Optional[Dict[Tuple[int, str], Any]], int]:
    """The node's ParamServer dict, for the per-call check in with_torch's `sync` (None: use
    get_param). `Model.get_param` validates the name through two calls per param; the dict
    lookup is a fraction of that, and the check runs on every call (P2's budget on a small MLP
    is a few microseconds). A remote ParamServer (`proxy`) keeps the public path."""
    server = node._params
    return (None if server.proxy is not None else server._params), node.id


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
    """Forward of a node that wraps one layer and keeps a NodeShim (averaged, data_parallel):
    bind the shim (a copy's shim learns its node here), then run the layer unchanged."""
    for shim in model.shims:
        if isinstance(shim, NodeShim):
            shim.bind(model)
    return model.layers[0](X, is_train)


def wrapper_init(model: Model, X: Any = None, Y: Any = None) -> None:
    """Init of such a node: bind, initialize the layer, take its dims."""
    for shim in model.shims:
        if isinstance(shim, NodeShim):
            shim.bind(model)
    layer = model.layers[0]
    layer.initialize(X, Y)
    for name in layer.dim_names:
        if layer.has_dim(name):
            model.set_dim(name, layer.get_dim(name))
