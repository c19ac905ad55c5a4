"""`torchlayers.TorchNER.v1`: the model of the `torch_ner` component (import to register).

    torch_ner(
        tok2vec >> with_array(                                   # per-token scores ("emissions")
            with_dropout(hidden, dropout)                        # a torch MLP
            >> resizable(with_torch(nn.Linear factory), -16)     # one unit per BILUO tag
        ),
        resizable(with_torch(LinearChainCRF), fill)              # only with transitions = true
    )

With `max_decay` set (a float), each child is wrapped in `averaged(..., max_decay)`: an EMA of
its weights for `use_averages`. The default, None, has none: spaCy evaluates and saves with the
optimizer's averages (`nlp.use_params(optimizer.averages)`), never with this EMA, which cost
time on every update and doubled the saved size (see docs/torch_ner.md).

The forward pass is the first child's: one (n_tokens, n_tags) array of raw scores per doc. The
CRF child is not run by the forward pass: the component's `get_loss` runs it on the scores and
the gold tags (see `torchlayers/spacy/ner.py`), and decoding reads its transition matrix. Being
a child of the root, it is still under `finish_update`, `use_params`, `use_averages`,
`to_bytes`/`from_bytes`, `copy` and `set_dropout_rate` like every other node.

`model.attrs["resize_output"](model, n_tags)` (spaCy's `set_output`) grows the output layer and
the CRF's matrix together: new output units get weight 0 and bias -16, new transitions out of a
new tag 0 and into it `TRANSITION_FILL`; every old score is kept, so every old decode is too.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

from thinc.api import Model, chain, with_array
from thinc.types import Floats2d

from .._loading import Layer
from ..averaged import averaged
from ..resizable import resizable, resize_input, resize_output
from ..with_dropout import with_dropout
from ..with_torch import with_torch
from ._registry import register
from .architectures import SOFTMAX_FILL, default_hidden, output_linear
from .crf import linear_chain_crf

# A new tag's score starts at exactly -16 (weights 0, bias -16): a path through it loses to the
# same path with O in its place wherever O scores above -16, so old decodes stay as they were.
OUTPUT_FILL = SOFTMAX_FILL
# Into a new tag (new columns of the CRF matrix). Learned transitions move by about the learning
# rate per update, so a far-below start would never recover; the output fill keeps new tags
# out of old decodes.
TRANSITION_FILL = 0.0


def build_torch_ner(
    tok2vec: Model[List[Any], List[Floats2d]],
    hidden_width: int = 64,
    dropout: float = 0.0,
    max_decay: Optional[float] = None,
    nO: Optional[int] = None,
    transitions: bool = False,
) -> Model[List[Any], List[Floats2d]]:
    """A named-entity model for `torch_ner`: per-token BILUO scores from a torch MLP and output
    layer, optionally with a linear-chain CRF's learned transitions.

    tok2vec: a spaCy token-to-vector layer (docs -> one array of token rows per doc).
    hidden_width, dropout: as for `torchlayers.TorchTagger.v1` (a torch MLP of width
        `hidden_width`, caller-controlled dropout).
    max_decay: None (default): no EMA of the weights (spaCy uses its optimizer's averages). A
        float in [0, 1]: wrap the emissions and the CRF in `averaged(..., max_decay)`, as every
        config that sets it got before the default changed (0.999 until 2026-12-06).
    nO: the number of BILUO tags (1 + 4 * types), if known; `torch_ner` sets it from its labels.
    transitions: add a `LinearChainCRF` child; `torch_ner` then trains with the CRF loss and
        decodes with the learned transition scores. Without it: softmax cross-entropy per token,
        and decoding with BILUO's constraints alone.
    Out: one (n_tokens, n_tags) float array of unnormalised scores per doc.
    """
    hidden = default_hidden(hidden_width, dropout)
    output: Model[Floats2d, Floats2d] = with_torch(output_linear)
    per_token: Model[Floats2d, Floats2d] = chain(
        with_dropout(hidden, dropout), resizable(output, fill=OUTPUT_FILL)
    )
    emissions: Model[List[Any], List[Floats2d]] = chain(tok2vec, with_array(per_token))
    if max_decay is not None:
        emissions = averaged(emissions, max_decay=max_decay)
    layers = [emissions]
    refs: Dict[str, Optional[Model]] = {}
    if transitions:
        transition_node: Model = with_torch(linear_chain_crf)
        crf: Model = resizable(transition_node, fill=TRANSITION_FILL)
        if max_decay is not None:
            crf = averaged(crf, max_decay=max_decay)
        layers.append(crf)
        refs["crf"] = crf  # what get_loss runs
        refs["transitions"] = transition_node  # whose transitions.weight decoding reads
    model: Model[List[Any], List[Floats2d]] = Layer(  # loads only data it checked whole
        "torch_ner",
        forward,
        init=init,
        layers=layers,
        refs=refs,
        dims={"nO": None},
        attrs={"resize_output": resize_ner, "transitions": bool(transitions)},
    )
    if nO is not None:
        resize_ner(model, nO)
    return model


def forward(
    model: Model[List[Any], List[Floats2d]], docs: List[Any], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    return model.layers[0](docs, is_train)


def init(
    model: Model[List[Any], List[Floats2d]],
    X: Optional[List[Any]] = None,
    Y: Optional[List[Floats2d]] = None,
) -> None:
    if model.maybe_get_dim("nO") is None:
        raise ValueError(
            f"{model.name}: the number of tags is unknown; add the entity types first "
            "(torch_ner's initialize collects them from the examples)"
        )
    for layer in model.layers:
        layer.initialize(X if layer is model.layers[0] else None)


def resize_ner(model: Model, n_tags: int) -> Model:
    """Set or grow the number of BILUO tags: the output layer's units and the CRF's matrix."""
    if isinstance(n_tags, bool) or not isinstance(n_tags, int) or n_tags < 1 or (n_tags - 1) % 4:
        raise ValueError(f"{model.name}: n_tags must be 1 + 4 * types, got {n_tags!r}")
    resize_output(model.layers[0], n_tags)
    if model.has_ref("crf"):
        crf = model.get_ref("crf")
        resize_output(crf, n_tags + 1)  # into each tag: new columns, TRANSITION_FILL
        resize_input(crf, n_tags + 1)  # out of each tag: new rows, 0
    model.set_dim("nO", n_tags, force=True)
    return model


register(
    "architectures",
    {
        "torchlayers.TorchNER.v1": build_torch_ner,
    },
)
