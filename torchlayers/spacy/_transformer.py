"""Transformer: a Transformer encoder over a padded batch, with a key padding mask and positions."""

import math
from typing import List, Optional

import torch

from ._bilstm import context_norm

# The v2 Transformer's context starts at this weight against the token's own row, as the
# BiLSTM's. Measured on spaCy's suite (E6), with `Around` as it is: at 1.5 a tagger over the
# frozen, untrained encoder ends its 100 updates over the test's 1e-4 loss on 1 of 5 seeds; at
# 2, 1.4e-5 to 4.6e-5 on those seeds; the whole suite passes at 1.75, 2 and 2.5. (With every
# other token read alike, 1.25 and above failed 4 tests where the token's own row should win,
# and 1.5 and above a multilabel textcat.)
CONTEXT_GAIN = 2.0

# `Around`'s attention logits start at minus this for every token beyond the nearest on a
# head's side: at random init each head reads the nearest token that way (and the null key),
# the next one at e^-3, about 5% of its weight. Without it the attention starts near even over
# the doc and one doc's context rows are alike (cosine about 0.8), which a tagger over the
# frozen encoder cannot fit in spaCy's 100 updates (E6).
NEAR_BIAS = 3.0


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
        The layers then take no sinusoidal positions: `Around`'s heads, each reading one
        side of the token, give the order, and the layers' rows stay as unlike from token
        to token as the tokens are (the positions of nearby tokens are alike, and at random
        init outweighed the projected rows).
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
        H = self.project(X) if self.around is not None else self.project(X) + P
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
    and values). The first half of the heads read only the tokens before it, the last half
    only those after (a middle head, where the count is odd, both sides), nearer tokens first
    (`NEAR_BIAS`), as the BiLSTM reads its neighbours' states; a learned null key
    (`add_bias_kv`) lets a token with nothing on a head's side read nothing. Then a
    feed-forward, post-norm, as in `torch.nn.TransformerEncoderLayer`; the last norm is the
    context's (`context_norm`), its gain starting at `CONTEXT_GAIN`.

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
        bias = side_bias(self.attend.num_heads, ignored, H.dtype)
        read, _ = self.attend(queries, H, H, attn_mask=bias, need_weights=False)
        G = self.norm_read(self.dropout(read))
        return self.norm_fed(G + self.dropout(self.feed(G)))


def head_sides(heads: int) -> List[int]:
    """Which side of the token each of `Around`'s heads reads: -1 before, 1 after, 0 both."""
    half = heads // 2
    return [-1] * half + [0] * (heads - 2 * half) + [1] * half


def side_bias(heads: int, ignored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`Around`'s attention bias, `(batch * heads, max_len, max_len)` as `nn.MultiheadAttention`
    takes it: query t, key s gets `-NEAR_BIAS * (|s - t| - 1)`, and minus infinity where s is
    t itself, padding, or on the other side of t from the head's (`head_sides`)."""
    batch, max_len = ignored.shape
    steps = torch.arange(max_len, device=ignored.device)
    offset = steps[None, :] - steps[:, None]  # key minus query
    near = -NEAR_BIAS * (offset.abs() - 1).clamp(min=0).to(dtype)
    sides = torch.tensor(head_sides(heads), device=ignored.device)[:, None, None]
    hidden = (offset == 0) | (sides * offset < 0)  # (heads, max_len, max_len)
    hidden = hidden[None] | ignored[:, None, None, :]  # (batch, heads, max_len, max_len)
    bias = near.expand(batch, heads, max_len, max_len).masked_fill(hidden, float("-inf"))
    return bias.reshape(batch * heads, max_len, max_len)


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
