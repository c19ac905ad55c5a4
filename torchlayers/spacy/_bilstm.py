"""BiLSTM: a bidirectional LSTM over a padded batch whose outputs ignore the padding."""

from typing import Any, Optional

import torch


class BiLSTM(torch.nn.Module):
    """`module(X, mask) -> Y`: `depth` bidirectional LSTM layers, `width // 2` units each way.

    X: `(batch, max_len, nI)` float; mask: `(batch, max_len)` bool, True at real tokens, each
    row's real tokens first (as `with_padding` lays them out). Y: `(batch, max_len, width)`.
    A doc's rows of Y depend on its own rows of X alone (float32 rounding): the forward direction
    reads the padding only after a doc's last token, and the backward direction runs forward
    over each doc reversed within its length (one gather), so it meets the padding last too.
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
        index = Reordering(mask)
        # Time-major inside (torch's CPU LSTM runs faster on it: batch_first transposes per
        # call); each gather below is the one copy that changes the layout.
        ahead_in = permute_rows(X, index.to_time_major, index.to_batch_major, max_len, batch)
        back_in = permute_rows(
            X, index.to_time_major_reversed, index.to_batch_major_reversed, max_len, batch
        )
        last = len(self.forwards) - 1
        for depth, (fwd, bwd) in enumerate(zip(self.forwards, self.backwards)):
            if self.dropout.p > 0:
                ahead_in, back_in = self.dropout(ahead_in), self.dropout(back_in)
            ahead, _ = fwd(ahead_in)
            back, _ = bwd(back_in)
            if depth == last:
                ahead = permute_rows(
                    ahead, index.to_batch_major, index.to_time_major, batch, max_len
                )
                back = permute_rows(
                    back,
                    index.to_batch_major_reversed,
                    index.to_time_major_reversed,
                    batch,
                    max_len,
                )
                return torch.cat([ahead, back], dim=-1)
            ahead_in = torch.cat(
                [ahead, permute_rows(back, index.reverse, index.reverse, max_len, batch)], dim=-1
            )
            back_in = permute_rows(ahead_in, index.reverse, index.reverse, max_len, batch)
        raise AssertionError("unreachable: depth >= 1")


class Reordering:
    """Flat row indices between a batch-major padded batch and the time-major orders the two
    directions run in. Doc b has n_b real tokens; rev(t, b) = n_b - 1 - t for t < n_b, else t
    (each doc reversed within its length, its padding left in place).

    to_time_major[t, b] = b * T + t, to_time_major_reversed[t, b] = b * T + rev(t, b): from
    the (B, T) input. reverse[t, b] = rev(t, b) * B + b: time-major to time-major reversed (its
    own inverse). to_batch_major[b, t] = t * B + b, to_batch_major_reversed[b, t] =
    rev(t, b) * B + b: from time-major outputs back to (B, T).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        batch, max_len = mask.shape
        device = mask.device
        lengths = mask.sum(dim=1)  # (B,)
        steps = torch.arange(max_len, device=device).unsqueeze(1)  # (T, 1)
        docs = torch.arange(batch, device=device).unsqueeze(0)  # (1, B)
        rev = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
        self.to_time_major = (docs * max_len + steps).reshape(-1)
        self.to_time_major_reversed = (docs * max_len + rev).reshape(-1)
        self.reverse = (rev * batch + docs).reshape(-1)
        self.to_batch_major = (steps * batch + docs).t().reshape(-1)
        self.to_batch_major_reversed = self.reverse.reshape(max_len, batch).t().reshape(-1)


def permute_rows(
    X: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, rows: int, cols: int
) -> torch.Tensor:
    """Rows of X (flattened over all but the last axis) at `index`, as (rows, cols, width).

    `index` is a permutation and `inverse` its inverse: the backward pass gathers the gradient
    with `inverse` (index_select's own backward scatters with atomic adds: 3x slower here).
    """
    width = X.shape[-1]
    flat = PermuteRows.apply(X.reshape(-1, width), index, inverse)
    return flat.reshape(rows, cols, width)


class PermuteRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, X: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> Any:
        ctx.inverse = inverse
        return X.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, dY: torch.Tensor) -> Any:
        return dY.index_select(0, ctx.inverse), None, None
