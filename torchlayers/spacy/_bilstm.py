"""BiLSTM: a bidirectional LSTM over a padded batch whose outputs ignore the padding."""

from typing import Any, List, Optional, Tuple, cast

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
        # In place: the norm's backward reads its input, not its output; one 0.5 MB
        # allocation fewer per call (P7).
        return context.add_(X) if self.residual else context

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
        flips = Flips(mask, inverse=torch.is_grad_enabled(), around=around)
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
                states = states_around if around else states_at
                return states(ahead, back, flips)
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


def states_at(ahead: torch.Tensor, back: torch.Tensor, flips: "Flips") -> torch.Tensor:
    """`(batch, max_len, width)`: at each token its own states, `[forward, backward]`, from
    the time-major outputs (the backward one reversed within each doc)."""
    max_len, batch, _ = ahead.shape
    back_out = gather_rows(back, flips.tb_to_bt, (batch, max_len, -1))
    return torch.cat([ahead.transpose(0, 1), back_out], 2)


def states_around(ahead: torch.Tensor, back: torch.Tensor, flips: "Flips") -> torch.Tensor:
    """`(batch, max_len, width)`: at each token the forward state of the token before it and
    the backward state of the token after it, zeros at a doc's ends. One autograd node and
    two copies each way, where shifting each direction with `cat` and then gathering took
    five copies, zero fills and six nodes (P7)."""
    if flips.around is None:
        raise ValueError("states_around: Flips(around=True) has the rows it needs")
    if flips.around[1] is None:  # a prediction
        return AroundStates.assemble(ahead, back, flips.around[0])
    return cast(torch.Tensor, AroundStates.apply(ahead, back, flips.around))


class AroundStates(torch.autograd.Function):
    """`(ahead (T, B, a), back (T, B, k)) -> (B, T, a + k)`: the states around each token.

    Forward rows come from the state one step earlier: `ahead[t - 1, b]`, zeros at t = 0;
    `back`'s row `(rev(t, b) - 1, b)` (one step earlier in the doc reversed, which is one
    token later), zeros where `rev(t, b) = 0`, a doc's last token. Each source row is taken
    at most once, so the backward pass is a gather too: `ahead[s]` went to row `s + 1`,
    `back[s, b]` to the token `rev(s + 1, b)`; the last step's rows went nowhere.
    """

    @staticmethod
    def forward(ctx: Any, ahead: torch.Tensor, back: torch.Tensor, index: Any) -> Any:
        ctx.index, ctx.split = index, ahead.shape[2]
        return AroundStates.assemble(ahead, back, index[0])

    @staticmethod
    def assemble(ahead: torch.Tensor, back: torch.Tensor, taken: "Rows") -> torch.Tensor:
        max_len, batch, split = ahead.shape
        out = ahead.new_empty((batch, max_len, split + back.shape[2]))
        out[:, 0, :split] = 0
        out[:, 1:, :split] = ahead[:-1].transpose(0, 1)
        later = back.reshape(max_len * batch, -1).index_select(0, taken[0])
        out[:, :, split:] = later.index_fill_(0, taken[1], 0.0).view(batch, max_len, -1)
        return out

    @staticmethod
    def backward(ctx: Any, dY: torch.Tensor) -> Any:
        went, unfed = ctx.index[1]
        split = ctx.split
        batch, max_len, width = dY.shape
        d_ahead = dY.new_empty((max_len, batch, split))
        d_ahead[-1] = 0
        d_ahead[:-1] = dY[:, 1:, :split].transpose(0, 1)
        d_rows = dY.reshape(batch * max_len, width)[:, split:].index_select(0, went)
        d_back = d_rows.index_fill_(0, unfed, 0.0).view(max_len, batch, -1)
        return d_ahead, d_back, None


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
    around: also `AroundStates`' rows (`around_rows`), for the v2's states around each token.
    Computed with numpy for a CPU mask: about half what the same arithmetic costs in torch's
    small ops (on a 5 ms prediction, it shows); with torch's for a CUDA one (`xp` overrides,
    so a CPU test can check the two agree).
    """

    def __init__(
        self, mask: torch.Tensor, inverse: bool = True, around: bool = False, xp: Any = None
    ) -> None:
        batch, max_len = mask.shape
        if xp is None:  # numpy where it can (a CPU mask); torch's ops can on either device
            xp = torch if mask.is_cuda else numpy
        counts = mask.sum(dim=1)
        lengths: Any = counts.numpy() if xp is numpy else counts
        steps = arange(xp, max_len, mask.device).reshape(max_len, 1)  # (T, 1)
        docs = arange(xp, batch, mask.device)  # (B,)
        rev = xp.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
        from_x = flat(docs * max_len + rev)  # in (T, B) order: X's row (b, rev(t, b))
        from_tb = rev * batch + docs  # (T, B): the time-major row (rev(t, b), b)
        to_bt, tb = flat(from_tb.T), flat(from_tb)
        self.x_to_tb = (from_x, to_bt if inverse else None)
        self.tb_to_bt = (to_bt, from_x if inverse else None)
        self.tb = (tb, tb if inverse else None)
        self.around = None
        if around:
            last = xp.where(lengths > 0, lengths - 1, 0)  # each doc's last token (0 if empty)
            self.around = around_rows(self, flat(docs * max_len + last), inverse)


# (rows to take, rows of the result to zero)
Rows = Tuple[torch.Tensor, torch.Tensor]


def around_rows(flips: "Flips", last: torch.Tensor, inverse: bool) -> Tuple[Rows, Optional[Rows]]:
    """`AroundStates`' rows, from the flips': (back's row for each token in (B, T) order, the
    tokens whose row is zeros: each doc's `last`), and for the backward pass (the token each
    back row went to, the back rows that went nowhere: the last step's); None for a
    prediction. The row one step earlier in a reversed doc is `batch` rows before (`last`
    has one row per doc)."""
    to_bt, from_x, batch = flips.tb_to_bt[0], flips.x_to_tb[0], len(last)
    taken = ((to_bt - batch).clamp_(min=0), last)
    if not inverse:
        return taken, None
    went = torch.cat([from_x[batch:], from_x.new_zeros(batch)])  # the last step's: zeroed
    unfed = torch.arange(len(from_x) - batch, len(from_x), device=from_x.device)
    return taken, (went, unfed)


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
