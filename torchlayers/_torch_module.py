"""What with_torch needs to know of a torch module: building it, its dims, its dropouts, its
device. No Thinc state here: functions of a module and a node.
"""

from typing import Callable, Optional, Tuple

import torch
from thinc.api import Model

Factory = Callable[[Optional[int], Optional[int]], torch.nn.Module]


def build_module(node: Model, factory: Optional[Factory]) -> torch.nn.Module:
    """Call the user's factory with the node's dims."""
    if factory is None:
        raise ValueError(f"{node.name}: no module and no factory to build one")
    module = factory(node.maybe_get_dim("nI"), node.maybe_get_dim("nO"))
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{node.name}: the factory returned {type(module).__name__}, not a Module")
    return module


def check_device(model: Model, module: torch.nn.Module) -> None:
    """A CUDA module needs cupy: Thinc keeps CUDA params as cupy arrays."""
    if any(p.is_cuda for p in module.parameters()):
        try:
            import cupy  # noqa: F401
        except ImportError as err:
            raise ValueError(
                f"{model.name}: the module is on CUDA, and Thinc keeps CUDA parameters as cupy "
                "arrays: install the cupy build for your CUDA (e.g. cupy-cuda12x), or pass the "
                "module on the CPU and call model.to_gpu() after"
            ) from err


def set_dims_from_module(model: Model, module: torch.nn.Module, force: bool = False) -> None:
    """Read nI/nO from the module: its own int attributes `nI`/`nO` where it has them (a
    module whose first layer is no Linear, such as an LSTM stack, can say its widths so),
    else the first and last layers that say them (Linear, Embedding).

    force: overwrite dims already set (a factory may build another width than it was asked:
    chain's init hands every unset nO the output's width).
    """
    dims = dict(zip(("nI", "nO"), layer_dims(module)))
    dims.update({name: getattr(module, name) for name in dims if declared(module, name)})
    for name, value in dims.items():
        if value is not None and (force or model.maybe_get_dim(name) is None):
            model.set_dim(name, value, force=True)


def layer_dims(module: torch.nn.Module) -> Tuple[Optional[int], Optional[int]]:
    """The input width of the first Linear/Embedding, the output width of the last."""
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    if not layers:
        return None, None
    first, last = layers[0], layers[-1]
    nI = first.in_features if isinstance(first, torch.nn.Linear) else first.num_embeddings
    nO = last.out_features if isinstance(last, torch.nn.Linear) else last.embedding_dim
    return nI, nO


def declared(module: torch.nn.Module, name: str) -> bool:
    value = getattr(module, name, None)
    return isinstance(value, int) and not isinstance(value, bool)
