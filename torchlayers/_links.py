"""TensorLinks: each torch parameter views its node's Thinc array, each `.grad` its Thinc gradient.

Thinc owns the parameters: each torch `Parameter` is re-pointed (`param.data = view`) at the
node's array, so Thinc's optimizer, `use_params`, averages, serialization and `copy` work through
Thinc's own machinery and torch sees the result without a copy. Thinc swaps arrays (use_params,
from_bytes, to_gpu, copy); `sync` is the one place torch follows.
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
from thinc.api import Model

from ._convert import to_array, to_tensor
from ._saved import check_shape
from ._thinc import drop_grad, watch_params


class TensorLinks:
    """The links between one module's parameters and the Thinc params and grads of its node."""

    def __init__(self, module: Optional[torch.nn.Module]) -> None:
        self.params: Dict[str, torch.nn.Parameter] = (
            dict(module.named_parameters()) if module is not None else {}
        )
        self.arrays: Dict[str, Any] = {}  # name -> the Thinc array its Parameter views now
        self.grads: Dict[str, Tuple[Any, torch.Tensor]] = {}  # name -> (Thinc grad, its .grad)
        self.grads_cleared = False  # an optimizer zeroed every grad since the last backward
        self.stale = True  # the node may hold arrays the parameters do not view: sync
        self.watched = False  # the node's ParamServer calls param_set/grad_set
        # Each parameter with the `.grad` tensor that views its Thinc gradient, once every one
        # does; `grads_stale` is set whenever Thinc sets one of the node's gradients.
        self.linked_grads: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.grads_stale = True
        floats = [p.dtype for p in self.params.values() if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32
        self.on_cuda = any(p.is_cuda for p in self.params.values())

    def adopt(self, node: Model) -> None:
        """Make the parameters Thinc params of `node`, keeping the arrays `node` already has."""
        for name, param in self.params.items():
            check_dtype(node, name, param)
            if node.has_param(name):
                check_shape(node, name, tuple(param.shape), node.get_param(name).shape)
            else:
                data = param.data if param.data.is_contiguous() else param.data.contiguous()
                node.set_param(name, to_array(data))
        self.sync(node)

    def sync(self, node: Model) -> None:
        """Point each torch parameter at its node's current array, where that changed. Callers
        on the hot path test `stale` first: it is set whenever Thinc sets one of the node's
        params, so a call that finds it False has nothing to do."""
        self.stale = False  # before the reads: a set_param that races this one marks it again
        for name, param in self.params.items():
            array = node.get_param(name)
            linked = self.arrays.get(name)
            if array is linked or same_memory(array, linked):
                continue  # a view of the linked array (Thinc's optimizers return reshaped ones)
            check_shape(node, name, tuple(param.shape), array.shape)
            param.data = to_tensor(array)
            self.arrays[name] = array
        self.watched = watch_params(node, self)
        if not self.watched:
            self.stale = True  # a remote ParamServer: check on every call

    # What the node's ParamServer calls when Thinc (or anyone) sets one of its arrays.

    def param_set(self) -> None:
        self.stale = True

    def grad_set(self) -> None:
        self.grads_stale = True
        self.grads_cleared = False  # a gradient set after an optimizer step is not zero

    def relink(self, node: Optional[Model]) -> None:
        """Forget every link (the arrays moved to another device) and link anew."""
        self.arrays.clear()
        self.grads.clear()
        self.stale = self.grads_stale = True
        if node is not None:
            self.sync(node)

    def prepare_grads(self, node: Model, separate: bool = False) -> Dict[str, Any]:
        """Before a backward pass: each `.grad` views the node's Thinc gradient, so torch adds
        into it in place. After an optimizer step the grads are all zero: start from None, as
        `zero_grad(set_to_none=True)` does, and adopt what torch allocates.

        separate: start every `.grad` from None and return the gradients to add back after
        (loss scaling must unscale this pass's gradients alone).
        """
        kept: Dict[str, Any] = {}
        if not (self.grads_cleared or self.grads_stale or separate):
            for param, tensor in self.linked_grads:
                if param.grad is not tensor:  # torch code reset it (zero_grad, `.grad = None`)
                    break
            else:
                return kept  # nothing changed since the last backward: torch adds in place
        # On a GPU a fresh .grad costs a conversion per param, dearer than the one kernel that
        # adds into the zeroed one. On the CPU the add is the dearer part. (Unwatched, a
        # gradient set since the step would go unseen: add into what the node holds.)
        fresh = self.grads_cleared and self.watched and not self.on_cuda
        for name, param in self.params.items():
            if fresh or not node.has_grad(name):
                param.grad = None
            elif separate:
                kept[name] = node.get_grad(name)
                param.grad = None
            else:
                grad = node.get_grad(name)
                linked = self.grads.get(name)
                if linked is None or linked[0] is not grad or param.grad is not linked[1]:
                    tensor = to_tensor(grad)
                    param.grad = tensor
                    self.grads[name] = (grad, tensor)
        self.grads_cleared = False
        self.grads_stale = True  # collect_grads checks the links again
        return kept

    def collect_grads(self, node: Model, kept: Dict[str, Any]) -> None:
        """After a backward pass: make every new `.grad` torch allocated the node's gradient."""
        links = self.grads
        for name, param in self.params.items():
            grad = param.grad
            if grad is None or (name in links and grad is links[name][1]):
                continue
            array = to_array(grad)
            if name in kept:
                array += kept[name]
            node.set_grad(name, array)
            links[name] = (array, grad)
        if self.grads_stale:
            self.linked_grads = [
                (param, links[name][1])
                for name, param in self.params.items()
                if name in links and param.grad is links[name][1]
            ]
            # unwatched (a remote ParamServer): check every call
            self.grads_stale = not self.watched or len(self.linked_grads) != len(self.params)

    def drop_grads(self, node: Model) -> None:
        """Forget every gradient, so Thinc's finish_update skips the params (an overflow)."""
        for name, param in self.params.items():
            param.grad = None
            drop_grad(node, name)
        self.grads.clear()
        self.grads_stale = True


def same_memory(array: Any, linked: Any) -> bool:
    """`array` is a full view of `linked` (Thinc's optimizers return reshaped views)."""
    if linked is None or array.base is not linked:
        return False
    return bool(array.shape == linked.shape and array.strides == linked.strides)


def check_dtype(node: Model, name: str, param: torch.Tensor) -> None:
    """float32 modules train; float64 ones run forward and backward (gradient checks)."""
    if param.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{node.name}: parameter '{name}' is {param.dtype}; Thinc keeps parameters as "
            "float32 numpy/cupy arrays: keep the module in float32 (module.float()) and pass "
            "mixed_precision=True for float16 compute on CUDA"
        )
