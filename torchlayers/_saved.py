"""How a with_torch node's torch side is saved: no pickle anywhere.

The parameters travel as the node's Thinc params (Thinc's msgpack). The shim adds the module's
persistent buffers (BatchNorm statistics...) as safetensors, with a header in its metadata that
names each parameter's shape and CRC-32 and each buffer's CRC-32, so a load can be checked,
flipped bytes included, before anything is kept. Neither safetensors nor torch checksum tensors.
"""

import json
import zlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from thinc.api import Model

FORMAT = "torchlayers.with_torch/2"
OLD_FORMAT = "torchlayers.with_torch/1"  # shapes only, no checksums (torchlayers 0.1.0)

# True while a Layer applies a message it has checked whole: shims skip their own checks
CHECKED: ContextVar[bool] = ContextVar("CHECKED", default=False)
# id(array) -> CRC-32 while one to_dict runs: the seal and the shim header share the work
_MEMO: ContextVar[Optional[Dict[int, Tuple[Any, int]]]] = ContextVar("_MEMO", default=None)


def checksum(array: Any) -> int:
    """CRC-32 of an array's little-endian bytes (numpy, cupy or a CPU tensor)."""
    memo = _MEMO.get()
    if memo is not None and id(array) in memo and memo[id(array)][0] is array:
        return memo[id(array)][1]
    if isinstance(array, torch.Tensor):
        host = array.detach().cpu().contiguous().numpy()
    else:
        host = array.get() if hasattr(array, "get") else numpy.asarray(array)  # cupy: to host
    host = numpy.ascontiguousarray(host, dtype=host.dtype.newbyteorder("<"))
    value = zlib.crc32(host.data.cast("B")) if host.size else 0
    if memo is not None:
        memo[id(array)] = (array, value)  # keep the array: its id stays its own
    return value


@contextmanager
def checksum_memo() -> Iterator[None]:
    """Compute each array's checksum once inside the block."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def dump_state(
    params: Dict[str, Any], buffers: Dict[str, torch.Tensor], built: bool = True
) -> bytes:
    """The buffers as safetensors; the parameters' names, shapes and checksums in its metadata.

    params: name -> the node's Thinc array. built: False for a factory not built yet.
    """
    header = {
        "format": FORMAT,
        "built": built,
        "params": {
            name: {"shape": list(a.shape), "crc32": checksum(a)} for name, a in params.items()
        },
        "buffers": {name: {"crc32": checksum(t)} for name, t in buffers.items()},
    }
    tensors = {name: t.detach().cpu().contiguous() for name, t in buffers.items()}
    return save_safetensors(tensors, metadata={"torchlayers": json.dumps(header)})


def read_state(layer: str, data: Any) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """Parse what `dump_state` wrote; ValueError naming `layer` if the bytes are not that.

    Returns the header (`params` as name -> {"shape", "crc32"?}) and the buffers.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"{layer}: expected the bytes of a saved with_torch layer, got {data!r}")
    try:
        buffers = load_safetensors(bytes(data))
        # the metadata: safetensors' documented layout is an 8-byte length, then JSON
        size = int.from_bytes(bytes(data[:8]), "little")
        metadata = json.loads(bytes(data[8 : 8 + size]))["__metadata__"]
        header = json.loads(metadata["torchlayers"])
    except Exception as err:  # safetensors, json and key errors alike: the bytes are not ours
        raise ValueError(f"{layer}: the data is not a saved with_torch layer ({err})") from err
    if not isinstance(header, dict) or header.get("format") not in (FORMAT, OLD_FORMAT):
        raise ValueError(f"{layer}: unknown format in the data, expected {FORMAT}")
    if header["format"] == OLD_FORMAT:  # name -> shape; saved built
        header = {"built": True, "params": {n: {"shape": s} for n, s in header["params"].items()}}
    if not isinstance(header.get("params"), dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("shape"), list)
        for entry in header["params"].values()
    ):
        raise ValueError(f"{layer}: the data's header lists no parameter shapes")
    return header, buffers


def check_state(
    node: Model,
    params: Dict[str, torch.nn.Parameter],
    own: Dict[str, torch.Tensor],
    header: Dict,
    values: Dict[str, Any],
    buffers: Dict[str, torch.Tensor],
    verify: bool = True,
) -> None:
    """Raise ValueError unless the saved `values` (name -> array) and `buffers` fit the module
    (its `params` and `own` buffers): the same names, the same shapes, intact bytes.

    verify: compare checksums (off where the whole message was already checked against its seal).
    """
    saved = header["params"]
    if not header.get("built", True):
        raise ValueError(f"{node.name}: the data was saved before initialize; this layer is built")
    for what, theirs, ours in (
        ("parameters", set(saved), set(params)),
        ("parameter values", set(values), set(params)),
        ("buffers", set(buffers), set(own)),
    ):
        if theirs != ours:
            raise ValueError(
                f"{node.name}: the data has {what} {sorted(theirs)}, the module {sorted(ours)}"
            )
    for name, param in params.items():
        check_shape(node, name, tuple(param.shape), values[name].shape)
        check_shape(node, name, tuple(param.shape), saved[name]["shape"])
        check_dtype(node, name, param, values[name])
    for name, tensor in buffers.items():
        check_shape(node, name, tuple(own[name].shape), tuple(tensor.shape))
        if tensor.dtype != own[name].dtype:
            raise ValueError(
                f"{node.name}: buffer '{name}' is {own[name].dtype} in the module but "
                f"{tensor.dtype} in the data"
            )
    if verify:
        verify_checksums(node, header, values, buffers)


def verify_checksums(
    node: Model, header: Dict, values: Dict[str, Any], buffers: Dict[str, torch.Tensor]
) -> None:
    """A flipped byte in a saved parameter or buffer: ValueError naming the tensor."""
    entries = [(n, header["params"][n], values[n]) for n in values if n in header["params"]]
    entries += [(n, header.get("buffers", {}).get(n, {}), t) for n, t in buffers.items()]
    for name, entry, value in entries:
        expected = entry.get("crc32")
        if expected is not None and checksum(value) != expected:
            raise ValueError(
                f"{node.name}: '{name}' is corrupt: its bytes do not match the checksum saved "
                "with it (a damaged file?)"
            )


def check_shape(node: Model, name: str, expected: Tuple[int, ...], got: Any) -> None:
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"{node.name}: parameter '{name}' has shape {tuple(expected)} in the module "
            f"but {tuple(got)} in the data"
        )


def check_dtype(node: Model, name: str, param: torch.Tensor, value: Any) -> None:
    expected = str(param.dtype).replace("torch.", "")
    if str(getattr(value, "dtype", None)) != expected:
        raise ValueError(
            f"{node.name}: parameter '{name}' is {expected} in the module but "
            f"{getattr(value, 'dtype', type(value).__name__)} in the data"
        )
