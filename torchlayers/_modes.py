"""Modes: where a module's train/eval flags rest, and which calls may see them.

The flags rest in eval mode: a prediction reads them and writes nothing, so any number of
threads predict at once without a lock (W3). A training call sets train mode for its forward
pass and puts eval back; it also counts itself (odd while one runs, a seqlock), so a prediction
that overlapped one on another thread is refused rather than returned with dropout applied.
Flags are written into each submodule's `__dict__`: `nn.Module.train()` goes through
`__setattr__` and costs microseconds per submodule (P2, P11).
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.nn.modules.dropout import _DropoutNd

# Dropout rates that modules keep as a plain float instead of in an `nn.Dropout` submodule,
# as (class, attribute): `nn.MultiheadAttention` passes `self.dropout` to the attention kernel.
FLOAT_RATES: Tuple[Tuple[type, str], ...] = ((torch.nn.MultiheadAttention, "dropout"),)

# Where one dropout rate lives: a submodule's `__dict__` and the key in it.
RateHolder = Tuple[Dict[str, Any], str]


class Modes:
    """The train/eval flags of one module, its dropout rates during a training call (D6: every
    `nn.Dropout` and every rate in `FLOAT_RATES`), and the count of training calls begun and
    ended."""

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
        before = [holder[key] for holder, key in self.dropouts]
        for holder, key in self.dropouts:
            holder[key] = rate
        return before

    def end_training(self, rates: Optional[List[float]] = None) -> None:
        if rates is not None:
            for (holder, key), p in zip(self.dropouts, rates):
                holder[key] = p
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


def torch_dropouts(module: torch.nn.Module) -> List[RateHolder]:
    """Every dropout rate under `module`: `nn.Dropout`'s `p`, and the `FLOAT_RATES`."""
    holders: List[RateHolder] = []
    for sub in module.modules():
        if isinstance(sub, _DropoutNd):
            holders.append((sub.__dict__, "p"))
        holders.extend((sub.__dict__, key) for kind, key in FLOAT_RATES if isinstance(sub, kind))
    return holders


def busy(layer: str) -> str:
    return (
        f"{layer}: a training call ran on this layer while a prediction did (on another "
        "thread); training and predicting at once are refused: predict on a copy "
        "(model.copy()) or between updates"
    )
