"""A pretrained Hugging Face transformer as the `tok2vec` of spaCy components (import to register).

`torchlayers.HFTransformer.v1` is a `Model[List[Doc], List[Floats2d]]`: one row per spaCy token,
pooled from the word pieces of the model's fast tokenizer, through

    hf_transformer
      with_torch(AutoModel)                     # the transformer; Thinc owns every weight
      learn_rate_scale(with_torch(AutoModel))   # its step at a scaled rate (never called)

In a config (the `tok2vec` slot of `ner`, `tagger`, `textcat`, ..., or spaCy's `tok2vec`
component, whose listeners then share one transformer):

    [components.ner.model.tok2vec]
    @architectures = "torchlayers.HFTransformer.v1"
    name = "sentence-transformers/all-MiniLM-L6-v2"

Needs the `transformers` extra (`pip install 'thinc-torchlayers[transformers]'`); importing
this module imports neither spaCy nor `transformers`.
"""

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, cast

from thinc.api import ArgsKwargs, Model
from thinc.types import Floats2d

from .._checks import check_rate
from .._loading import Layer
from .._shim import TorchShim
from ..with_torch import with_torch
from ._hf_export import save_pretrained
from ._hf_learn_rate import learn_rate_node
from ._hf_pieces import POOLINGS, Batch, plan
from ._hf_source import HFSource, read_width
from ._registry import register

if TYPE_CHECKING:  # importing this module needs neither spaCy nor transformers
    from spacy.tokens import Doc

LAYER = "HFTransformer"


def build_hf_transformer(
    name: str,
    pooling: str = "mean",
    window: int = 128,
    stride: int = 96,
    frozen: bool = False,
    dropout: Optional[float] = None,
    mixed_precision: bool = False,
    learn_rate_scale: float = 1.0,
) -> Model[List["Doc"], List[Floats2d]]:
    """A pretrained transformer: one `(n_tokens, width)` array per doc, width its hidden size.

    Args:
        name: a Hugging Face hub id or a local directory (`save_pretrained` layout), read at
            `initialize` (config, fast tokenizer, weights). A saved pipeline carries all three:
            it loads with `name` gone and no network.
        pooling: how a token's row comes from its pieces: "mean", "first" or "last". A token
            without pieces (whitespace, characters the tokenizer drops) gets zeros.
        window, stride: a doc longer than `window` pieces (special pieces included) runs in
            windows of `window` pieces whose texts start `stride` pieces apart; each piece's
            row comes from the window where it sits most centrally. Nothing is truncated. Need
            `window > stride > 0`, `window` within the model's positions, and `stride` at most
            the window's text (`window` less the special pieces).
        frozen: run the transformer as in prediction, also in training: eval mode (its own
            dropout off), autograd off, no backward through it, no gradient and so no
            optimizer state for its weights. The layers above still train.
        dropout: the rate of the transformer's own dropout modules in training until the
            caller sets one (`nlp.update(drop=...)`, `[training] dropout` then rule); None:
            the rates of the model's config until then.
        mixed_precision: on CUDA, run the transformer under `torch.autocast` (see with_torch).
        learn_rate_scale: the transformer's weights step at this multiple of the optimizer's
            rate (Thinc's `lr_scale`, exact for Adam), the layers above at the rate itself;
            e.g. 0.1 trains fresh heads ten times faster than the pretrained weights.
    """
    check_settings(pooling, window, stride)
    if dropout is not None:
        check_rate(LAYER, dropout)
    source = HFSource(name)
    transformer: Model = with_torch(source, torch_dropout=True, mixed_precision=mixed_precision)
    if dropout is not None:
        transformer.attrs["dropout_rate"] = dropout
    model: Model[List[Doc], List[Floats2d]] = Layer(
        "hf_transformer",
        forward,
        init=init,
        dims={"nO": read_width(name)},  # spaCy's heads read tok2vec's nO at construction
        layers=[transformer, learn_rate_node(transformer, learn_rate_scale)],
        attrs={
            "hf_source": source,
            "pooling": pooling,
            "window": window,
            "stride": stride,
            "frozen": frozen,
        },
    )
    return model


