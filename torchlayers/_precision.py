"""Mixed precision on CUDA: autocast forward, loss scaling, skip an update that overflowed (W8).

torch's GradScaler wraps a torch optimizer; here Thinc's optimizer does the step, so the scaler's
three jobs are done by hand: scale dY, unscale the gradients before the step, skip and back off
when they are not finite, grow the scale after a run of good steps. `LossScaler` owns that state;
the with_torch shim holds one.
"""

from typing import Any, List

import torch

from ._convert import map_arrays

GROWTH_INTERVAL = 2000  # torch.amp.GradScaler's defaults
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5


def run_autocast(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
    """Call the module under float16 autocast; hand Thinc float32 outputs."""
    with torch.autocast("cuda", dtype=torch.float16):
        outputs = module(*args, **kwargs)
    return map_arrays(lambda y: y.float() if y.dtype == torch.float16 else y, outputs)


class LossScaler:
    """The loss scale, the good steps since it last changed, and whether a pass overflowed."""

    def __init__(self, scale: float = 2.0**16) -> None:
        self.scale = scale
        self.good_steps = 0
        self.overflowed = False  # a gradient since the last update was inf/nan

    def backward(
        self, outputs: List[torch.Tensor], grads: List[torch.Tensor], tensors: List[Any]
    ) -> None:
        """Backward from dY * scale, then unscale in place this pass's gradients of `tensors`
        (parameters and inputs whose `.grad` started empty) and note any inf/nan."""
        torch.autograd.backward(outputs, [grad * self.scale for grad in grads])
        found = [t.grad for t in tensors if t is not None and t.grad is not None]
        if not found:
            return
        found_inf = torch.zeros(1, device=found[0].device)
        inv_scale = torch.full((1,), 1.0 / self.scale, device=found[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(found, found_inf, inv_scale)
        if found_inf.item():
            self.overflowed = True

    def step(self) -> bool:
        """At an optimizer step: True if it must be skipped (a gradient overflowed; the scale
        halves), else count a good step (the scale doubles after GROWTH_INTERVAL of them)."""
        if self.overflowed:
            self.overflowed = False
            self.scale *= BACKOFF_FACTOR
            self.good_steps = 0
            return True
        self.good_steps += 1
        if self.good_steps >= GROWTH_INTERVAL:
            self.scale *= GROWTH_FACTOR
            self.good_steps = 0
        return False

    def copy(self) -> "LossScaler":
        twin = LossScaler(self.scale)
        twin.good_steps = self.good_steps
        return twin
