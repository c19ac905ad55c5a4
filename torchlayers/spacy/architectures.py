"""Architectures for spaCy components built from the four combinators (import to register).

`torchlayers.TorchTextCat.v1` is a model for spaCy's `textcat` and `textcat_multilabel`:

    averaged(
        tok2vec >> list2ragged >> reduce_mean                 # spaCy featurizer, mean-pooled
        >> with_dropout(hidden, dropout)                      # a torch MLP (default below)
        >> resizable(with_torch(nn.Linear factory), fill)     # one output unit per label
        >> softmax or sigmoid
    )

spaCy sets the output size from the labels at `initialize` and calls
`model.attrs["resize_output"](model, n)` on the root at `add_label`, also after training.

`torchlayers.TorchTagger.v1` is a model for spaCy's `tagger`: the same pieces, per token:

    averaged(
        tok2vec >> with_array(                                # one row per token
            with_dropout(hidden, dropout)
            >> resizable(with_torch(nn.Linear factory), -16)  # one output unit per tag
            >> softmax_scores
        )
    )

spaCy's `Tagger.add_label` does not resize the model: after training, follow it with
`tagger.set_output(len(tagger.labels))`, which calls the root's `attrs["resize_output"]`.

Importing this module without spaCy works (the functions can be called directly); the names are
registered in `spacy.registry.architectures` only where spaCy is importable.
"""

from typing import Any, Callable, List, Optional, Tuple

import torch
from thinc.api import (
    Model,
    chain,
    list2ragged,
    reduce_mean,
    registry,
    sigmoid_activation,
    with_array,
)
from thinc.types import Floats2d

from ..averaged import averaged
from ..resizable import resizable, resize_output
from ..with_dropout import with_dropout
from ..with_torch import with_torch
from ._registry import register

# A new exclusive class starts at probability ~e^-16 of the old ones' mass: below float32
# rounding of the old probabilities; softmax_scores passes it the gradient p - truth, so it
# learns. (spaCy's own textcat uses -5000: probability exactly 0.)
SOFTMAX_FILL = -16.0


def build_torch_textcat(
    tok2vec: Model[List[Any], List[Floats2d]],
    exclusive_classes: bool,
    hidden_width: int = 64,
    dropout: float = 0.0,
    hidden: Optional[Model[Floats2d, Floats2d]] = None,
    max_decay: float = 0.999,
    nO: Optional[int] = None,
) -> Model[List[Any], Floats2d]:
    """A text classifier for spaCy's textcat / textcat_multilabel using all four combinators.

    Registered as `torchlayers.TorchTextCat.v1` (spaCy `architectures`). spaCy sets the output
    size from the labels at `initialize` and calls `model.attrs["resize_output"]` at
    `add_label`, also after training.

    Args:
        tok2vec: a spaCy token-to-vector layer (docs -> one array per doc); its rows are
            averaged per doc.
        exclusive_classes: `True`: softmax over the labels (`textcat`; `softmax_scores`, trained
            as with cross-entropy). `False`: a sigmoid per label (`textcat_multilabel`). A label
            added after training starts at probability ~0 (softmax, bias -16) or 0.5 (sigmoid,
            bias 0) and leaves the old labels' scores unchanged.
        hidden_width: the width of the default hidden MLP.
        dropout: the initial rate of `with_dropout` on the hidden layer's output (and of the
            default module's own `nn.Dropout`); `nlp.update(drop=...)` and `spacy train` set
            both at every update.
        hidden: the hidden layer, e.g. `with_torch` around a module from a function of yours
            (see examples/spacy_demo). Default: `with_torch(torch_dropout=True)` around
            Linear(nI, hidden_width) -> ReLU -> Dropout -> Linear -> ReLU, built at
            `initialize` once the input width is known.
        max_decay: the `averaged` EMA's maximum decay; `torchlayers.use_averages(model)` swaps
            the average in.
        nO: the number of labels, if known; spaCy sets it from the labels.

    Returns:
        `averaged(tok2vec >> list2ragged >> reduce_mean >> with_dropout(hidden) >>
        resizable(with_torch(Linear)) >> softmax_scores or sigmoid)`, with
        `attrs["resize_output"]` on the root.

    Shape:
        In: a list of docs. Out: `(n_docs, n_labels)` probabilities.
    """
    if hidden is None:
        hidden = default_hidden(hidden_width, dropout)
    activation = softmax_scores() if exclusive_classes else sigmoid_activation()
    output: Model[Floats2d, Floats2d] = with_torch(output_linear)
    fill = SOFTMAX_FILL if exclusive_classes else 0.0
    model: Model[List[Any], Floats2d] = averaged(
        chain(
            tok2vec,
            list2ragged(),
            reduce_mean(),
            with_dropout(hidden, dropout),
            resizable(output, fill=fill),
            activation,
        ),
        max_decay=max_decay,
    )
    model.attrs["resize_output"] = resize_output  # what TrainablePipe.add_label calls
    if nO is not None:
        resize_output(model, nO)
    return model


