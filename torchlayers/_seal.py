"""The seal a torchlayers root writes into its message: a CRC-32 of each param and of the rest.

With it a flipped byte anywhere in a saved model is caught at load: in a weight (its checksum),
or in a name, a dim, an attr or a shim's bytes (the structure's checksum).
"""

import zlib
from typing import Any, Dict, List

import numpy
import srsly
from thinc.api import Model

from ._saved import checksum

SECTIONS = ("nodes", "attrs", "params", "shims")
SEAL_KEY = "torchlayers"
SEAL_FORMAT = "torchlayers.seal/1"


def seal(msg: Dict) -> Dict:
    """Checksums of every param and of the structure (nodes, attrs, shims) of a message."""
    return {
        "format": SEAL_FORMAT,
        "structure": structure_checksum(msg),
        "params": [
            {name: None if value is None else checksum(value) for name, value in params.items()}
            for params in msg["params"]
        ],
    }


def structure_checksum(msg: Dict) -> int:
    return zlib.crc32(srsly.msgpack_dumps(plain([msg[key] for key in SECTIONS if key != "params"])))


def plain(value: Any) -> Any:
    """The message as msgpack gives it back: lists for tuples, Python numbers for numpy's."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def check_seal(root: Model, msg: Dict, nodes: List[Model]) -> bool:
    """Verify the seal if the data has one (torchlayers 0.1.0 wrote none); say whether it did."""
    sealed = msg.get(SEAL_KEY)
    if sealed is None:
        return False
    if not isinstance(sealed, dict) or sealed.get("format") != SEAL_FORMAT:
        raise ValueError(f"{root.name}: the data's seal is not {SEAL_FORMAT}")
    if sealed.get("structure") != structure_checksum(msg):
        raise ValueError(f"{root.name}: the data is corrupt: its structure fails its checksum")
    expected = sealed.get("params")
    if not isinstance(expected, list) or len(expected) != len(nodes):
        raise ValueError(f"{root.name}: the data is corrupt: its seal lists no param checksums")
    for node, params, sums in zip(nodes, msg["params"], expected):
        for name, value in params.items():
            if value is not None and (
                not isinstance(sums, dict) or sums.get(name) != checksum(value)
            ):
                raise ValueError(
                    f"{root.name}: the data is corrupt: parameter '{name}' of {node.name} "
                    "fails its checksum (a damaged file?)"
                )
    return True
