"""Hypothesis strategies shared by the property tests: small sizes, related values together."""

import copy
from typing import Callable, List, Optional, Tuple

import numpy
import torch
from hypothesis import strategies as st
from thinc.api import Linear, Model, chain

from torchlayers.averaged import averaged
from torchlayers.resizable import resizable
from torchlayers.with_torch import with_torch

SIZES = st.integers(1, 8)
ACTIVATIONS = [torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.Identity]


@st.composite
def mlp_stacks(draw: st.DrawFn, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A Sequential of 1-3 Linear layers (sizes 1-8) with activations between them."""
    widths: List[int] = draw(st.lists(SIZES, min_size=2, max_size=4))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    layers: List[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(n_in, n_out, bias=draw(st.booleans())))
        if i < len(widths) - 2:
            layers.append(draw(st.sampled_from(ACTIVATIONS))())
    return torch.nn.Sequential(*layers).to(dtype)


@st.composite
def module_and_input(
    draw: st.DrawFn, dtype: torch.dtype = torch.float32
) -> Tuple[torch.nn.Module, numpy.ndarray]:
    """An MLP stack and a batch (1-8 rows) of unit-scale inputs for it."""
    module = draw(mlp_stacks(dtype))
    n_in = next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).in_features
    batch = draw(SIZES)
    seed = draw(st.integers(0, 2**16))
    rng = numpy.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(batch, n_in)).astype(str(dtype).replace("torch.", ""))
    return module, X


# with_dropout

RATES = st.floats(0, 1, exclude_max=True)  # the drop rate: [0, 1)


def nonzero(rng: numpy.random.Generator, *shape: int) -> numpy.ndarray:
    """float32 values in ±[0.5, 2]: never zero, so a zero after dropout marks a dropped unit."""
    magnitude = rng.uniform(0.5, 2.0, size=shape)
    return (magnitude * rng.choice([-1.0, 1.0], size=shape)).astype("float32")


@st.composite
def nonzero_arrays(draw: st.DrawFn, max_dims: int = 3) -> numpy.ndarray:
    """A float32 array of 1-`max_dims` axes (sizes 1-8) with no zero entry."""
    shape = draw(st.lists(SIZES, min_size=1, max_size=max_dims))
    return nonzero(numpy.random.default_rng(draw(st.integers(0, 2**16))), *shape)


@st.composite
def sequence_batches(draw: st.DrawFn, min_length: int = 0) -> List[numpy.ndarray]:
    """1-8 sequences (time on axis 0, lengths `min_length`-8) of one width 1-8, no zero entry."""
    width = draw(SIZES)
    lengths = draw(st.lists(st.integers(min_length, 8), min_size=1, max_size=8))
    rng = numpy.random.default_rng(draw(st.integers(0, 2**16)))
    return [nonzero(rng, length, width) for length in lengths]


# averaged

DECAYS = st.sampled_from([0.0, 0.5, 0.9, 0.9999]) | st.floats(0, 1)  # max_decay: [0, 1]


@st.composite
def averaged_twins(draw: st.DrawFn) -> Tuple[Model, Model, numpy.ndarray]:
    """Two identical, independently built averaged() models over an MLP stack (with or without a
    Thinc Linear head), and their input."""
    module, X = draw(module_and_input())
    n_out = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
    head = draw(st.one_of(st.none(), SIZES))
    max_decay = draw(DECAYS)
    seed = draw(st.integers(0, 2**16))

    def build(module: torch.nn.Module) -> Model:
        numpy.random.seed(seed)  # Thinc initializes Linear with numpy's global generator
        layer = with_torch(module)
        if head is not None:
            layer = chain(layer, Linear(head, n_out))
        model = averaged(layer, max_decay=max_decay)
        model.initialize(X=X)
        return model

    return build(module), build(copy.deepcopy(module)), X


@st.composite
def averaged_models(draw: st.DrawFn) -> Tuple[Model, numpy.ndarray]:
    """averaged() over an MLP stack, with or without a Thinc Linear head, and its input."""
    model, _, X = draw(averaged_twins())
    return model, X


# resizable

FILLS = st.sampled_from([0.0, -1e4]) | st.floats(-2, 2, width=32)


@st.composite
def resizable_layers(draw: st.DrawFn, fill: Optional[float] = None) -> Tuple[Model, numpy.ndarray]:
    """A built resizable layer and a float32 batch for it: an MLP stack in with_torch, or
    1-2 Thinc Linear layers (W/b); the bias fill drawn unless given."""
    fill = draw(FILLS) if fill is None else fill
    if draw(st.booleans()):
        module, X = draw(module_and_input())
        return resizable(with_torch(module), fill=fill), X
    widths = draw(st.lists(SIZES, min_size=2, max_size=3))
    numpy.random.seed(draw(st.integers(0, 2**16)))  # Thinc initializes Linear with numpy
    layers = [Linear(n_out, n_in) for n_in, n_out in zip(widths, widths[1:])]
    model = resizable(chain(*layers) if len(layers) > 1 else layers[0], fill=fill)
    X = numpy.random.uniform(-1, 1, size=(draw(SIZES), widths[0])).astype("float32")
    model.initialize(X=X)
    return model, X


@st.composite
def embeddings_and_ids(draw: st.DrawFn) -> Tuple[Model, numpy.ndarray]:
    """A resizable with_torch(nn.Embedding) (1-8 rows of 1-8 columns) and 1-8 ids for it."""
    rows, width = draw(SIZES), draw(SIZES)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    ids = draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=8))
    model = resizable(with_torch(torch.nn.Embedding(rows, width)), fill=draw(FILLS))
    return model, numpy.asarray(ids, dtype="int64")


# averaged and resizable together


@st.composite
def averaged_resizable_layers(draw: st.DrawFn) -> Tuple[Model, numpy.ndarray]:
    """A built resizable layer (as resizable_layers) under an averaged node, or an averaged node
    under the resizable one (both nestings resize the averages), and its input."""
    layer, X = draw(resizable_layers())
    max_decay = draw(DECAYS)
    if draw(st.booleans()):
        model = averaged(layer, max_decay=max_decay)
    else:
        model = resizable(averaged(layer.layers[0], max_decay=max_decay), fill=layer.attrs["fill"])
    model.initialize(X=X)
    return model, X


@st.composite
def saved_models(draw: st.DrawFn) -> Tuple[Model, numpy.ndarray, Callable[[int], Model]]:
    """A trained model nesting the four combinators (and a Thinc layer) at random, an input
    batch, and `build(seed)`: the same architecture with other weights."""
    from thinc.api import Adam, Relu

    from torchlayers.with_dropout import with_dropout

    n_in, n_hidden, n_out = draw(SIZES), draw(SIZES), draw(SIZES)
    parts = draw(st.lists(st.sampled_from(["dropout", "resizable", "averaged", "thinc"]),
                          max_size=4, unique=True))  # fmt: skip
    batch_norm = draw(st.booleans())

    def build(seed: int) -> Model:
        torch.manual_seed(seed)
        layers: List[torch.nn.Module] = [torch.nn.Linear(n_in, n_hidden)]
        if batch_norm:
            layers.append(torch.nn.BatchNorm1d(n_hidden))
        layers.append(torch.nn.Linear(n_hidden, n_out))
        model: Model = with_torch(torch.nn.Sequential(*layers))
        for part in parts:
            if part == "dropout":
                model = with_dropout(model, 0.1)
            elif part == "resizable":
                model = resizable(model)
            elif part == "averaged":
                model = averaged(model)
            else:
                model = chain(model, Relu(n_out, n_out))
        if parts and parts[-1] == "thinc":  # a torchlayers root checks the whole message
            model = with_dropout(model, 0.0)
        return model

    X = numpy.random.default_rng(draw(st.integers(0, 99))).uniform(-1, 1, (4, n_in))
    X = X.astype("float32")
    model = build(0)
    model.initialize(X=X)
    Y, backprop = model(X, is_train=True)
    backprop(numpy.ones_like(Y))
    model.finish_update(Adam(0.01))
    return model, X, build


# -- torch_ner: BILUO score matrices and CRF cases ----------------------------------------------


@st.composite
def biluo_scores(
    draw: st.DrawFn, max_labels: int = 3, max_len: int = 8, max_docs: int = 4
) -> Tuple[int, List[numpy.ndarray]]:
    """(n_labels, one (length, 1 + 4 * n_labels) float32 score matrix per doc); lengths 0-8,
    scores anywhere in [-1e3, 1e3] (ties included: drawn from a few values or freely)."""
    n_labels = draw(st.integers(0, max_labels))
    n_tags = 1 + 4 * n_labels
    lengths = draw(st.lists(st.integers(0, max_len), min_size=1, max_size=max_docs))
    values = st.one_of(
        st.sampled_from([-1.0, 0.0, 1.0]),
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32),
    )
    docs = [
        numpy.array(
            draw(st.lists(values, min_size=n * n_tags, max_size=n * n_tags)), dtype="f"
        ).reshape((n, n_tags))
        for n in lengths
    ]
    return n_labels, docs


@st.composite
def crf_cases(
    draw: st.DrawFn,
) -> Tuple[int, numpy.ndarray, numpy.ndarray, numpy.ndarray, List[int]]:
    """(n_labels 1-2, transitions (n+2, n+2), emissions (docs, 4, n+1), gold masks, lengths 1-4):
    unit-scale scores; each token's gold allows one tag or (missing annotation) all of them."""
    n_labels = draw(st.integers(1, 2))
    n_tags = 1 + 4 * n_labels
    lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    rng = numpy.random.RandomState(draw(st.integers(0, 2**16)))
    transitions = rng.uniform(-2, 2, (n_tags + 1, n_tags + 1)).astype("f")
    emissions = rng.uniform(-3, 3, (len(lengths), 4, n_tags)).astype("f")
    gold = numpy.ones((len(lengths), 4, n_tags), dtype=bool)
    for doc, length in enumerate(lengths):
        for t in range(length):
            if draw(st.booleans()):  # annotated: only O or a U- tag keep every sequence valid
                gold[doc, t] = False
                gold[doc, t, draw(st.sampled_from([0] + [4 * k + 4 for k in range(n_labels)]))] = (
                    True
                )
    return n_labels, transitions, emissions, gold, lengths


@st.composite
def gradient_arrays(draw: st.DrawFn) -> List[numpy.ndarray]:
    """1-8 arrays of 0-3 dims (sizes 1-8 each), float32 or float64 mixed, seeded values."""
    arrays = []
    for _ in range(draw(SIZES)):
        shape = tuple(draw(st.lists(SIZES, max_size=3)))
        dtype = draw(st.sampled_from(["float32", "float64"]))
        seed = draw(st.integers(0, 2**16))
        arrays.append(numpy.random.default_rng(seed).standard_normal(shape).astype(dtype))
    return arrays


@st.composite
def doc_batches(draw: st.DrawFn, width: int = 4) -> List[numpy.ndarray]:
    """1-6 docs of 0-12 rows each, `width` unit-scale floats a row (empty docs anywhere)."""
    lengths = draw(st.lists(st.integers(0, 12), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**16))
    rng = numpy.random.default_rng(seed)
    return [rng.uniform(-1, 1, (n, width)).astype("float32") for n in lengths]


@st.composite
def new_type_cases(
    draw: st.DrawFn,
) -> Tuple[int, List[int], numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """(n_labels 1-3, annotated label indices, student and teacher scores (length 1-8, tags),
    gold ids): the gold holds spans of annotated types only (U- or B- I-* L-), O elsewhere,
    some tokens missing (-1); unit-to-large scores, seeded."""
    n_labels = draw(st.integers(1, 3))
    annotated = sorted(draw(st.sets(st.integers(0, n_labels - 1), min_size=1)))
    length = draw(st.integers(1, 8))
    rng = numpy.random.RandomState(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0, 10.0]))
    student, teacher = rng.normal(0, scale, (2, length, 1 + 4 * n_labels)).astype("f")
    gold = numpy.zeros((length,), dtype="i")
    t = 0
    while t < length:
        size = draw(st.integers(0, min(3, length - t)))  # 0: an O token
        if size:
            base = 1 + 4 * draw(st.sampled_from(annotated))
            tags = [base + 3] if size == 1 else [base] + [base + 1] * (size - 2) + [base + 2]
            gold[t : t + size] = tags
        t += max(size, 1)
    missing = numpy.array(draw(st.lists(st.booleans(), min_size=length, max_size=length)))
    gold[missing] = -1
    return n_labels, annotated, student, teacher, gold
