"""Loading that checks before it writes: a torchlayers model refuses data that is not its own.

Thinc's `Model.from_dict` writes into each node (name, dims, attrs, params) as it walks, before
any hook of ours can look. So every combinator builds a `Layer`: a `Model` whose `to_dict` adds a
seal (a CRC-32 of each param and of the rest of the message) and whose `from_bytes`/`from_dict`
check the whole message against the model first (structure, node names, dims, attrs, param
names, shapes and dtypes, the seal, each shim's part), only then let Thinc apply it, and put the
model back as it was if anything still fails. Under a root that is not a `Layer` (a Thinc
`chain` of ours), Thinc loads node by node and each with_torch shim checks its own node.
"""

from typing import Dict, List, Optional, Tuple, TypeVar

import srsly
from thinc.api import Model
from thinc.util import convert_recursive, is_xp_array

from ._message import check_message
from ._saved import CHECKED, checksum_memo
from ._seal import SEAL_KEY, seal
from ._thinc import NodeShim, drop_param, write_dim

InT = TypeVar("InT")
OutT = TypeVar("OutT")
SelfT = TypeVar("SelfT", bound="Layer")


class Layer(Model[InT, OutT]):
    """A Thinc `Model` that checks what it loads; every torchlayers combinator returns one."""

    __slots__ = ()

    def to_dict(self) -> Dict:
        with checksum_memo():
            msg = super().to_dict()
            msg[SEAL_KEY] = seal(msg)
        return msg

    def from_bytes(self, bytes_data: bytes) -> "Layer[InT, OutT]":
        try:
            msg = srsly.msgpack_loads(bytes_data)
        except Exception as err:  # msgpack's own errors, or not bytes at all
            raise ValueError(
                f"{self.name}: the data is not a saved Thinc model ({type(err).__name__}: {err})"
            ) from err
        check_message(self, msg, is_layer)  # on the host arrays, before any copy to a device
        msg = convert_recursive(is_xp_array, self.ops.asarray, msg)
        return self._apply(msg)

    def from_dict(self, msg: Dict) -> "Layer[InT, OutT]":
        check_message(self, msg, is_layer)
        return self._apply(msg)

    def _apply(self, msg: Dict) -> "Layer[InT, OutT]":
        before = snapshot(self)
        token = CHECKED.set(True)
        try:
            super().from_dict(msg)
        except Exception as err:  # a module that does not fit what its factory built, ...
            restore(before)
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"{self.name}: could not load the data ({err})") from err
        finally:
            CHECKED.reset(token)
        return self

    def to_gpu(self, gpu_id: int) -> None:
        check_gpu(self.name)
        super().to_gpu(gpu_id)

    def _copy(self: SelfT, seen: Optional[Dict] = None) -> SelfT:
        seen = {} if seen is None else seen  # ours: it maps each node below to its copy
        copied = super()._copy(seen)
        copied.__class__ = type(self)  # Thinc's _copy builds a plain Model; same slots
        for shim in copied.shims:  # copied before Thinc built this node: introduce them
            if isinstance(shim, NodeShim):
                shim.bind(copied)
        # Thinc's _copy drops refs; a ref to a node below this one points to that node's copy
        # (torch_ner's "crf" ref, which get_loss runs and a resize grows).
        for name in self.ref_names:
            ref = self.maybe_get_ref(name)
            if ref is not None and id(ref) in seen:
                copied.set_ref(name, seen[id(ref)])
        return copied


def is_layer(node: Model) -> bool:
    return isinstance(node, Layer)


def check_gpu(layer: str) -> None:
    """Thinc keeps GPU params as cupy arrays: say what to install rather than fail inside."""
    try:
        import cupy  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"{layer}: to_gpu needs cupy (Thinc keeps GPU parameters as cupy arrays): install "
            "the cupy build for your CUDA, e.g. `pip install cupy-cuda12x`"
        ) from err
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{layer}: to_gpu needs a CUDA device, and torch sees none")


# -- putting a model back -------------------------------------------------------------------

State = List[Tuple[Model, str, Dict, Dict, Dict, List]]


def snapshot(root: Model) -> State:
    """What a load may change in each node: references, no copies of the params."""
    state: State = []
    for node in root.walk():
        params = {n: node.get_param(n) if node.has_param(n) else None for n in node.param_names}
        dims = {name: node.maybe_get_dim(name) for name in node.dim_names}
        shims = [s.snapshot(node) if isinstance(s, NodeShim) else None for s in node.shims]
        state.append((node, node.name, dims, dict(node.attrs), params, shims))
    return state


def restore(state: State) -> None:
    for node, name, dims, attrs, params, shims in state:
        node.name = name
        for dim, value in dims.items():
            write_dim(node, dim, value)
        node.attrs.clear()
        node.attrs.update(attrs)
        for param in list(node.param_names):
            if param not in params:
                drop_param(node, param)
        for param, value in params.items():
            node.set_param(param, value)
        for shim, saved in zip(node.shims, shims):
            if isinstance(shim, NodeShim):
                shim.restore(node, saved)