def build_torch_tagger(
    tok2vec: Model[List[Any], List[Floats2d]],
    hidden_width: int = 64,
    dropout: float = 0.0,
    hidden: Optional[Model[Floats2d, Floats2d]] = None,
    max_decay: float = 0.999,
    nO: Optional[int] = None,
) -> Model[List[Any], List[Floats2d]]:
    """A per-token tagger for spaCy's `tagger` using all four combinators.

    Registered as `torchlayers.TorchTagger.v1` (spaCy `architectures`).

    Args:
        tok2vec: a spaCy token-to-vector layer (docs -> one array of token rows per doc).
        hidden_width: the width of the default hidden MLP.
        dropout: as for `torchlayers.TorchTextCat.v1`: the initial rate, which
            `nlp.update(drop=...)` sets.
        hidden: the layer run on each token's row (default: a torch MLP of width
            `hidden_width`). It sees the tokens of every doc of the batch stacked in one
            array, so it must not mix rows: a sequence module here (a `TransformerEncoder`)
            would attend across docs. Put context in `tok2vec` instead.
        max_decay: the `averaged` EMA's maximum decay.
        nO: the number of tags, if known; spaCy's tagger sets it from the labels at
            `initialize` (it passes one-hot gold rows as Y, and the output layer takes their
            width).

    Returns:
        `averaged(tok2vec >> with_array(with_dropout(hidden) >> resizable(with_torch(Linear))
        >> softmax_scores))`, with `attrs["resize_output"]` on the root.

    Shape:
        In: a list of docs. Out: one `(n_tokens, n_tags)` array of tag probabilities per doc,
        from `softmax_scores`: spaCy's tagger loss hands it `scores - truths`, the logits'
        cross-entropy gradient.

    Adding a tag to a trained tagger: spaCy 3.8's `Tagger.add_label` only appends the label
    (`_allow_extra_label` lets it through because the root carries attrs["resize_output"]);
    it does not resize the model, unlike textcat's. Follow it with
    `tagger.set_output(len(tagger.labels))` (`TrainablePipe.set_output` calls
    `attrs["resize_output"]`): the new tag's logit starts at -16, so it gets probability
    ~e^-16 and the old tags' probabilities are unchanged to float32 rounding; it then learns.
    Without `set_output`, the model keeps the old width: the new tag is never predicted and
    training on it fails in spaCy's loss (labels and scores differ in width).
    """
    if hidden is None:
        hidden = default_hidden(hidden_width, dropout)
    output: Model[Floats2d, Floats2d] = with_torch(output_linear)
    per_token: Model[Floats2d, Floats2d] = chain(
        with_dropout(hidden, dropout),
        resizable(output, fill=SOFTMAX_FILL),
        softmax_scores(),
    )
    model: Model[List[Any], List[Floats2d]] = averaged(
        chain(tok2vec, with_array(per_token)),
        max_decay=max_decay,
    )
    model.attrs["resize_output"] = resize_output  # what TrainablePipe.set_output calls
    if nO is not None:
        resize_output(model, nO)
    return model


