"""BiLSTM: a bidirectional LSTM over a padded batch whose outputs ignore the padding."""

from typing import Optional

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
        self.forwards = torch.nn.ModuleList(
            torch.nn.LSTM(size, width // 2, batch_first=True) for size in sizes
        )
        self.backwards = torch.nn.ModuleList(
            torch.nn.LSTM(size, width // 2, batch_first=True) for size in sizes
        )
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, max_len, _ = X.shape
        if mask is None:
            mask = X.new_ones((batch, max_len), dtype=torch.bool)
        flip = reversal_index(mask)
        for fwd, bwd in zip(self.forwards, self.backwards):
            if self.dropout.p > 0:
                X = self.dropout(X)
            ahead, _ = fwd(X)
            back, _ = bwd(gather_rows(X, flip))
            X = torch.cat([ahead, gather_rows(back, flip)], dim=-1)
        return X


def reversal_index(mask: torch.Tensor) -> torch.Tensor:
    """Flat row indices that reverse each doc within its length and leave its padding in place.

    Position t of doc b with n real tokens reads position n - 1 - t (t < n), else t. The same
    index undoes itself.
    """
    batch, max_len = mask.shape
    lengths = mask.sum(dim=1, keepdim=True)
    steps = torch.arange(max_len, device=mask.device)
    within = torch.where(steps < lengths, lengths - 1 - steps, steps)
    offsets = torch.arange(batch, device=mask.device).unsqueeze(1) * max_len
    return (within + offsets).reshape(-1)


def gather_rows(X: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`X[b, t]` for the flat (b, t) positions in `index`, as `(batch, max_len, width)`."""
    batch, max_len, width = X.shape
    return X.reshape(batch * max_len, width).index_select(0, index).reshape(batch, max_len, width)
