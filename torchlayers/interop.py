"""The torch modules inside a Thinc model, and their weights in and out as safetensors files.

A `with_torch` node holds a plain `torch.nn.Module` whose parameters are the node's Thinc params
(same memory). This module finds those nodes in a composed model (or a spaCy component's model),
writes their weights as a safetensors file that plain PyTorch loads with
`module.load_state_dict(safetensors.torch.load_file(path))`, and loads such a file (or any
torch `state_dict`) back into them, checking every name, shape and dtype before it writes.

Each torch module is known by its *path*: the indices of `model.layers` from the root down to
its node, joined by "/" (e.g. `"0/3/0"`: `model.layers[0].layers[3].layers[0]`). A model that
is itself a `with_torch` node has the path `""`. The same architecture gives the same paths.

The command `python -m torchlayers export PIPELINE_DIR COMPONENT OUT` exports a saved spaCy
pipeline's component (`torchlayers.spacy.export`).
"""

import contextlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
from safetensors.torch import save_file
from thinc.api import Model

from ._state_dicts import (
    StateDict,
    check_state,
    module_state,
    module_tensors,
    read_source,
    shorten,
    write_state,
)
from ._torch_nodes import (
    built_module,
    chosen_nodes,
    prefixed,
    root_model,
    select_node,
    shim_of,
    torch_nodes,
)
from .averaged import use_averages

METADATA_KEY = "torchlayers.modules"  # safetensors metadata: {path: node name}, as JSON


def torch_modules(model: Any) -> Dict[str, torch.nn.Module]:
    """Return the torch module of every `with_torch` node in `model`, by path.

    Args:
        model: a Thinc model (a single `with_torch` layer or any composition), or a spaCy
            component, whose `.model` is used.

    Returns:
        `{path: module}` in the order of a depth-first walk, where the path is the indices of
        `model.layers` from the root to the node, joined by "/" (`""` for the root itself).
        The modules are the very ones the layers run: their parameters share memory with the
        nodes' Thinc params. A layer built by a factory is missing until `initialize`.
    """
    return {
        path: module
        for path, node in torch_nodes(root_model(model)).items()
        if (module := shim_of(node).module) is not None
    }


def torch_module(model: Any, name: Optional[str] = None) -> torch.nn.Module:
    """Return the torch module of one `with_torch` node in `model`.

    Args:
        model: a Thinc model or a spaCy component (its `.model` is used).
        name: which node: a path as in `torch_modules` (`"0/3/0"`), or a node name
            (`"with_torch(Linear)"`, which must then be unique). `None`: the model must hold
            exactly one `with_torch` node.

    Returns:
        The module the layer runs and trains (not a copy): its parameters are the node's
        Thinc params, so what Thinc's optimizer does shows in it, and in-place changes to its
        weights show in the layer.

    Raises:
        ValueError: no node, or several, match `name` (the message lists the candidates), or
            the node's module is built by a factory and `initialize` has not run yet.
    """
    path, node = select_node(root_model(model), name)
    return built_module(node)


def save_safetensors(
    model: Any,
    path: Union[str, Path],
    *,
    name: Optional[str] = None,
    averaged: bool = False,
) -> List[str]:
    """Write the weights of the torch modules in `model` as a safetensors file.

    One module (`name` given, or the only `with_torch` node in `model`): the keys are exactly
    its `state_dict()` keys, so plain PyTorch loads the file with
    `module.load_state_dict(safetensors.torch.load_file(path))`, without Thinc or torchlayers.
    Several modules: each key is the module's path, a dot, then the `state_dict()` key
    (`"0/3/0.0.weight"`); the file's metadata maps each path to its node's name.

    Args:
        model: a Thinc model or a spaCy component (its `.model` is used).
        path: the file to write.
        name: export only this node (a path or a node name, as in `torch_module`).
        averaged: write the moving averages of `torchlayers.averaged` (what `use_averages`
            swaps in) instead of the live weights. The model must contain an `averaged` node.

    Returns:
        The keys written, in order.

    Raises:
        ValueError: no module to export, `name` matches no node or several, a module is not
            built yet (call `initialize` first), or `averaged=True` without an averaged node.
    """
    root = root_model(model)
    nodes = chosen_nodes(root, name)
    if averaged and not any("max_decay" in node.attrs for node in root.walk()):
        raise ValueError(f"{root.name}: averaged=True, but the model has no averaged(...) layer")
    with use_averages(root) if averaged else contextlib.nullcontext():
        state: Dict[str, torch.Tensor] = {}
        for prefix, node in prefixed(nodes):
            for key, tensor in module_state(node).items():
                state[prefix + key] = tensor
    metadata = {METADATA_KEY: json.dumps({p: n.name for p, n in nodes.items()})}
    save_file(state, str(path), metadata=metadata)
    return list(state)


def load_safetensors(
    model: Any,
    source: Union[str, Path, StateDict],
    *,
    name: Optional[str] = None,
    strict: bool = True,
) -> None:
    """Load torch weights into the `with_torch` nodes of `model`: all checked, then written.

    The file (or `state_dict`) has the layout `save_safetensors` writes: plain `state_dict()`
    keys for one module (`name` given, or the only `with_torch` node), path-prefixed keys for
    several. A plain PyTorch `state_dict` saved with `safetensors.torch.save_file` loads into
    the matching layer as it is.

    The values are copied into the nodes' existing Thinc param arrays (and into the torch
    buffers), so the optimizer, `use_params`, `averaged` and serialization go on with them.
    Nothing is written unless every key, shape and dtype matches. Load the live weights,
    outside `use_averages`; an `averaged` node's averages are not touched (they restart from
    the live weights only when the averaged layer is new).

    Args:
        model: a Thinc model or a spaCy component (its `.model` is used).
        source: a safetensors file, or a mapping of names to tensors (a `state_dict`).
        name: load only into this node (a path or a node name, as in `torch_module`).
        strict: every key the modules expect must be there and no other. `False`: keys
            missing from `source` keep their values and unknown keys are ignored; the keys
            present must still match in shape and dtype.

    Raises:
        ValueError: the file cannot be read; a module is not built yet (a layer made from a
            factory is built at `initialize`: call it first, then load); a key is missing or
            unexpected (strict); or a shape or dtype differs. The message names the layer,
            the key, and what was expected and given. The model is then unchanged.
    """
    root = root_model(model)
    nodes = chosen_nodes(root, name)
    state = read_source(root, source)
    plan: List[Tuple[Model, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]] = []
    used: Set[str] = set()
    for prefix, node in prefixed(nodes):
        own = module_tensors(node)
        given = {
            key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)
        }
        used.update(prefix + key for key in given)
        check_state(node, prefix, own, given, strict)
        plan.append((node, own, given))
    unknown = sorted(set(state) - used)
    if strict and unknown:
        raise ValueError(
            f"{root.name}: unexpected keys {shorten(unknown)}; the modules are at paths "
            f"{sorted(nodes)} (keys: path + '.' + state_dict key when there are several)"
        )
    for node, own, given in plan:
        write_state(node, own, given)