def forward(
    model: Model[List["Doc"], List[Floats2d]], docs: List["Doc"], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    transformer = model.layers[0]
    ops = model.ops
    width = model.get_dim("nO")
    batch = tokenize(model, docs)
    if len(batch.input_ids) == 0:  # no doc has a piece: no call
        return [ops.alloc2f(n, width) for n in batch.doc_tokens], no_gradient
    X = ArgsKwargs(
        args=(),
        kwargs={
            "input_ids": ops.xp.asarray(batch.input_ids),
            "attention_mask": ops.xp.asarray(batch.attention_mask),
        },
    )
    train_transformer = is_train and not model.attrs["frozen"]
    out, backprop_transformer = transformer(X, is_train=train_transformer)
    hidden = out["last_hidden_state"]
    flat = hidden.reshape(-1, width)
    rows = ops.xp.asarray(batch.rows)
    lengths = ops.xp.asarray(batch.lengths)
    if len(rows):
        pooled = ops.reduce_mean(ops.as_contig(flat[rows]), lengths)
    else:
        pooled = ops.alloc2f(len(batch.lengths), width)
    Y = split(pooled, batch.doc_tokens)

    def backprop(dY: List[Floats2d]) -> List["Doc"]:
        d_flat = ops.alloc2f(*flat.shape)
        if len(rows):
            d_pooled = ops.xp.concatenate([ops.asarray2f(d) for d in dY])
            d_flat[rows] = ops.backprop_reduce_mean(d_pooled, lengths)
        backprop_transformer({"last_hidden_state": d_flat.reshape(hidden.shape)})
        return []

    return Y, backprop if train_transformer else no_gradient


def init(
    model: Model[List["Doc"], List[Floats2d]],
    X: Optional[List["Doc"]] = None,
    Y: Optional[List[Floats2d]] = None,
) -> None:
    """Read the config, tokenizer and weights from `name`, unless the transformer is built
    (loaded, or initialized before): then its weights are kept."""
    transformer = model.layers[0]
    shim = cast(TorchShim, transformer.shims[0])
    source: HFSource = model.attrs["hf_source"]
    if shim.module is None:
        source.read(LAYER)
        check_window(model, source)
        shim.factory = source  # a copy's attrs hold their own source
        transformer.initialize()
    model.set_dim("nO", int(source.setting("hidden_size")), force=True)


def tokenize(model: Model, docs: List["Doc"]) -> Batch:
    """Each doc's word pieces, windows and pooling map."""
    source: HFSource = model.attrs["hf_source"]
    pooling, window, stride = (model.attrs[k] for k in ("pooling", "window", "stride"))
    check_settings(pooling, window, stride)  # attrs may be set directly
    tokenizer = source.tokenizer(model.name)
    words = [[token.text for token in doc] for doc in docs]
    encoding = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    owners = [encoding.word_ids(i) for i in range(len(docs))]
    sizes = [len(doc) for doc in docs]
    specials = source.specials(model.name)
    return plan(encoding["input_ids"], owners, sizes, specials, window, stride, pooling)


def split(pooled: Any, sizes: List[int]) -> List[Floats2d]:
    out, start = [], 0
    for size in sizes:
        out.append(pooled[start : start + size])
        start += size
    return out


def no_gradient(dY: Any) -> List["Doc"]:
    return []


def check_settings(pooling: Any, window: Any, stride: Any) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"{LAYER}: pooling must be one of {POOLINGS}, got {pooling!r}")
    for what, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{LAYER}: {what} must be an int >= 1, got {value!r}")
    if not window > stride:
        raise ValueError(f"{LAYER}: window ({window}) must be larger than stride ({stride})")


def check_window(model: Model, source: HFSource) -> None:
    """The window within the model's positions; windows that overlap or touch."""
    window, stride = model.attrs["window"], model.attrs["stride"]
    limits = [source.setting("max_position_embeddings")]
    limits.append(getattr(source.tokenizer(model.name), "model_max_length", None))
    limit = min((n for n in limits if isinstance(n, int) and n > 0), default=None)
    if limit is not None and window > limit:
        raise ValueError(f"{LAYER}: window ({window}) exceeds the model's {limit} positions")
    specials = source.specials(model.name)
    text = window - len(specials.prefix) - len(specials.suffix)
    if stride > text:
        raise ValueError(
            f"{LAYER}: stride ({stride}) exceeds the window's text ({text} pieces: window "
            f"{window} less {window - text} special pieces): pieces between windows would be lost"
        )


register("architectures", {"torchlayers.HFTransformer.v1": build_hf_transformer})

__all__ = ["build_hf_transformer", "save_pretrained"]
