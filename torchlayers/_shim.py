"""TorchShim: the torch side of a `with_torch` node.

Thinc owns the parameters: each torch parameter is a Thinc param of the node, and the torch
`Parameter` is re-pointed (`param.data = view`) at that very array, so the optimizer, `use_params`,
averages, serialization and `copy` all work through Thinc's own machinery, and torch sees the
result without a copy. The shim holds the module, keeps the two sides pointing at the same memory,
and answers the hooks Thinc calls on shims: `finish_update`, `use_params`, `to_device`,
`to_bytes`/`from_bytes` (buffers and a shape header), `copy`.
"""

import contextlib
import copy
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from thinc.api import Model, Optimizer
from thinc.model import deserialize_attr, serialize_attr

from ._convert import to_array, to_tensor
from ._saved import check_shape, check_state, dump_state, read_state
from ._thinc import NodeShim, drop_param, param_store

Factory = Callable[[Optional[int], Optional[int]], torch.nn.Module]


class TorchShim(NodeShim):
    """Holds a torch module whose parameters alias the Thinc params of its node."""

    def __init__(
        self,
        module: Optional[torch.nn.Module],
        factory: Optional[Factory] = None,
        mixed_precision: bool = False,
    ):
        super().__init__(module, config={"mixed_precision": mixed_precision})
        self.factory = factory
        self._name: Optional[str] = None
        self.dtype = torch.float32
        self._link_module(module)
        self.loss_scale = 2.0**16
        self._good_steps = 0

    def _reset_links(self) -> None:
        # name -> Parameter, and the Thinc arrays each Parameter / .grad currently views.
        self.params: Dict[str, torch.nn.Parameter] = {}
        self.param_arrays: Dict[str, Any] = {}
        # name -> (the node's Thinc gradient, the .grad tensor that views it)
        self.grad_links: Dict[str, Tuple[Any, torch.Tensor]] = {}
        self.overflowed = False  # mixed precision: a gradient since the last update was inf/nan
        self.grads_cleared = False  # an optimizer zeroed every grad since the last backward
        self._flag_holders: List[Dict[str, Any]] = []

    @property
    def module(self) -> Optional[torch.nn.Module]:
        return self._model

    # -- linking the two sides -------------------------------------------------------------

    def attach(self, node: Model, module: torch.nn.Module) -> None:
        """Make `module`'s parameters Thinc params of `node` (adopting ones `node` already has)."""
        self._node = node
        self._link_module(module)
        for name, param in self.params.items():
            check_dtype(node, name, param)
            if node.has_param(name):
                check_shape(node, name, tuple(param.shape), node.get_param(name).shape)
            else:
                data = param.data if param.data.is_contiguous() else param.data.contiguous()
                node.set_param(name, to_array(data))
        self.sync(node)

    def bind(self, node: Model) -> None:
        super().bind(node)
        if self._name is None:
            self._name = node.name  # what a refused from_bytes puts back

    def sync(self, node: Model) -> None:
        """Point each torch parameter at its node's current Thinc array, where that changed.

        Thinc swaps arrays in `use_params`, `from_bytes`, `to_gpu` and `copy`; this is the one
        place the torch side follows. Cost: one identity check per parameter.
        """
        self._node = node
        arrays, node_id = param_store(node)
        for name, param in self.params.items():
            array = arrays[(node_id, name)] if arrays is not None else node.get_param(name)
            linked = self.param_arrays.get(name)
            if array is linked or same_memory(array, linked):
                continue
            check_shape(node, name, tuple(param.shape), array.shape)
            param.data = to_tensor(array)
            self.param_arrays[name] = array

    def prepare_grads(self, node: Model, separate: bool = False) -> Dict[str, Any]:
        """Before a backward pass: each `.grad` views the node's Thinc gradient, so torch adds
        into it in place. After an optimizer step the grads are all zero: start from None, as
        `zero_grad(set_to_none=True)` does, and adopt what torch allocates.

        separate: start every `.grad` from None and return the gradients to add back after
        (loss scaling must unscale this pass's gradients alone).
        """
        kept: Dict[str, Any] = {}
        # On a GPU a fresh .grad costs a conversion per param, dearer than the one kernel that
        # adds into the zeroed one. On the CPU the add is the dearer part.
        fresh = self.grads_cleared and not self.on_cuda
        for name, param in self.params.items():
            if fresh or not node.has_grad(name):
                param.grad = None
            elif separate:
                kept[name] = node.get_grad(name)
                param.grad = None
            else:
                grad = node.get_grad(name)
                linked = self.grad_links.get(name)
                if linked is None or linked[0] is not grad or param.grad is not linked[1]:
                    tensor = to_tensor(grad)
                    param.grad = tensor
                    self.grad_links[name] = (grad, tensor)
        self.grads_cleared = False
        return kept

    def collect_grads(self, node: Model, kept: Dict[str, Any]) -> None:
        """After a backward pass: make every new `.grad` torch allocated the node's gradient."""
        links = self.grad_links
        for name, param in self.params.items():
            grad = param.grad
            if grad is None or (name in links and grad is links[name][1]):
                continue
            array = to_array(grad)
            if name in kept:
                array += kept[name]
            node.set_grad(name, array)
            links[name] = (array, grad)

    def set_training(self, training: bool) -> Optional[List[bool]]:
        """Set every submodule's `training` flag; return the old flags, or None if none changed.

        Writes the flag straight into each submodule's `__dict__`: `nn.Module.train()` goes
        through `__setattr__` and costs microseconds per submodule (SPEC, P2).
        """
        holders = self._flag_holders
        before = [holder["training"] for holder in holders]
        if before.count(training) == len(before):
            return None
        for holder in holders:
            holder["training"] = training
        return before

    def restore_training(self, before: Optional[List[bool]]) -> None:
        if before is not None:
            for holder, flag in zip(self._flag_holders, before):
                holder["training"] = flag

    # -- hooks Thinc calls on every shim ---------------------------------------------------

    def finish_update(self, optimizer: Optimizer) -> None:
        # Thinc calls this before it runs the optimizer over the node's params, and Thinc's
        # Optimizer zeroes each gradient it applies: the next backward may start from None.
        self.grads_cleared = isinstance(optimizer, Optimizer)
        node = self.node()
        if node is not None and self.autocast:
            from ._precision import update_loss_scale

            update_loss_scale(self, node)

    @contextlib.contextmanager
    def use_params(self, params: Dict[Tuple[int, str], Any]) -> Iterator[None]:
        # Model.use_params has already swapped the node's arrays; point torch at them, and
        # put the live arrays back however the block ends (Thinc restores nothing on raise).
        node = self.node()
        if node is None:
            yield
            return
        live = dict(self.param_arrays)
        self.sync(node)
        try:
            yield
        finally:
            for name, array in live.items():
                if node.get_param(name) is not array:
                    node.set_param(name, array)
            self.sync(node)

    def to_device(self, device_type: str, device_id: int) -> None:
        node = self.node()
        if self._model is None:
            return
        device = "cpu" if device_type == "cpu" else f"cuda:{device_id}"
        self._model.to(device)
        self._update_autocast()
        self.param_arrays.clear()  # Thinc moved the arrays first: re-point at the moved ones
        self.grad_links.clear()
        if node is not None:
            self.sync(node)

    def to_bytes(self) -> bytes:
        return dump_state(self.params, self._buffers())

    def from_bytes(self, data: bytes) -> "TorchShim":
        node = self.node()
        if node is None:
            raise ValueError("with_torch: cannot load into a layer that was never attached")
        try:
            header, buffers = read_state(node.name, data)
            if self._model is None:
                self.attach(node, build_module(node, self.factory))
            check_state(node, self.params, self._buffers(), header, buffers)
        except ValueError:
            self._revert(node)
            raise
        own = self._buffers()
        with torch.no_grad():
            for name, tensor in buffers.items():
                own[name].copy_(tensor)
        self.sync(node)
        self._name = node.name
        return self

    def copy(self) -> "TorchShim":
        # A new id and an independent module; the copy's node re-points it at its own arrays.
        # (Thinc's PyTorchShim deep-copies itself, id included: copies share Adam moments.)
        twin = TorchShim(copy.deepcopy(self._model), self.factory, self.cfg["mixed_precision"])
        twin.loss_scale, twin._good_steps = self.loss_scale, self._good_steps
        twin._name = self._name
        return twin

    # -- helpers ---------------------------------------------------------------------------

    def _link_module(self, module: Optional[torch.nn.Module]) -> None:
        self._model = module
        self._reset_links()
        if module is not None:
            self.params = dict(module.named_parameters())
            self._flag_holders = [sub.__dict__ for sub in module.modules()]
            floats = [p.dtype for p in self.params.values() if p.is_floating_point()]
            self.dtype = floats[0] if floats else torch.float32
        self._update_autocast()

    def _update_autocast(self) -> None:
        from ._precision import use_scaling

        # recomputed when the module or its device changes
        self.on_cuda = any(p.is_cuda for p in self.params.values())
        self.autocast = use_scaling(self)

    def _buffers(self) -> Dict[str, torch.Tensor]:
        """The module's persistent buffers (those `state_dict` saves), by name."""
        if self._model is None:
            return {}
        state = self._model.state_dict(keep_vars=True)
        return {name: tensor for name, tensor in state.items() if name not in self.params}

    def _revert(self, node: Model) -> None:
        """Undo what Thinc's `from_dict` wrote into the node before this hook could check it."""
        if self._name is not None:
            node.name = self._name
        for name in list(node.param_names):
            if name in self.param_arrays:
                node.set_param(name, self.param_arrays[name])
            else:
                drop_param(node, name)  # a foreign name Thinc's from_dict added


