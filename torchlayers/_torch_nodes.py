"""Finding the `with_torch` nodes of a model by path, and their built torch modules.

A module is known by its *path*: the indices of `model.layers` from the root down to its node,
joined by "/" (`"0/3/0"`); a model that is itself a `with_torch` node has the path `""`.
"""

from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from thinc.api import Model

from ._shim import TorchShim


def root_model(model: Any) -> Model:
    """`model`, or the `.model` of a spaCy component."""
    if isinstance(model, Model):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, Model):
        return inner
    raise TypeError(f"expected a Thinc Model or a spaCy component, got {type(model).__name__}")


def torch_nodes(model: Model) -> Dict[str, Model]:
    """`{path: node}` for each `with_torch` node under `model`, depth first; shared nodes once."""
    found: Dict[str, Model] = {}
    seen = set()

    def visit(node: Model, path: Tuple[int, ...]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if node.shims and isinstance(node.shims[0], TorchShim):
            found["/".join(map(str, path))] = node
        for i, child in enumerate(node.layers):
            visit(child, (*path, i))

    visit(model, ())
    return found


def select_node(model: Model, name: Optional[str]) -> Tuple[str, Model]:
    """The one `with_torch` node that `name` (a path or a node name) picks out."""
    nodes = torch_nodes(model)
    if name is None:
        matches = list(nodes.items())
    elif name in nodes:
        matches = [(name, nodes[name])]
    else:
        matches = [(path, node) for path, node in nodes.items() if node.name == name]
    if len(matches) != 1:
        what = "with_torch layer" if name is None else f"with_torch layer named {name!r}"
        raise ValueError(
            f"{model.name}: expected one {what}, found {len(matches)}; the with_torch layers "
            f"are {describe_nodes(nodes)} (pass a path or a node name)"
        )
    return matches[0]


def chosen_nodes(model: Model, name: Optional[str]) -> Dict[str, Model]:
    """The nodes to save or load: the one `name` picks, or all; at least one."""
    if name is not None:
        path, node = select_node(model, name)
        return {path: node}
    nodes = torch_nodes(model)
    if not nodes:
        raise ValueError(f"{model.name}: no with_torch layer in the model")
    return nodes


def prefixed(nodes: Dict[str, Model]) -> Iterator[Tuple[str, Model]]:
    """(key prefix, node): none for a single node, else the node's path and a dot."""
    for path, node in nodes.items():
        yield ("" if len(nodes) == 1 else f"{path}."), node


def describe_nodes(nodes: Dict[str, Model]) -> str:
    return ", ".join(f"{path!r}: {node.name}" for path, node in nodes.items()) or "none"


def shim_of(node: Model) -> TorchShim:
    return node.shims[0]  # type: ignore[return-value]


def built_module(node: Model) -> torch.nn.Module:
    module = shim_of(node).module
    if module is None:
        raise ValueError(
            f"{node.name}: the torch module is built by its factory at initialize(); "
            "call model.initialize() (or nlp.initialize()) first"
        )
    return module
