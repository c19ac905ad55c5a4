"""Whether a Thinc message is a saved model of a given architecture: every check that runs
before Thinc's `from_dict` writes anything (names, dims, refs, attrs, params, shims, seal).
"""

from typing import Any, Callable, Dict, Tuple

from thinc.api import Model
from thinc.model import deserialize_attr

from ._checks import check_decay, check_rate
from ._convert import is_array
from ._seal import SEAL_KEY, SECTIONS, check_seal
from ._thinc import NodeShim


def check_message(root: Model, msg: Any, own_attrs: Callable[[Model], bool]) -> None:
    """Raise ValueError, naming `root`, unless `msg` is a saved model of `root`'s architecture.

    own_attrs: which nodes' attrs to check (torchlayers' own; Thinc's accept anything).
    """
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
        if own_attrs(node):
            check_attrs(root, node, attrs)
        for shim, data in zip(node.shims, shims):
            if isinstance(shim, NodeShim):
                try:
                    shim.check_saved(node, data, params, verify=not sealed)
                except ValueError as err:  # name the model being loaded, not only the node
                    if node is root:
                        raise
                    raise ValueError(f"{root.name}: {err}") from err
    check_seal(root, msg, nodes)


def describe_message(msg: Any) -> str:
    if isinstance(msg, dict) and isinstance(msg.get("nodes"), list):
        return f"one over {len(msg['nodes'])} nodes"
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
