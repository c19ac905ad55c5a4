"""Reading a module's state_dict from its node, and checking and writing one into it.

Parameters are read from and written into the node's Thinc arrays (in place: torch's Parameters
view them); buffers are torch's own.
"""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from thinc.api import Model

from ._torch_nodes import built_module

StateDict = Mapping[str, torch.Tensor]


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
