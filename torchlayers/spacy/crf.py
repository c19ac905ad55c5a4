"""A linear-chain CRF over BILUO tags in torch: learned transition scores and the forward algorithm.

The module holds one matrix, `transitions.weight` (an `nn.Embedding(n_tags + 1, n_tags + 1)`):
row/column 0 is the sequence boundary, tags are 1..n, so `W[0, j]` scores starting with tag j,
`W[i, 0]` ending with tag i and `W[i, j]` going from tag i to tag j. One matrix makes the
transitions resizable like any Embedding (`resizable`: new rows, the "from" axis, are its nI;
new columns, the "to" axis, its nO): adding an entity type appends rows and columns and keeps
the old entries. Transitions BILUO forbids are masked to `FORBIDDEN` in every call, whatever
the weights hold.

`forward(emissions, gold, mask)` returns the negative log-likelihood summed over the batch:
`log Z(all valid paths) - log Z(valid paths that agree with the gold)`. `gold` marks, per token,
the tags the annotation allows: one for an annotated token, all of them for a missing one, so
missing annotation gives no gradient of its own (as spaCy's `ner` treats it).
"""

from typing import Dict, Optional

import numpy
import torch

from .biluo import allowed_transitions

FORBIDDEN = -1.0e4  # finite: logsumexp over all-forbidden rows must not give nan gradients
TINY = 1e-30  # added before a log in the forward algorithm: log(0) would give -inf and nan


class LinearChainCRF(torch.nn.Module):
    """Transition scores between BILUO tags (and the boundary); the CRF loss of a batch.

    n_states: the number of tags + 1 (the boundary state 0). Starts at zero: no preference.
    """

    def __init__(self, n_states: int) -> None:
        super().__init__()
        self.transitions = torch.nn.Embedding(n_states, n_states)
        torch.nn.init.zeros_(self.transitions.weight)
        self._masks: Dict[int, torch.Tensor] = {}

    def forward(self, emissions: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor):
        """emissions (docs, length, tags) float; gold (docs, length, tags) bool, the tags the
        annotation allows; mask (docs, length) bool, True at real tokens (each doc has >= 1).
        Returns the summed negative log-likelihood (a 0-d tensor)."""
        # Both partitions in one forward algorithm, the docs stacked twice: its loop over the
        # time steps runs once per batch, not twice (P13).
        stacked = torch.cat([emissions, emissions.masked_fill(~gold, FORBIDDEN)])
        log_z = log_partition(stacked, None, mask.repeat(2, 1), self.scores())
        everything, agreeing = log_z.split(len(emissions))
        return (everything - agreeing).sum()

    def scores(self) -> torch.Tensor:
        """The (n+1, n+1) transition scores with forbidden transitions masked."""
        weight = self.transitions.weight
        allowed = self._allowed(weight.shape[0], weight.device)
        return weight.masked_fill(~allowed, FORBIDDEN)

    def _allowed(self, n_states: int, device: torch.device) -> torch.Tensor:
        cached = self._masks.get(n_states)
        if cached is None or cached.device != device:
            cached = torch.from_numpy(boundary_allowed(n_states)).to(device)
            self._masks = {n_states: cached}
        return cached


def linear_chain_crf(nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
    """`(nI, nO) -> LinearChainCRF`: both dims are the number of tags + 1."""
    if nI is None or nI != nO or (nI - 2) % 4:
        raise ValueError(f"linear_chain_crf: need nI == nO == 2 + 4 * types, got {nI}, {nO}")
    return LinearChainCRF(nI)


def boundary_allowed(n_states: int) -> numpy.ndarray:
    """BILUO's allowed transitions over the boundary state 0 and the tags 1..n."""
    allowed, start, end = allowed_transitions((n_states - 2) // 4)
    out = numpy.zeros((n_states, n_states), dtype=bool)
    out[1:, 1:], out[0, 1:], out[1:, 0] = allowed, start, end
    return out


def log_partition(
    emissions: torch.Tensor, gold: Optional[torch.Tensor], mask: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """log-sum-exp of the path scores of each doc (the forward algorithm), over the paths whose
    tags `gold` allows (all paths if None). Returns (docs,).

    Each step's `logsumexp_i(alpha_i + trans_ij)` is a matrix product in exp space, both sides
    shifted by their maximum: `(docs, n) @ (n, n)` instead of a `(docs, n, n)` tensor and its
    logsumexp, forward and backward (P13: the CRF's update took 2.7x the per-token one's on
    tweets, most of it there). A forbidden transition is exactly 0 there; a tag that only
    forbidden transitions reach gets `log(TINY)` below the best path (-69) instead of the -1e4
    of FORBIDDEN: a weight of 1e-30, nothing next to the allowed paths.
    """
    if gold is not None:
        emissions = emissions.masked_fill(~gold, FORBIDDEN)
    start, end, trans = scores[0, 1:], scores[1:, 0], scores[1:, 1:]
    shift = trans.max().detach()
    exp_trans = torch.exp(trans - shift)
    alpha = start[None, :] + emissions[:, 0]
    for t in range(1, emissions.shape[1]):
        top = alpha.max(dim=1, keepdim=True).values.detach()
        summed = torch.exp(alpha - top) @ exp_trans
        stepped = torch.log(summed + TINY) + top + shift + emissions[:, t]
        alpha = torch.where(mask[:, t, None], stepped, alpha)
    return torch.logsumexp(alpha + end[None, :], dim=1)
