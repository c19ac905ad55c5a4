"""Transformer: a Transformer encoder over a padded batch, with a key padding mask and positions."""

import math
from typing import Optional

import torch

from ._bilstm import context_norm


class Transformer(torch.nn.Module):
    """`module(X, mask) -> Y`: a projection to `width`, sinusoidal positions, `depth` layers of
    `torch.nn.TransformerEncoderLayer` (`heads` heads, feed-forward `4 * width`, post-norm).

    X: `(batch, max_len, nI)` float; mask: `(batch, max_len)` bool, True at real tokens, each
    row's real tokens first. Y: `(batch, max_len, width)`. Attention never reads a padded key,
    so a doc's rows of Y depend on its own rows of X alone; rows at padded positions are junk
    (`with_padding` drops them). Positions make the order of the tokens matter.
    dropout: the rate of every `nn.Dropout` inside (attention, feed-forward, after the
    positions); `with_torch(torch_dropout=True)` hands them the caller's rate.
    residual: `Y = X + LayerNorm(layers(X))` where `nI == width`, as the residual `BiLSTM`
        (its `context_norm`): the token's own row reaches the layer above at once, and the
        context weighs `CONTEXT_GAIN` times it at the start. On spaCy's overfitting tests
        (50-150 updates) it took the failures from 7 of 14 to 1 (E6).
    """

    def __init__(
        self,
        nI: int,
        width: int,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or heads < 1 or width % heads:
            raise ValueError(
                f"Transformer: width must be a multiple of heads, got width={width}, heads={heads}"
            )
        if depth < 1:
            raise ValueError(f"Transformer: depth must be >= 1, got {depth}")
        self.nI, self.width = nI, width
        self.project = torch.nn.Linear(nI, width)  # first Linear: with_torch reads nI from it
        self.dropout = torch.nn.Dropout(dropout)
        layer = torch.nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=dropout, batch_first=True
        )
        self.layers = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = context_norm(width) if residual else None
        self.residual = residual and nI == width

    def forward(self, X: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, max_len, _ = X.shape
        if mask is None:
            mask = X.new_ones((batch, max_len), dtype=torch.bool)
        H = self.project(X) + positions(max_len, self.width, X.device, X.dtype)
        ignored = ~mask
        # A doc with no tokens would mask every key: softmax over nothing is NaN, and NaN times
        # a zero gradient is still NaN in the weights' gradients. Its rows are all padding and
        # dropped anyway, so let it attend to its first (padding) position. Position 0 is a
        # real token in every other doc.
        ignored[:, 0] = False
        Y = self.layers(self.dropout(H), src_key_padding_mask=ignored)
        if self.norm is None:
            return Y
        return X + self.norm(Y) if self.residual else self.norm(Y)


def positions(length: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The sinusoidal position encodings of "Attention is all you need", `(length, width)`."""
    steps = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rates = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(steps * rates)
    table[:, 1::2] = torch.cos(steps * rates[: width // 2])
    return table.to(dtype)
