"""Transformer: a Transformer encoder over a padded batch, with a key padding mask and positions."""

import math
from typing import Optional

import torch

from ._bilstm import context_norm

# The v2 Transformer's context starts at this weight against the token's own row: lower than
# the BiLSTM's. Measured on spaCy's suite (E6): at 1.5 and above, 5 updates of a multilabel
# textcat push a logit past Thinc's sigmoid clip, where its gradient vanishes for good; at
# 1.25, the context outvotes the token's own row where spaCy's tests expect the row to win
# (4 failures); at 1.0, one (a tagger over the frozen, untrained encoder; tests/spacy_suite.py).
CONTEXT_GAIN = 1.0


class Transformer(torch.nn.Module):
    """`module(X, mask) -> Y`: a projection to `width`, sinusoidal positions, `depth` layers of
    `torch.nn.TransformerEncoderLayer` (`heads` heads, feed-forward `4 * width`, post-norm).

    X: `(batch, max_len, nI)` float; mask: `(batch, max_len)` bool, True at real tokens, each
    row's real tokens first. Y: `(batch, max_len, width)`. Attention never reads a padded key,
    so a doc's rows of Y depend on its own rows of X alone; rows at padded positions are junk
    (`with_padding` drops them). Positions make the order of the tokens matter.
    dropout: the rate of every `nn.Dropout` inside (attention, feed-forward, after the
    positions); `with_torch(torch_dropout=True)` hands them the caller's rate.
    residual: `Y = X + around(layers(X))` where `nI == width`, without the `X +` where not,
        as the residual `BiLSTM` (`Around` ends in its `context_norm`): the token's own row
        reaches the layer above at once, and the context, read by `Around` from the other
        tokens alone, weighs `CONTEXT_GAIN` times it at the start. A word never seen in
        training then gets its context from its neighbours, not from its own random row (E6).
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
        self.around = Around(width, heads, dropout) if residual else None
        self.residual = residual and nI == width

    def forward(self, X: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, max_len, _ = X.shape
        if mask is None:
            mask = X.new_ones((batch, max_len), dtype=torch.bool)
        P = positions(max_len, self.width, X.device, X.dtype)
        H = self.project(X) + P
        ignored = ~mask
        # A doc with no tokens would mask every key: softmax over nothing is NaN, and NaN times
        # a zero gradient is still NaN in the weights' gradients. Its rows are all padding and
        # dropped anyway, so let it attend to its first (padding) position. Position 0 is a
        # real token in every other doc.
        ignored[:, 0] = False
        Y = self.layers(self.dropout(H), src_key_padding_mask=ignored)
        if self.around is None:
            return Y
        context = self.around(P, Y, ~mask)
        return X + context if self.residual else context


class Around(torch.nn.Module):
    """`around(P, H, ignored) -> G`: each token's context read from the other tokens of its
    doc, never from itself. Its position asks (the query), the other tokens' rows answer (keys
    and values), and a learned null key (`add_bias_kv`) lets a doc of one token read nothing.
    Then a feed-forward, post-norm, as in `torch.nn.TransformerEncoderLayer`; the last norm is
    the context's (`context_norm`), its gain starting at `CONTEXT_GAIN`.

    P: `(max_len, width)` positions; H: `(batch, max_len, width)`; ignored: `(batch, max_len)`
    bool, True at padding. G: `(batch, max_len, width)`, junk at padded positions.
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attend = torch.nn.MultiheadAttention(
            width, heads, dropout=dropout, add_bias_kv=True, batch_first=True
        )
        self.feed = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(4 * width, width),
        )
        self.dropout = torch.nn.Dropout(dropout)
        self.norm_read = torch.nn.LayerNorm(width)
        self.norm_fed = context_norm(width, CONTEXT_GAIN)

    def forward(self, P: torch.Tensor, H: torch.Tensor, ignored: torch.Tensor) -> torch.Tensor:
        batch, max_len, width = H.shape
        queries = P.expand(batch, max_len, width)
        itself = torch.eye(max_len, dtype=torch.bool, device=H.device)
        read, _ = self.attend(
            queries, H, H, key_padding_mask=ignored, attn_mask=itself, need_weights=False
        )
        G = self.norm_read(queries + self.dropout(read))
        return self.norm_fed(G + self.dropout(self.feed(G)))


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
