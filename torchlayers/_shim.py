"""TorchShim: the torch side of a `with_torch` node, and the hooks Thinc calls on it.

The shim holds the module and three parts, each the one owner of its state: `TensorLinks`
(torch parameters and grads viewing the node's Thinc arrays), `Modes` (train/eval flags) and a
`LossScaler` (mixed precision). It answers Thinc's shim hooks: `finish_update`, `use_params`,
`to_device`, `to_bytes`/`from_bytes` (buffers and a checked header), `copy`; and ours (loading
checks, following swapped params).
"""

import contextlib
import copy
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from thinc.api import Model, Optimizer
from thinc.model import deserialize_attr, serialize_attr

from ._links import TensorLinks
from ._modes import Modes
from ._precision import LossScaler
from ._torch_module import Factory
from ._torch_saving import TorchSaving


class TorchShim(TorchSaving):
    """Holds a torch module whose parameters alias the Thinc params of its node."""

    def __init__(
        self,
        module: Optional[torch.nn.Module],
        factory: Optional[Factory] = None,
        mixed_precision: bool = False,
    ) -> None:
        super().__init__(module, config={"mixed_precision": mixed_precision})
        self.factory = factory
        self.scaler = LossScaler()
        self._name: Optional[str] = None  # what a refused from_bytes puts back
        self._use(module)

    def _use(self, module: Optional[torch.nn.Module]) -> None:
        self._model = module
        self.links = TensorLinks(module)
        self.modes = Modes(module)
        self.update_autocast()

    def update_autocast(self) -> None:
        """Recomputed when the module or its device changes."""
        floats32 = self.links.dtype == torch.float32
        self.autocast = bool(self.cfg["mixed_precision"]) and floats32 and self.links.on_cuda

    @property
    def module(self) -> Optional[torch.nn.Module]:
        return self._model

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    @loss_scale.setter
    def loss_scale(self, value: float) -> None:
        self.scaler.scale = value

    def attach(self, node: Model, module: torch.nn.Module) -> None:
        """Make `module`'s parameters Thinc params of `node` (adopting ones `node` already has)."""
        self._node = node
        self._use(module)
        self.links.adopt(node)

    def bind(self, node: Model) -> None:
        super().bind(node)
        if self._name is None:
            self._name = node.name
        if self.links.params and all(node.has_param(name) for name in self.links.params):
            self.links.sync(node)  # a copy: link to its arrays now, so use_params can restore

    def sync(self, node: Model) -> None:
        self.links.sync(node)

    follow_params = sync  # NodeShim's hook: an ancestor swapped the node's arrays

    # -- hooks Thinc calls on every shim ---------------------------------------------------

    def finish_update(self, optimizer: Optimizer) -> None:
        # Thinc calls this before it runs the optimizer over the node's params, and Thinc's
        # Optimizer zeroes each gradient it applies: the next backward may start from None.
        self.links.grads_cleared = isinstance(optimizer, Optimizer)
        node = self.node()
        if node is None:
            return
        if self.links.dtype != torch.float32 and any(node.has_grad(n) for n in self.params):
            raise TypeError(
                f"{node.name}: the module is {self.links.dtype}; Thinc's optimizers update "
                "float32 parameters: train it as module.float() (float64 modules suit "
                "forward/backward checks)"
            )
        if self.autocast and self.scaler.step():
            self.links.drop_grads(node)  # overflowed: Model.finish_update skips these params

    @contextlib.contextmanager
    def use_params(self, params: Dict[Tuple[int, str], Any]) -> Iterator[None]:
        # Model.use_params has already swapped the node's arrays; point torch at them, and
        # put the live arrays back however the block ends (Thinc restores nothing on raise).
        node = self.node()
        if node is None:
            yield
            return
        live = dict(self.links.arrays)
        self.sync(node)
        try:
            yield
        finally:
            for name, array in live.items():
                if node.get_param(name) is not array:
                    node.set_param(name, array)
            self.sync(node)

    def to_device(self, device_type: str, device_id: int) -> None:
        if self._model is None:
            return
        self._model.to("cpu" if device_type == "cpu" else f"cuda:{device_id}")
        self.links.on_cuda = device_type != "cpu"
        self.update_autocast()
        self.links.relink(self.node())  # Thinc moved the arrays first: view the moved ones

    def copy(self) -> "TorchShim":
        # A new id and an independent module; the copy's node re-points it at its own arrays.
        # (Thinc's PyTorchShim deep-copies itself, id included: copies share Adam moments.)
        twin = TorchShim(copy.deepcopy(self._model), self.factory, self.cfg["mixed_precision"])
        twin.scaler = self.scaler.copy()
        twin._name = self._name
        return twin


class ShimLink:
    """`attrs["with_torch"]` of a with_torch node: its (de)serializers hand the node to its shim.

    Thinc calls a shim's `to_bytes`/`from_bytes` without the node; it does call attr
    (de)serializers with the node, before the shims. `Layer._copy` already introduces a copy's
    shims to their node; the link checks again at each save and load, and is part of the
    saved format.
    """

    def __deepcopy__(self, memo: Dict) -> "ShimLink":
        return ShimLink()


@serialize_attr.register(ShimLink)
def serialize_link(_: ShimLink, value: ShimLink, name: str, model: Model) -> bytes:
    bind_shims(model)
    return b""


@deserialize_attr.register(ShimLink)
def deserialize_link(_: ShimLink, value: bytes, name: str, model: Model) -> ShimLink:
    if value != b"":
        raise ValueError(f"{model.name}: attr 'with_torch' must be empty in the data")
    bind_shims(model)
    return _


def bind_shims(model: Model) -> None:
    for shim in model.shims:
        if isinstance(shim, TorchShim):
            shim.bind(model)
