"""BiLSTM: a bidirectional LSTM over a padded batch whose outputs ignore the padding."""

from typing import Any, List, Optional, Tuple

import numpy
import torch

# The residual BiLSTM's context weighs this much against the token's own row at the start.
# Measured on spaCy's own suite (E6, 322 tests, the context read around each token): with
# gain 1 a tagger over a frozen, untrained tok2vec ends 100 updates over its loss bar; with
# 2, none fails, and 8 seeds of the 4 tests closest to failing (a tagger and a parser on
# partial data, the tagger's and morphologizer's overfitting) pass.
CONTEXT_GAIN = 2.0
# A one-layer, one-way nn.LSTM's weights in the order its kernel takes them.
LSTM_WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class BiLSTM(torch.nn.Module):
    """`module(X, mask) -> Y`: `depth` bidirectional LSTM layers, `width` units in all (the
    forward direction takes the odd one), optionally with a normalised residual connection.

    X: `(batch, max_len, nI)` float; mask: `(batch, max_len)` bool, True at real tokens, each
    row's real tokens first (as `with_padding` lays them out). Y: `(batch, max_len, width)`.
    A doc's rows of Y depend on its own rows of X alone (float32 rounding): the forward direction
    reads X as it is, time-major, and meets the padding only after a doc's last token; the
    backward direction runs forward over each doc reversed within its length (one gather lays
    its input out, one its output back), so it meets the padding last too.
    That is `pack_padded_sequence`'s result without packing: a packed LSTM takes about twice as
    long on the CPU (bench/bench_encoders.py), and Thinc's `PyTorchLSTM` skips packing and reads
    the padding into the backward direction.
    dropout: `nn.Dropout` on each layer's input, so `with_torch(torch_dropout=True)` hands it the
    caller's rate.
    residual: `Y = X + LayerNorm(context)` where `nI == width`, `LayerNorm(context)` where
        not, the context being the states around each token: the forward state of the token
        before it and the backward state of the token after it. The token's own row reaches
        the layer above through the residual alone, so a word never seen in training is read
        from its neighbours, not from its own random row (with `depth` 1; deeper, the lower
        layers' states around it have read it). From scratch, the LSTMs' outputs start small
        and move slowly while the embeddings under them learn fast: the residual hands the
        layer above the embeddings at once, and the norm, its gain starting at `CONTEXT_GAIN`,
        puts the context above them (spaCy's CNN is built alike: normalised maxout units,
        residual). Measured on spaCy's own suite: 13 failures without, none with (E6).
    """

    def __init__(
        self, nI: int, width: int, depth: int = 1, dropout: float = 0.0, residual: bool = False
    ) -> None:
        super().__init__()
        if width < 2:
            raise ValueError(f"BiLSTM: width must be an int >= 2 (units in both ways), got {width}")
        if depth < 1:
            raise ValueError(f"BiLSTM: depth must be >= 1, got {depth}")
        self.nI, self.width = nI, width
        sizes = [nI] + [width] * (depth - 1)
        ahead, back = width - width // 2, width // 2
        self.forwards = torch.nn.ModuleList(torch.nn.LSTM(size, ahead) for size in sizes)
        self.backwards = torch.nn.ModuleList(torch.nn.LSTM(size, back) for size in sizes)
        self.dropout = torch.nn.Dropout(dropout)
        self.norm = context_norm(width) if residual else None
        self.residual = residual and nI == width

    def forward(self, X: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.norm is None:
            return self.lstms(X, mask)
        context = self.norm(self.lstms(X, mask, around=True))
        return X + context if self.residual else context

    def lstms(
        self, X: torch.Tensor, mask: Optional[torch.Tensor] = None, around: bool = False
    ) -> torch.Tensor:
        """The last layer's states, `[forward, backward]` at each token; with `around`, the
        states around it instead: the forward state of the token before, the backward state of
        the token after (zeros at a doc's ends)."""
        batch, max_len, _ = X.shape
        if mask is None:
            mask = X.new_ones((batch, max_len), dtype=torch.bool)
        # A prediction (autograd off) needs no inverse indices: no backward pass will run.
        flips = Flips(mask, inverse=torch.is_grad_enabled())
        # Time-major (torch's CPU LSTM runs faster on it): a view of X for the forward
        # direction; a gather, which is also the transpose, for the backward one.
        ahead_in = X.transpose(0, 1)
        back_in = gather_rows(X, flips.x_to_tb, (max_len, batch, -1))
        last = len(self.forwards) - 1
        for depth, (fwd, bwd) in enumerate(zip(self.forwards, self.backwards)):
            if self.dropout.p > 0:
                ahead_in, back_in = self.dropout(ahead_in), self.dropout(back_in)
            ahead, back = run_lstm(fwd, ahead_in), run_lstm(bwd, back_in)
            if depth == last:
                if around:  # one step later in time, and in each doc reversed
                    ahead, back = step_later(ahead), step_later(back)
                back_out = gather_rows(back, flips.tb_to_bt, (batch, max_len, -1))
                return torch.cat([ahead.transpose(0, 1), back_out], 2)
            # The next layer reads [ahead, back] of each token: in time order, and reversed.
            ahead_in = torch.cat([ahead, gather_rows(back, flips.tb, (max_len, batch, -1))], 2)
            back_in = torch.cat([gather_rows(ahead, flips.tb, (max_len, batch, -1)), back], 2)
        raise AssertionError("unreachable: depth >= 1")


def run_lstm(lstm: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """`lstm(X)[0]` for a one-layer, one-way, time-major `nn.LSTM` from zero states. On the
    CPU this calls the kernel itself: `nn.LSTM.forward`'s checks and its two `torch.zeros`
    cost as much as the whole call on a short batch, and the encoder calls it once per
    direction where a bidirectional `nn.LSTM` calls it once (P7). On CUDA the module's own
    call keeps cuDNN's flattened weights."""
    if X.is_cuda:
        return lstm(X)[0]
    weights: List[torch.Tensor] = [getattr(lstm, name) for name in LSTM_WEIGHTS]
    zeros = X.new_zeros((1, X.shape[1], weights[1].shape[1]))  # weight_hh: (4 h, h)
    return torch.lstm(X, (zeros, zeros), weights, True, 1, 0.0, False, False, False)[0]


def step_later(H: torch.Tensor) -> torch.Tensor:
    """Time-major `H` moved one step later: row t holds row t - 1, zeros at t = 0."""
    return torch.cat([H.new_zeros((1, *H.shape[1:])), H[:-1]], 0)


def context_norm(width: int, gain: float = CONTEXT_GAIN) -> torch.nn.LayerNorm:
    """The LayerNorm on an encoder's context, its gain starting at `gain`."""
    norm = torch.nn.LayerNorm(width)
    torch.nn.init.constant_(norm.weight, gain)
    return norm


# (rows to take, where each source row went: None where no backward pass will run)
Index = Tuple[torch.Tensor, Optional[torch.Tensor]]


class Flips:
    """Flat row indices that reverse each doc within its length, with their inverses for the
    backward pass (without them where `inverse` is False: a prediction).

    Doc b has n_b real tokens; rev(t, b) = n_b - 1 - t for t < n_b, else t: its padding stays
    in place. rev is its own inverse, so each index is a permutation of the rows and the
    inverse of a gather is another gather (`index_select`'s own backward scatter-adds: 3x
    slower here).
    x_to_tb: X's rows (B, T) to a time-major (T, B) layout, each doc reversed:
        (t, b) <- (b, rev(t, b)). Inverse: tb_to_bt.
    tb_to_bt: time-major rows (T, B) to (B, T), each doc reversed back: (b, t) <- (rev(t, b), b).
    tb: time-major rows (T, B), each doc reversed: (t, b) <- (rev(t, b), b). Its own inverse.
    Computed with numpy for a CPU mask: about half what the same arithmetic costs in torch's
    small ops (on a 5 ms prediction, it shows).
    """

    def __init__(self, mask: torch.Tensor, inverse: bool = True) -> None:
        batch, max_len = mask.shape
        cpu = not mask.is_cuda
        xp: Any = numpy if cpu else torch
        counts = mask.sum(dim=1)
        lengths: Any = counts.numpy() if cpu else counts
        steps = arange(xp, max_len, mask.device).reshape(max_len, 1)  # (T, 1)
        docs = arange(xp, batch, mask.device)  # (B,)
        rev = xp.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
        from_x = flat(docs * max_len + rev)  # in (T, B) order: X's row (b, rev(t, b))
        from_tb = rev * batch + docs  # (T, B): the time-major row (rev(t, b), b)
        to_bt, tb = flat(from_tb.T), flat(from_tb)
        self.x_to_tb = (from_x, to_bt if inverse else None)
        self.tb_to_bt = (to_bt, from_x if inverse else None)
        self.tb = (tb, tb if inverse else None)


def flat(index: Any) -> torch.Tensor:
    if isinstance(index, numpy.ndarray):
        return torch.from_numpy(numpy.ascontiguousarray(index).reshape(-1))
    return index.reshape(-1)


def arange(xp: Any, n: int, device: torch.device) -> Any:
    return numpy.arange(n) if xp is numpy else torch.arange(n, device=device)


def gather_rows(X: torch.Tensor, index: Index, shape: Tuple[int, ...]) -> torch.Tensor:
    """Rows of X (flattened over all but the last axis) at `index[0]`, reshaped to `shape`
    (whose last entry, -1, takes the rest). `index[1]`, the inverse permutation, gathers the
    gradient back in the backward pass."""
    rows = X.reshape(-1, X.shape[-1])
    if index[1] is None:  # a prediction: no backward, so no autograd Function either
        return rows.index_select(0, index[0]).reshape(shape)
    return Gather.apply(rows, *index).reshape(shape)


class Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, X: torch.Tensor, taken: torch.Tensor, went: torch.Tensor) -> Any:
        ctx.went = went
        return X.index_select(0, taken)

    @staticmethod
    def backward(ctx: Any, dY: torch.Tensor) -> Any:
        return dY.index_select(0, ctx.went), None, None
