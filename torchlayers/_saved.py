"""How a with_torch node's torch side is saved: no pickle anywhere.

The parameters travel as the node's Thinc params (Thinc's msgpack). The shim adds the module's
persistent buffers (BatchNorm statistics...) as safetensors, with a header in its metadata that
names each parameter's shape, so a load can be checked before anything is kept.
"""

import json
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from thinc.api import Model

FORMAT = "torchlayers.with_torch/1"


def dump_state(params: Dict[str, torch.nn.Parameter], buffers: Dict[str, torch.Tensor]) -> bytes:
    """The buffers as safetensors; the parameters' names and shapes in its metadata."""
    header = {"format": FORMAT, "params": {name: list(p.shape) for name, p in params.items()}}
    tensors = {name: t.detach().cpu().contiguous() for name, t in buffers.items()}
    return save_safetensors(tensors, metadata={"torchlayers": json.dumps(header)})


def read_state(layer: str, data: bytes) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """Parse what `dump_state` wrote; ValueError naming `layer` if the bytes are not that."""
    try:
        buffers = load_safetensors(bytes(data))
        # the metadata: safetensors' documented layout is an 8-byte length, then JSON
        size = int.from_bytes(bytes(data[:8]), "little")
        metadata = json.loads(bytes(data[8 : 8 + size]))["__metadata__"]
        header = json.loads(metadata["torchlayers"])
    except Exception as err:  # safetensors, json and key errors alike: the bytes are not ours
        raise ValueError(f"{layer}: the data is not a saved with_torch layer ({err})") from err
    if header.get("format") != FORMAT:
        raise ValueError(f"{layer}: unknown format {header.get('format')!r}, expected {FORMAT}")
    return header, buffers


def check_state(
    node: Model,
    params: Dict[str, torch.nn.Parameter],
    own: Dict[str, torch.Tensor],
    header: Dict,
    buffers: Dict[str, torch.Tensor],
) -> None:
    """Raise ValueError unless the node's loaded params and the loaded buffers fit the module
    (`params`, `own`): the same names, the same shapes."""
    saved = set(header["params"])
    expected = set(params)
    if saved != expected:
        raise ValueError(
            f"{node.name}: the data has parameters {sorted(saved)}, the module {sorted(expected)}"
        )
    for name, param in params.items():
        check_shape(node, name, tuple(param.shape), node.get_param(name).shape)
    if set(buffers) != set(own):
        raise ValueError(
            f"{node.name}: the data has buffers {sorted(buffers)}, the module {sorted(own)}"
        )
    for name, tensor in buffers.items():
        check_shape(node, name, tuple(own[name].shape), tuple(tensor.shape))


def check_shape(node: Model, name: str, expected: Tuple[int, ...], got: Any) -> None:
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"{node.name}: parameter '{name}' has shape {tuple(expected)} in the module "
            f"but {tuple(got)} in the data"
        )