def default_hidden(width: int, dropout: float) -> Model[Floats2d, Floats2d]:
    """Return the default hidden layer: `MLPFactory` in `with_torch`, its Dropout at the caller's
    rate.

    Args:
        width: the MLP's width (its `nO`).
        dropout: the initial rate of its `nn.Dropout`, in `attrs["dropout_rate"]`.

    Returns:
        `with_torch(MLPFactory(width, dropout), torch_dropout=True)`, built at `initialize`.
    """
    hidden: Model[Floats2d, Floats2d] = with_torch(MLPFactory(width, dropout), torch_dropout=True)
    hidden.set_dim("nO", width)  # else chain's init would give it the labels' width
    hidden.attrs["dropout_rate"] = dropout
    return hidden


@registry.layers("torchlayers.softmax_scores.v1")
def softmax_scores() -> Model[Floats2d, Floats2d]:
    """Softmax whose backprop takes `dY` as the gradient of the logits, as Thinc's `Softmax`.

    Registered as `torchlayers.softmax_scores.v1` (Thinc `layers`). spaCy's textcat sends
    `dY = scores - truths`: the logit gradient of cross-entropy. Thinc's `softmax_activation`
    multiplies it by softmax's Jacobian instead (the gradient of the squared error), which
    vanishes for a saturated or brand-new class: a label added after training, starting at
    probability ~e^-16, would not learn. Use it only as the last layer, before a loss of that
    form (spaCy's textcat; `CategoricalCrossentropy`'s `d_scores`).

    Returns:
        A layer without parameters: `softmax(X)` forward, `dY` unchanged backward.

    Shape:
        In: `(n, n_classes)` logits. Out: `(n, n_classes)` probabilities, rows summing to 1.
    """
    return Model("softmax_scores", softmax_scores_forward)


def softmax_scores_forward(
    model: Model[Floats2d, Floats2d], X: Floats2d, is_train: bool
) -> Tuple[Floats2d, Callable]:
    def backprop(dY: Floats2d) -> Floats2d:
        return dY

    return model.ops.softmax(X, inplace=False), backprop


class MLPFactory:
    """`(nI, nO) -> nn.Module`: the default hidden MLP, built at initialize with the dims.

    Args:
        width: the hidden width, used when `nO` is not set.
        dropout: the `nn.Dropout` rate it is built with.

    Calling it with `(nI, nO)` returns Linear(nI, w) -> ReLU -> Dropout -> Linear(w, w) -> ReLU,
    with `w = nO` if given, else `width`; `nI=None` raises `ValueError`.
    """

    __name__ = "torch_mlp"  # with_torch names the node after it: with_torch(torch_mlp)

    def __init__(self, width: int, dropout: float) -> None:
        self.width = width
        self.dropout = dropout

    def __call__(self, nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
        if nI is None:
            raise ValueError("torch_mlp: the input width is unknown; initialize with data")
        width = self.width if nO is None else nO
        return torch.nn.Sequential(
            torch.nn.Linear(nI, width),
            torch.nn.ReLU(),
            torch.nn.Dropout(self.dropout),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
        )


def output_linear(nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
    """Build the output layer: one unit per label, once spaCy has set nO.

    Args:
        nI: the input width (the hidden layer's).
        nO: the number of labels.

    Returns:
        `nn.Linear(nI, nO)`.

    Raises:
        ValueError: `nI` or `nO` is not known yet.
    """
    if nI is None or nO is None:
        raise ValueError(f"output_linear: need nI and nO to build, got nI={nI}, nO={nO}")
    return torch.nn.Linear(nI, nO)


register(
    "architectures",
    {
        "torchlayers.TorchTextCat.v1": build_torch_textcat,
        "torchlayers.TorchTagger.v1": build_torch_tagger,
    },
)
