"""Modes: where a module's train/eval flags rest, and which calls may see them.

The flags rest in eval mode: a prediction reads them and writes nothing, so any number of
threads predict at once without a lock (W3). A training call sets train mode for its forward
pass and puts eval back; it also counts itself (odd while one runs, a seqlock), so a prediction
that overlapped one on another thread is refused rather than returned with dropout applied.
Flags are written into each submodule's `__dict__`: `nn.Module.train()` goes through
`__setattr__` and costs microseconds per submodule (P2, P11).
"""

from typing import Any, Dict, List, Optional

import torch
from torch.nn.modules.dropout import _DropoutNd


class Modes:
    """The train/eval flags of one module, its Dropout submodules' rates during a training call
    (D6), and the count of training calls begun and ended."""

    def __init__(self, module: Optional[torch.nn.Module]) -> None:
        self.holders: List[Dict[str, Any]] = (
            [sub.__dict__ for sub in module.modules()] if module else []
        )
        self.root: Dict[str, Any] = self.holders[0] if self.holders else {"training": False}
        self.dropouts = torch_dropouts(module) if module is not None else []
        self.training_calls = 0  # odd while a training forward runs
        self.set_all(False)

    def set_all(self, training: bool) -> None:
        for holder in self.holders:
            holder["training"] = training

    def begin_training(self, rate: Optional[float] = None) -> Optional[List[float]]:
        """Train mode; with a `rate`, every Dropout submodule runs at it. Returns their own
        rates, for `end_training` to put back."""
        self.training_calls += 1
        self.set_all(True)
        if rate is None:
            return None
        before = [m.p for m in self.dropouts]
        for m in self.dropouts:
            m.p = rate
        return before

    def end_training(self, rates: Optional[List[float]] = None) -> None:
        if rates is not None:
            for m, p in zip(self.dropouts, rates):
                m.p = p
        self.set_all(False)
        self.training_calls += 1

    def begin_prediction(self, layer: str) -> int:
        """Check no training call runs; put the flags back to rest if the caller moved them
        (`module.train()` on the module they hold). Returns `training_calls`: a prediction
        that finds it changed when it ends overlapped a training call and raises `busy`.
        (with_torch's predict makes the cheap tests itself and calls this only when one fails.)
        """
        calls = self.training_calls
        if calls & 1:
            raise RuntimeError(busy(layer))
        if self.root["training"]:
            self.set_all(False)
        return calls


def torch_dropouts(module: torch.nn.Module) -> List[_DropoutNd]:
    return [m for m in module.modules() if isinstance(m, _DropoutNd)]


def busy(layer: str) -> str:
    return (
        f"{layer}: a training call ran on this layer while a prediction did (on another "
        "thread); training and predicting at once are refused: predict on a copy "
        "(model.copy()) or between updates"
    )
