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
pipeline's component (spaCy is imported only by that command).
"""

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple, Union, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from thinc.api import Model

from ._shim import TorchShim
from .averaged import use_averages

StateDict = Mapping[str, torch.Tensor]
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


def main(argv: List[str]) -> int:
    """`python -m torchlayers export PIPELINE_DIR COMPONENT OUT [--averaged] [--name NAME]`."""
    parser = argparse.ArgumentParser(
        prog="python -m torchlayers export",
        description="Write the torch weights of a saved spaCy pipeline's component as a "
        "safetensors file that plain PyTorch loads with module.load_state_dict.",
    )
    parser.add_argument("pipeline", type=Path, help="a directory saved by nlp.to_disk")
    parser.add_argument("component", help="the component's name in the pipeline, e.g. textcat")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--name", help="only this torch layer (a path or a node name)")
    parser.add_argument(
        "--averaged", action="store_true", help="the averaged (use_averages) weights"
    )
    parser.add_argument("--code", type=Path, help="a Python file to import first (your functions)")
    args = parser.parse_args(argv)
    import spacy  # only this command needs spaCy

    if args.code is not None:
        spacy.util.import_file("functions", args.code)
    nlp = spacy.load(args.pipeline)
    model = cast(Any, nlp.get_pipe(args.component)).model
    keys = save_safetensors(model, args.out, name=args.name, averaged=args.averaged)
    nodes = chosen_nodes(model, args.name)
    for (prefix, node), path in zip(prefixed(nodes), nodes):
        module = type(built_module(node)).__name__
        keys_are = f"'{prefix}' + its state_dict keys" if prefix else "its state_dict keys"
        print(f"{path or '(root)'}: {node.name}, a {module}; keys: {keys_are}")
    print(f"wrote {len(keys)} tensors to {args.out}")
    return 0


# -- finding the nodes --------------------------------------------------------------------------


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


# -- reading and writing the weights ------------------------------------------------------------


def module_tensors(node: Model) -> Dict[str, torch.Tensor]:
    """The module's `state_dict(keep_vars=True)`: its Parameters and persistent buffers."""
    return dict(built_module(node).state_dict(keep_vars=True))


def owners(node: Model) -> Dict[int, str]:
    """id(Parameter) -> the node's Thinc param name for it (tied weights share one)."""
    return {id(param): name for name, param in built_module(node).named_parameters()}


def module_state(node: Model) -> Dict[str, torch.Tensor]:
    """The module's state_dict on the CPU, each tensor its own copy; parameters are read from
    the node's Thinc params, which the torch parameters view (and `use_averages` swaps)."""
    params = owners(node)
    state = {}
    for key, tensor in module_tensors(node).items():
        owner = params.get(id(tensor))
        if owner is not None and node.has_param(owner):
            value = torch.from_numpy(node.ops.to_numpy(node.get_param(owner)))
        else:
            value = tensor.detach()
        state[key] = value.to("cpu", copy=True).contiguous()
    return state


def read_source(model: Model, source: Union[str, Path, StateDict]) -> Dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state = dict(source)
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{model.name}: expected torch tensors, got {type(value).__name__} for {key!r}"
                )
        return state
    try:
        return load_file(str(source))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{model.name}: cannot read {str(source)!r} as safetensors: {err}"
        ) from err


def check_state(
    node: Model,
    prefix: str,
    own: Dict[str, torch.Tensor],
    given: Dict[str, torch.Tensor],
    strict: bool,
) -> None:
    """Refuse, naming the layer and the key, unless `given` fits the module's state_dict."""
    missing = [key for key in own if key not in given]
    unexpected = [key for key in given if key not in own]
    if strict and (missing or unexpected):
        raise ValueError(
            f"{node.name}: the keys do not match its state_dict: missing "
            f"{shorten([prefix + k for k in missing])}, unexpected "
            f"{shorten([prefix + k for k in unexpected])}"
        )
    for key, value in given.items():
        if key not in own:
            continue
        target = own[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{node.name}: '{prefix}{key}' has shape {tuple(value.shape)}, the module's "
                f"has {tuple(target.shape)}"
            )
        if value.dtype != target.dtype:
            raise ValueError(
                f"{node.name}: '{prefix}{key}' is {value.dtype}, the module's is {target.dtype}"
            )


def write_state(node: Model, own: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor]) -> None:
    """Copy into the node's Thinc param arrays (in place: torch's Parameters view them, and
    the optimizer's state stays keyed to them) and into the module's buffers."""
    params = owners(node)
    for key, value in given.items():
        if key not in own:
            continue
        owner = params.get(id(own[key]))
        if owner is not None and node.has_param(owner):
            array: Any = node.get_param(owner)
            array[...] = node.ops.xp.asarray(value.detach().cpu().numpy())
        else:
            with torch.no_grad():
                own[key].copy_(value)


def shorten(keys: List[str], limit: int = 6) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"[{shown}{more}]"
