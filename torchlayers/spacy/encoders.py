"""Torch sequence encoders for spaCy's `spacy.Tok2Vec.v2` `encode` slot (import to register).

Each is `Model[List[Floats2d], List[Floats2d]]`: one `(n_tokens, nI)` array per doc in, one
`(n_tokens, width)` array per doc out, built as

    with_padding(with_torch(module, torch_dropout=True))

so the module is called as `module(X, mask)` on a padded batch, and what `with_torch` gives holds
for it: caller dropout (`nlp.update(drop=...)`), `use_params(optimizer.averages)`, safe
serialization, `copy`, GPU.

- `torchlayers.TorchEncoder.v1`: a torch module of yours (or a factory `(nI, nO) -> Module`).
- `torchlayers.TorchBiLSTMEncoder.v1`: a bidirectional LSTM (`BiLSTM`), batch-independent.
- `torchlayers.TorchBiLSTMEncoder.v2`: the same read around each token, with a normalised
  residual connection.
- `torchlayers.TorchTransformerEncoder.v1`: a Transformer encoder (`Transformer`).
- `torchlayers.TorchTransformerEncoder.v2`: the same, then an attention layer that reads each
  token's context from the other tokens, with a normalised residual connection.

In a config:

    [components.tok2vec.model.encode]
    @architectures = "torchlayers.TorchBiLSTMEncoder.v1"
    width = 96

Importing this module without spaCy works (the functions can be called directly); the names are
registered in `spacy.registry.architectures` only where spaCy is importable.
"""

from typing import List, Optional, Union

import torch
from thinc.api import Model
from thinc.types import Floats2d, Floats3d

from .._shim import Factory
from ..with_padding import PaddedBatch, with_padding
from ..with_torch import with_torch
from ._bilstm import BiLSTM
from ._registry import register
from ._transformer import Transformer

Encoder = Model[List[Floats2d], List[Floats2d]]


def build_torch_encoder(
    module: Union[torch.nn.Module, Factory],
    width: Optional[int] = None,
    torch_dropout: bool = False,
    dropout: Optional[float] = None,
    mixed_precision: bool = False,
) -> Encoder:
    """A spaCy encoder (`List[Floats2d] -> List[Floats2d]`) around a torch module of yours.

    module: called as `module(X, mask)`: `X` `(batch, max_len, nI)` float, `mask`
        `(batch, max_len)` bool, True at real tokens (each doc's tokens first); returns
        `(batch, max_len, width)`. Its outputs at real tokens must not depend on the padding
        (`initialize` checks). Or a factory `(nI, nO) -> Module`, built at initialize with nI
        from the data and nO = width.
    width: the output width; spaCy's Tok2Vec reads it at construction, so give it unless the
        module is ready and its last `nn.Linear` says it.
    torch_dropout: hand the module's own `nn.Dropout` submodules the caller's rate in training
        (`nlp.update(drop=...)`, `[training] dropout`); `dropout` is the rate until then.
    mixed_precision: on CUDA, run the module under `torch.autocast` with loss scaling (as
        `with_torch`); spaCy still sees float32 rows.
    """
    layer: Model[PaddedBatch, Floats3d] = with_torch(
        module, torch_dropout=torch_dropout, mixed_precision=mixed_precision
    )
    if torch_dropout and dropout is not None:
        layer.attrs["dropout_rate"] = dropout
    known = layer.maybe_get_dim("nO")  # a ready module's last Linear
    if width is not None and known is not None and known != width:
        raise ValueError(
            f"with_padding({layer.name}): width={width}, but the module's last Linear "
            f"gives {known} outputs"
        )
    if width is not None:
        layer.set_dim("nO", width)
    return with_padding(layer)


def build_torch_bilstm_encoder(
    width: int, depth: int = 1, dropout: float = 0.0, mixed_precision: bool = False
) -> Encoder:
    """A bidirectional LSTM encoder (v1): `depth` layers, `width` units in all.

    A doc's outputs do not depend on its batch-mates (Thinc's `PyTorchLSTM` reads the padding).
    dropout: on each layer's input, at the caller's rate once training sets one.
    """
    return bilstm_encoder(width, depth, dropout, mixed_precision, residual=False)


