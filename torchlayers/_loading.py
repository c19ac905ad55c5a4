"""Loading that checks before it writes: a torchlayers model refuses data that is not its own.

Thinc's `Model.from_dict` writes into each node (name, dims, attrs, params) as it walks, before
any hook of ours can look. So every combinator builds a `Layer`: a `Model` whose `to_dict` adds a
seal (a CRC-32 of each param and of the rest of the message) and whose `from_bytes`/`from_dict`
check the whole message against the model first (structure, node names, dims, attrs, param
names, shapes and dtypes, the seal, each shim's part), only then let Thinc apply it, and put the
model back as it was if anything still fails. Under a root that is not a `Layer` (a Thinc
`chain` of ours), Thinc loads node by node and each with_torch shim checks its own node.
"""

import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import numpy
import srsly
from thinc.api import Model
from thinc.model import deserialize_attr
from thinc.util import convert_recursive, is_xp_array

from ._checks import check_decay, check_rate
from ._convert import is_array
from ._saved import CHECKED, checksum, checksum_memo
from ._thinc import NodeShim, drop_param, write_dim

InT = TypeVar("InT")
OutT = TypeVar("OutT")
SelfT = TypeVar("SelfT", bound="Layer")

SECTIONS = ("nodes", "attrs", "params", "shims")
SEAL_KEY = "torchlayers"
SEAL_FORMAT = "torchlayers.seal/1"


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
        check_message(self, msg)  # on the host arrays, before any copy to a device
        msg = convert_recursive(is_xp_array, self.ops.asarray, msg)
        return self._apply(msg)

    def from_dict(self, msg: Dict) -> "Layer[InT, OutT]":
        check_message(self, msg)
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
        copied = super()._copy(seen)
        copied.__class__ = type(self)  # Thinc's _copy builds a plain Model; same slots
        return copied


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


# -- the seal ------------------------------------------------------------------------------


def seal(msg: Dict) -> Dict:
    """Checksums of every param and of the structure (nodes, attrs, shims) of a message."""
    return {
        "format": SEAL_FORMAT,
        "structure": structure_checksum(msg),
        "params": [
            {name: None if value is None else checksum(value) for name, value in params.items()}
            for params in msg["params"]
        ],
    }


def structure_checksum(msg: Dict) -> int:
    return zlib.crc32(srsly.msgpack_dumps(plain([msg[key] for key in SECTIONS if key != "params"])))


def plain(value: Any) -> Any:
    """The message as msgpack gives it back: lists for tuples, Python numbers for numpy's."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def check_seal(root: Model, msg: Dict, nodes: List[Model]) -> bool:
    """Verify the seal if the data has one (torchlayers 0.1.0 wrote none); say whether it did."""
    sealed = msg.get(SEAL_KEY)
    if sealed is None:
        return False
    if not isinstance(sealed, dict) or sealed.get("format") != SEAL_FORMAT:
        raise ValueError(f"{root.name}: the data's seal is not {SEAL_FORMAT}")
    if sealed.get("structure") != structure_checksum(msg):
        raise ValueError(f"{root.name}: the data is corrupt: its structure fails its checksum")
    expected = sealed.get("params")
    if not isinstance(expected, list) or len(expected) != len(nodes):
        raise ValueError(f"{root.name}: the data is corrupt: its seal lists no param checksums")
    for node, params, sums in zip(nodes, msg["params"], expected):
        for name, value in params.items():
            if value is not None and (
                not isinstance(sums, dict) or sums.get(name) != checksum(value)
            ):
                raise ValueError(
                    f"{root.name}: the data is corrupt: parameter '{name}' of {node.name} "
                    "fails its checksum (a damaged file?)"
                )
    return True


# -- checking a message against the model --------------------------------------------------


def check_message(root: Model, msg: Any) -> None:
    """Raise ValueError, naming `root`, unless `msg` is a saved model of `root`'s architecture."""
    nodes = list(root.walk())
    if not isinstance(msg, dict) or not all(
        isinstance(msg.get(key), list) and len(msg[key]) == len(nodes) for key in SECTIONS
    ):
        raise ValueError(
            f"{root.name}: the data is not a saved model of this architecture: expected a Thinc "
            f"message over {len(nodes)} nodes, got {describe_message(msg)}"
        )
    sealed = msg.get(SEAL_KEY) is not None  # checked after the nodes: their errors say more
    for index, node in enumerate(nodes):
        info, attrs, params, shims = (msg[key][index] for key in SECTIONS)
        if not all(
            isinstance(x, t)
            for x, t in ((info, dict), (attrs, dict), (params, dict), (shims, list))
        ):
            raise ValueError(f"{root.name}: node {index} of the data is not a Thinc node")
        if info.get("name") != node.name:
            raise ValueError(
                f"{root.name}: the data is of another architecture: node {index} is "
                f"{info.get('name')!r} there, {node.name!r} here"
            )
        if len(shims) != len(node.shims):
            raise ValueError(
                f"{root.name}: {node.name} has {len(node.shims)} shims, the data {len(shims)}"
            )
        check_params(root, node, params)
        check_dims(root, node, info.get("dims"))
        check_refs(root, node, info.get("refs"), len(nodes))
        if isinstance(node, Layer):
            check_attrs(root, node, attrs)
        for shim, data in zip(node.shims, shims):
            if isinstance(shim, NodeShim):
                shim.check_saved(node, data, params, verify=not sealed)
    check_seal(root, msg, nodes)


