"""Mixed precision on CUDA: autocast forward, loss scaling, skip an update that overflowed (W8).

torch's GradScaler wraps a torch optimizer; here Thinc's optimizer does the step, so the scaler's
three jobs are done by hand: scale dY, unscale the gradients before the step, skip and back off
when they are not finite, grow the scale after a run of good steps.
"""

from typing import TYPE_CHECKING, Any, List

import torch
from thinc.api import Model

from ._convert import map_arrays
from ._thinc import drop_grad

if TYPE_CHECKING:
    from ._shim import TorchShim

GROWTH_INTERVAL = 2000  # torch.amp.GradScaler's defaults
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5


def use_scaling(shim: "TorchShim") -> bool:
    """Mixed precision is on, the module is float32 and lives on a CUDA device."""
    return bool(shim.cfg["mixed_precision"]) and shim.dtype == torch.float32 and shim.on_cuda


def run_autocast(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
    """Call the module under float16 autocast; hand Thinc float32 outputs."""
    with torch.autocast("cuda", dtype=torch.float16):
        outputs = module(*args, **kwargs)
    return map_arrays(lambda y: y.float() if y.dtype == torch.float16 else y, outputs)


def scaled_backward(
    shim: "TorchShim", outputs: List[torch.Tensor], grads: List[torch.Tensor], inputs: List[Any]
) -> None:
    """Backward from dY * scale, then unscale this pass's gradients (params and inputs) in place
    and note whether any was inf/nan. Thinc only ever sees unscaled float32 gradients."""
    torch.autograd.backward(outputs, [grad * shim.loss_scale for grad in grads])
    params = [p.grad for p in shim.params.values() if p.grad is not None]
    leaves = [x.grad for x in inputs if x is not None and x.grad is not None]
    tensors = params + leaves
    if not tensors:
        return
    found_inf = torch.zeros(1, device=tensors[0].device)
    inv_scale = torch.full((1,), 1.0 / shim.loss_scale, device=tensors[0].device)
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale)
    if found_inf.item():
        shim.overflowed = True


def update_loss_scale(shim: "TorchShim", node: Model) -> None:
    """At finish_update: skip the update if a gradient overflowed (and halve the scale), else
    count a good step (and double the scale after GROWTH_INTERVAL of them)."""
    if shim.overflowed:
        shim.overflowed = False
        shim.loss_scale *= BACKOFF_FACTOR
        shim._good_steps = 0
        for name, param in shim.params.items():
            param.grad = None
            drop_grad(node, name)  # no update for this param: Model.finish_update skips it
        shim.grad_links.clear()
        return
    shim._good_steps += 1
    if shim._good_steps >= GROWTH_INTERVAL:
        shim.loss_scale *= GROWTH_FACTOR
        shim._good_steps = 0