class ShimLink:
    """`attrs["with_torch"]` of a with_torch node: its (de)serializers hand the node to its shim.

    Thinc calls a shim's `from_bytes` without the node, and a copied node's shim has never met
    it. Thinc does call attr deserializers with the node, before the shims: that is the hook.
    """

    def __deepcopy__(self, memo: Dict) -> "ShimLink":
        return ShimLink()


@serialize_attr.register(ShimLink)
def serialize_link(_: ShimLink, value: ShimLink, name: str, model: Model) -> bytes:
    return b""


@deserialize_attr.register(ShimLink)
def deserialize_link(_: ShimLink, value: bytes, name: str, model: Model) -> ShimLink:
    for shim in model.shims:
        if isinstance(shim, TorchShim):
            shim.bind(model)
    return _


def same_memory(array: Any, linked: Any) -> bool:
    """`array` is a full view of `linked` (Thinc's optimizers return reshaped views)."""
    if linked is None or array.base is not linked:
        return False
    return bool(array.shape == linked.shape and array.strides == linked.strides)


def build_module(node: Model, factory: Optional[Factory]) -> torch.nn.Module:
    """Call the user's factory with the node's dims."""
    if factory is None:
        raise ValueError(f"{node.name}: no module and no factory to build one")
    module = factory(node.maybe_get_dim("nI"), node.maybe_get_dim("nO"))
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{node.name}: the factory returned {type(module).__name__}, not a Module")
    return module


def check_dtype(node: Model, name: str, param: torch.Tensor) -> None:
    if param.dtype not in (torch.float32, torch.float64, torch.float16):
        raise TypeError(
            f"{node.name}: parameter '{name}' is {param.dtype}; Thinc keeps parameters as "
            "numpy/cupy arrays, so keep the module in float32 (mixed_precision=True for speed)"
        )