def build_torch_bilstm_encoder_v2(
    width: int, depth: int = 1, dropout: float = 0.0, mixed_precision: bool = False
) -> Encoder:
    """The v1 LSTMs read around each token (the forward state before it, the backward state
    after it) with a normalised residual connection, `X + LayerNorm(context)`, as spaCy's CNN
    has: from scratch it learns as fast as the CNN, and an unseen word is read from its
    neighbours (`BiLSTM`'s `residual`)."""
    return bilstm_encoder(width, depth, dropout, mixed_precision, residual=True)


def bilstm_encoder(
    width: int, depth: int, dropout: float, mixed_precision: bool, residual: bool
) -> Encoder:
    BiLSTM(1, width, depth, dropout)  # check the arguments now, not at initialize
    factory = BiLSTMFactory(width, depth, dropout, residual)
    return build_torch_encoder(factory, width, True, dropout, mixed_precision)


def build_torch_transformer_encoder(
    width: int, depth: int = 2, heads: int = 4, dropout: float = 0.0, mixed_precision: bool = False
) -> Encoder:
    """A Transformer encoder (v1): projection to `width`, sinusoidal positions, `depth` layers
    of `heads` heads, padded keys masked. dropout: every dropout inside (attention included),
    at the caller's rate once training sets one."""
    return transformer_encoder(width, depth, heads, dropout, mixed_precision, residual=False)


def build_torch_transformer_encoder_v2(
    width: int, depth: int = 2, heads: int = 4, dropout: float = 0.0, mixed_precision: bool = False
) -> Encoder:
    """The v1 layers, then `Around` (each token's context from the other tokens, its position
    as the query, ending in the context norm), with the v2 BiLSTM's residual:
    `X + around(layers(X))` (`Transformer`'s `residual`)."""
    return transformer_encoder(width, depth, heads, dropout, mixed_precision, residual=True)


def transformer_encoder(
    width: int, depth: int, heads: int, dropout: float, mixed_precision: bool, residual: bool
) -> Encoder:
    Transformer(1, width, depth, heads, dropout)  # check the arguments now
    factory = TransformerFactory(width, depth, heads, dropout, residual)
    return build_torch_encoder(factory, width, True, dropout, mixed_precision)


class BiLSTMFactory:
    """`(nI, nO) -> BiLSTM`, built at initialize: nI from the sample data, else `width` (E5)."""

    __name__ = "BiLSTM"  # with_torch names the node after it: with_torch(BiLSTM)

    def __init__(self, width: int, depth: int, dropout: float, residual: bool = False) -> None:
        self.width, self.depth, self.dropout, self.residual = width, depth, dropout, residual

    def __call__(self, nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
        nI = input_width(nI, self.width)
        return BiLSTM(nI, self.width, self.depth, self.dropout, self.residual)


class TransformerFactory:
    """`(nI, nO) -> Transformer`, built at initialize: nI from the sample data, else `width`."""

    __name__ = "Transformer"

    def __init__(
        self, width: int, depth: int, heads: int, dropout: float, residual: bool = False
    ) -> None:
        self.width, self.depth, self.heads, self.dropout = width, depth, heads, dropout
        self.residual = residual

    def __call__(self, nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
        nI = input_width(nI, self.width)
        return Transformer(nI, self.width, self.depth, self.heads, self.dropout, self.residual)


def input_width(nI: Optional[int], width: int) -> int:
    """The input width: inferred from sample data, else the encoder's own `width` (E5).

    spaCy initializes a tok2vec without data in its own tests and fixtures, and its encoders
    (`MaxoutWindowEncoder`, `TorchBiLSTMEncoder`) take `width` inputs: spaCy's `Tok2Vec.v2`
    embeds each token into `width` columns before the encoder. A doc of another width is then
    refused by name at its first call (`with_padding`'s check).
    """
    return width if nI is None else nI


register(
    "architectures",
    {
        "torchlayers.TorchEncoder.v1": build_torch_encoder,
        "torchlayers.TorchBiLSTMEncoder.v1": build_torch_bilstm_encoder,
        "torchlayers.TorchBiLSTMEncoder.v2": build_torch_bilstm_encoder_v2,
        "torchlayers.TorchTransformerEncoder.v1": build_torch_transformer_encoder,
        "torchlayers.TorchTransformerEncoder.v2": build_torch_transformer_encoder_v2,
    },
)


__all__ = [
    "build_torch_encoder",
    "build_torch_bilstm_encoder",
    "build_torch_bilstm_encoder_v2",
    "build_torch_transformer_encoder",
    "build_torch_transformer_encoder_v2",
    "BiLSTM",
    "Transformer",
]
