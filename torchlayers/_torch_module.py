"""What with_torch needs to know of a torch module: building it, its dims, its dropouts, its
device. No Thinc state here: functions of a module and a node.
"""

from typing import Callable, Optional

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
    """Read nI/nO from the first and last layers that say them (Linear, Embedding).

    force: overwrite dims already set (a factory may build another width than it was asked:
    chain's init hands every unset nO the output's width).
    """
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    if not layers:
        return
    first, last = layers[0], layers[-1]
    nI = first.in_features if isinstance(first, torch.nn.Linear) else first.num_embeddings
    nO = last.out_features if isinstance(last, torch.nn.Linear) else last.embedding_dim
    for name, value in (("nI", nI), ("nO", nO)):
        if force or model.maybe_get_dim(name) is None:
            model.set_dim(name, value, force=True)
