"""W6's checksums: what a CRC-32 per tensor costs on saving and loading a 100M-param model.

Saves and loads the same with_torch model with the checks on (the package as it ships) and
with the checksum function replaced by a constant, and prints the ratios beside the load time
(as a ratio to the save time, since bare times are not reported).
"""

from typing import Callable, Dict

import torch

import torchlayers._loading as loading
import torchlayers._saved as saved
from torchlayers import with_torch

from ._timing import medians


def model_of(params: int):
    torch.manual_seed(0)
    width = 2500
    depth = max(1, params // (width * width))
    layers = [torch.nn.Linear(width, width) for _ in range(depth)]
    return with_torch(torch.nn.Sequential(*layers))


def cases(model, data: bytes) -> Dict[str, Callable[[], object]]:
    return {"save": model.to_bytes, "load": lambda: model.from_bytes(data)}


def main() -> bool:
    model = model_of(100_000_000)
    count = sum(model.get_param(name).size for name in model.param_names)
    data = model.to_bytes()
    checked = medians(cases(model, data), rounds=3, number=1)
    real = saved.checksum
    try:
        for module in (saved, loading):
            module.checksum = lambda array: 0  # type: ignore[attr-defined]
        unchecked_data = model.to_bytes()
        unchecked = medians(cases(model, unchecked_data), rounds=3, number=1)
    finally:
        for module in (saved, loading):
            module.checksum = real  # type: ignore[attr-defined]
    print(
        f"W6 checksums on {count / 1e6:.0f}M params: save "
        f"{checked['save'] / unchecked['save']:.2f}x and load "
        f"{checked['load'] / unchecked['load']:.2f}x of the same without checksums; "
        f"a load takes {checked['load'] / checked['save']:.2f}x a save"
    )
    return True
