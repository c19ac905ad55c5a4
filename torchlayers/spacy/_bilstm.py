"""BiLSTM: a bidirectional LSTM over a padded batch whose outputs ignore the padding."""

from typing import Any, Callable, Optional, Tuple

import numpy
import torch


class BiLSTM(torch.nn.Module):
    """`module(X, mask) -> Y`: `depth` bidirectional LSTM layers, `width // 2` units each way.

    X: `(batch, max_len, nI)` float; mask: `(batch, max_len)` bool, True at real tokens, each
    row's real tokens first (as `with_padding` lays them out). Y: `(batch, max_len, width)`.
    A doc's rows of Y depend on its own rows of X alone (float32 rounding): the forward direction
    reads the padding only after a doc's last token, and the backward direction runs forward
    over each doc reversed within its length (one gather lays out both directions' inputs,
    one the outputs), so it meets the padding last too.
    That is `pack_padded_sequence`'s result without packing: a packed LSTM takes about twice as
    long on the CPU (bench/bench_encoders.py), and Thinc's `PyTorchLSTM` skips packing and reads
    the padding into the backward direction.
    dropout: `nn.Dropout` on each layer's input, so `with_torch(torch_dropout=True)` hands it the
    caller's rate.
    """

    def __init__(self, nI: int, width: int, depth: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(
                f"BiLSTM: width must be an even int >= 2 (width // 2 units each way), got {width}"
            )
        if depth < 1:
            raise ValueError(f"BiLSTM: depth must be >= 1, got {depth}")
        self.nI, self.width = nI, width
        sizes = [nI] + [width] * (depth - 1)
        self.forwards = torch.nn.ModuleList(torch.nn.LSTM(size, width // 2) for size in sizes)
        self.backwards = torch.nn.ModuleList(torch.nn.LSTM(size, width // 2) for size in sizes)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, max_len, _ = X.shape
        if mask is None:
            mask = X.new_ones((batch, max_len), dtype=torch.bool)
        # A prediction (autograd off) needs no inverse indices: no backward pass will run.
        order = Orders(mask, between=len(self.forwards) > 1, inverse=torch.is_grad_enabled())
        # Time-major inside (torch's CPU LSTM runs faster on it: batch_first transposes per
        # call). Each gather below is one copy that lays the rows out for the next step.
        both = gather_rows(X, order.inputs, (2, max_len, batch, -1))  # [forward, reversed]
        last = len(self.forwards) - 1
        for depth, (fwd, bwd) in enumerate(zip(self.forwards, self.backwards)):
            if self.dropout.p > 0:
                both = self.dropout(both)
            ahead, _ = fwd(both[0])
            back, _ = bwd(both[1])
            stacked = torch.stack([ahead, back])  # (2, T, B, H)
            if depth == last:
                return gather_rows(stacked, order.outputs, (batch, max_len, -1))
            both = gather_rows(stacked, order.between, (2, max_len, batch, -1))
        raise AssertionError("unreachable: depth >= 1")


# (rows to take, where each source row went: None where no backward pass will run)
Index = Tuple[torch.Tensor, Optional[torch.Tensor]]


class Orders:
    """Flat row indices that lay out each step's rows, with their inverses for the backward
    pass (without them where `inverse` is False: a prediction). Doc b has n_b real tokens;
    rev(t, b) = n_b - 1 - t for t < n_b, else t (each doc reversed within its length, its
    padding left in place).

    inputs: from X (B, T) to (2, T, B): [0] time-major, [1] each doc reversed.
    outputs: from the two directions' (2, T, B) rows to (B, T, 2): the backward direction's
        row for step t is at rev(t, b).
    between (depth > 1): from (2, T, B) rows to the next layer's (2, T, B, 2): the layer's
        output [ahead(t), back(rev(t))] forwards, and the same reversed.
    Computed with numpy for a CPU mask: ~0.1 ms here, about half what the same arithmetic
    costs in torch's small ops (on a 5 ms prediction, it shows).
    """

    def __init__(self, mask: torch.Tensor, between: bool = False, inverse: bool = True) -> None:
        batch, max_len = mask.shape
        cpu = not mask.is_cuda
        xp: Any = numpy if cpu else torch
        counts = mask.sum(dim=1)
        lengths: Any = counts.numpy() if cpu else counts
        steps = arange(xp, max_len, mask.device).reshape(max_len, 1)  # (T, 1)
        docs = arange(xp, batch, mask.device)  # (B,)
        rev = xp.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
        cells = batch * max_len
        ahead, back = steps * batch + docs, cells + rev * batch + docs  # rows of (2, T, B)
        # X's rows (B, T) for (2, T, B): each doc forwards, then reversed. X's row (b, t)
        # went to (0, t, b) and (1, rev(t), b): the rows listed in (B, T, 2) order, which are
        # also where the outputs come from.
        from_x = xp.stack([docs * max_len + steps, docs * max_len + rev])
        to_bt = xp.stack([ahead.T, back.T], -1)
        direction = xp.stack([steps * 0, steps * 0 + 1])  # (2, T, 1): 0 forwards, 1 backwards
        self.inputs = self._pair(from_x, lambda: to_bt, inverse)
        self.outputs = self._pair(to_bt, lambda: from_x * 2 + direction, inverse)
        if between:
            taken = xp.stack(
                [xp.stack([ahead, back], -1), xp.stack([rev * batch + docs, cells + ahead], -1)]
            )

            def went() -> Any:
                back_rev = (max_len + rev) * batch + docs
                forwards = xp.stack([ahead * 2, back_rev * 2], -1)
                again = ((max_len + steps) * batch + docs) * 2 + 1
                return xp.stack([forwards, xp.stack([(rev * batch + docs) * 2 + 1, again], -1)])

            self.between = self._pair(taken, went, inverse)

    @staticmethod
    def _pair(taken: Any, went: Callable[[], Any], inverse: bool) -> Index:
        """(taken, went) flat, as tensors; went only with `inverse` (None for a prediction)."""
        inverted = went() if inverse else None
        if isinstance(taken, numpy.ndarray):
            return torch.from_numpy(taken.reshape(-1)), (
                None if inverted is None else torch.from_numpy(inverted.reshape(-1))
            )
        return taken.reshape(-1), None if inverted is None else inverted.reshape(-1)


def arange(xp: Any, n: int, device: torch.device) -> Any:
    return numpy.arange(n) if xp is numpy else torch.arange(n, device=device)


def gather_rows(X: torch.Tensor, index: Index, shape: Tuple[int, ...]) -> torch.Tensor:
    """Rows of X (flattened over all but the last axis) at `index[0]`, reshaped to `shape`
    (whose last entry, -1, takes the rest).

    Every row of X is taken the same number of times, and `index[1]` lists where each row's
    copies went: the backward pass gathers the gradient rows back with it and sums the copies
    (`index_select`'s own backward scatter-adds: 3x slower here).
    """
    rows = X.reshape(-1, X.shape[-1])
    if index[1] is None:  # a prediction: no backward, so no autograd Function either
        return rows.index_select(0, index[0]).reshape(shape)
    return Gather.apply(rows, *index).reshape(shape)


class Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, X: torch.Tensor, taken: torch.Tensor, went: torch.Tensor) -> Any:
        ctx.rows, ctx.went = X.shape[0], went
        return X.index_select(0, taken)

    @staticmethod
    def backward(ctx: Any, dY: torch.Tensor) -> Any:
        dX = dY.index_select(0, ctx.went)
        copies = len(ctx.went) // ctx.rows
        if copies > 1:
            dX = dX.reshape(ctx.rows, copies, -1).sum(dim=1)
        return dX, None, None