def describe_message(msg: Any) -> str:
    if isinstance(msg, dict):
        return f"a dict with keys {sorted(map(str, msg))[:6]}"
    return type(msg).__name__


def check_params(root: Model, node: Model, params: Dict) -> None:
    """Float arrays of the node's shapes; the node's own names where it declares them."""
    declared = not any(isinstance(shim, NodeShim) for shim in node.shims)  # shims check theirs
    if declared and set(params) != set(node.param_names):
        raise ValueError(
            f"{root.name}: {node.name} has parameters {sorted(node.param_names)}, the data "
            f"{sorted(params)}"
        )
    for name, value in params.items():
        if value is None:
            if node.has_param(name):
                raise ValueError(
                    f"{root.name}: the data was saved before initialize ({node.name}'s '{name}' "
                    "has no values); this model is initialized"
                )
            continue
        if not is_array(value) or value.dtype.kind != "f":
            raise ValueError(
                f"{root.name}: {node.name}'s '{name}' in the data is not a float array"
            )
        if node.has_param(name):
            current = node.get_param(name)
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"{root.name}: parameter '{name}' has shape {tuple(current.shape)} in "
                    f"{node.name} but {tuple(value.shape)} in the data"
                )
            if value.dtype != current.dtype:
                raise ValueError(
                    f"{root.name}: parameter '{name}' is {current.dtype} in {node.name} but "
                    f"{value.dtype} in the data"
                )


def check_dims(root: Model, node: Model, dims: Any) -> None:
    """Known dims of int values; a built node's dims do not change (as Thinc's set_dim)."""
    if not isinstance(dims, dict) or not set(dims) <= set(node.dim_names):
        raise ValueError(
            f"{root.name}: {node.name} has dims {list(node.dim_names)}, the data {dims!r}"
        )
    built = any(node.has_param(name) for name in node.param_names)
    for name, value in dims.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{root.name}: {node.name}'s dim {name} is {value!r} in the data")
        current = node.maybe_get_dim(name)
        if built and current is not None and current != value:
            raise ValueError(
                f"{root.name}: {node.name} has {name}={current}, the data {name}={value}"
            )


def check_refs(root: Model, node: Model, refs: Any, count: int) -> None:
    if not isinstance(refs, dict) or not set(refs) <= set(node.ref_names):
        raise ValueError(
            f"{root.name}: {node.name} has refs {list(node.ref_names)}, the data {refs!r}"
        )
    for name, index in refs.items():
        if index is not None and (not isinstance(index, int) or not 0 <= index < count):
            raise ValueError(f"{root.name}: {node.name}'s ref {name} is {index!r} in the data")


# Values a combinator's attrs may take: a bad one would fail at the next call, after the load.
ATTR_CHECKS: Dict[str, Callable[[str, Any], None]] = {
    "dropout_rate": lambda layer, v: None if v is None else check_rate(layer, v),
    "max_decay": check_decay,
    "average_steps": lambda layer, v: check_count(layer, "average_steps", v),
    "fill": lambda layer, v: check_number(layer, "fill", v),
    "dropout_mode": lambda layer, v: check_choice(
        layer, "dropout_mode", v, ("standard", "variational")
    ),
}


def check_attrs(root: Model, node: Model, attrs: Dict) -> None:
    """A torchlayers node's attrs: its own names, values of the same kind, in range."""
    for name, data in attrs.items():
        if name not in node.attrs:
            raise ValueError(f"{root.name}: {node.name} has no attr {name!r}, the data has")
        try:
            value = deserialize_attr(node.attrs[name], data, name, node)
        except Exception as err:
            raise ValueError(
                f"{root.name}: {node.name}'s attr {name!r} in the data: {err}"
            ) from err
        if not same_kind(node.attrs[name], value):
            raise ValueError(
                f"{root.name}: {node.name}'s attr {name!r} is {node.attrs[name]!r} here, "
                f"{value!r} in the data"
            )
        if name in ATTR_CHECKS:
            ATTR_CHECKS[name](f"{root.name}: {node.name}", value)


def same_kind(current: Any, loaded: Any) -> bool:
    if current is None or loaded is None:
        return True
    number = (int, float)
    if isinstance(current, bool) or isinstance(loaded, bool):
        return type(current) is type(loaded)
    if isinstance(current, number):
        return isinstance(loaded, number)
    return type(current) is type(loaded)


def check_count(layer: str, what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{layer}: {what} must be an int >= 0, got {value!r}")


def check_number(layer: str, what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{layer}: {what} must be a number, got {value!r}")


def check_choice(layer: str, what: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{layer}: {what} must be one of {choices}, got {value!r}")


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
