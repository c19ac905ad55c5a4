"""TorchSaving: how a with_torch node's torch side saves, checks and loads (W6, W7).

The parameters travel as the node's Thinc params; this part of the shim writes the module's
buffers and a header with a CRC-32 per tensor (`_saved.py`), checks a message's part before
Thinc applies it, and undoes a refused load. `TorchShim` builds on it.
"""

from typing import Any, Dict, Optional

import torch
from thinc.api import Model

from ._links import TensorLinks
from ._saved import CHECKED, check_shape, check_state, dump_state, read_state, verify_checksums
from ._thinc import NodeShim, drop_param
from ._torch_module import Factory, build_module


class TorchSaving(NodeShim):
    """The saving and loading hooks of `TorchShim` (which sets these attributes)."""

    _model: Optional[torch.nn.Module]
    links: TensorLinks
    factory: Optional[Factory]
    _name: Optional[str]

    def _use(self, module: Optional[torch.nn.Module]) -> None:
        raise NotImplementedError

    def attach(self, node: Model, module: torch.nn.Module) -> None:
        raise NotImplementedError

    def sync(self, node: Model) -> None:
        raise NotImplementedError

    @property
    def params(self) -> Dict[str, torch.nn.Parameter]:
        return self.links.params

    def to_bytes(self) -> bytes:
        node = self.node()
        arrays = (
            {n: node.get_param(n) for n in self.params}
            if node is not None
            else {n: p.data for n, p in self.params.items()}
        )
        return dump_state(arrays, self.buffers(), built=self._model is not None)

    def from_bytes(self, data: bytes) -> "TorchSaving":
        node = self.node()
        if node is None:
            raise ValueError("with_torch: cannot load into a layer that was never attached")
        checked = CHECKED.get()  # a Layer root checked the whole message already
        before = self.snapshot(node)
        try:
            header, buffers = read_state(node.name, data)
            if not header.get("built", True):
                self.check_unbuilt(node, header, saved_values(node))
                return self
            if self._model is None:
                self.attach(node, build_module(node, self.factory))
            values = saved_values(node)
            check_state(node, self.params, self.buffers(), header, values, buffers, not checked)
        except ValueError:
            if not checked:  # under a Thinc root: undo what Thinc's from_dict wrote here
                self.revert(node)
                self.restore(node, before)
            raise
        own = self.buffers()
        with torch.no_grad():
            for name, tensor in buffers.items():
                own[name].copy_(tensor)
        self.sync(node)
        self._name = node.name
        return self

    def check_saved(self, node: Model, data: Any, params: Dict[str, Any], verify: bool) -> None:
        header, buffers = read_state(node.name, data)
        if not header.get("built", True):
            self.check_unbuilt(node, header, params)
            return
        missing = [name for name, value in params.items() if value is None]
        if set(header["params"]) != set(params) or missing:
            raise ValueError(
                f"{node.name}: the data's header lists parameters {sorted(header['params'])}, "
                f"its values {sorted(n for n in params if n not in missing)}"
            )
        for name, value in params.items():
            check_shape(node, name, tuple(header["params"][name]["shape"]), value.shape)
        if self._model is not None:
            check_state(node, self.params, self.buffers(), header, params, buffers, verify)
        elif verify:  # the module is built at load: its fit is checked then
            verify_checksums(node, header, params, buffers)
        if not verify:  # the seal covers the buffers too; this check names the one that broke
            verify_checksums(node, header, {}, buffers)

    def check_unbuilt(self, node: Model, header: Dict, params: Dict[str, Any]) -> None:
        """Data saved before initialize fits only a layer that is not built either."""
        if self._model is not None:
            raise ValueError(
                f"{node.name}: the data was saved before initialize; this layer is built"
            )
        if header["params"] or any(value is not None for value in params.values()):
            raise ValueError(f"{node.name}: the data says unbuilt but holds parameters")

    def snapshot(self, node: Model) -> Any:
        buffers = {name: tensor.detach().clone() for name, tensor in self.buffers().items()}
        return self._model, buffers

    def restore(self, node: Model, saved: Any) -> None:
        module, buffers = saved
        if self._model is not module:  # a load built the factory: unbuild it
            self._use(module)
            for name in list(node.param_names):
                drop_param(node, name)
        own = self.buffers()
        with torch.no_grad():
            for name, tensor in buffers.items():
                own[name].copy_(tensor)
        self.links.relink(node if module is not None else None)

    def revert(self, node: Model) -> None:
        """Put back the node's name and params that Thinc's from_dict overwrote."""
        if self._name is not None:
            node.name = self._name
        for name in list(node.param_names):
            if name in self.links.arrays:
                node.set_param(name, self.links.arrays[name])
            else:
                drop_param(node, name)  # a name Thinc's from_dict added

    def buffers(self) -> Dict[str, torch.Tensor]:
        """The module's persistent buffers (those `state_dict` saves), by name."""
        if self._model is None:
            return {}
        state = self._model.state_dict(keep_vars=True)
        return {name: tensor for name, tensor in state.items() if name not in self.params}


def saved_values(node: Model) -> Dict[str, Any]:
    return {name: node.get_param(name) for name in node.param_names if node.has_param(name)}
