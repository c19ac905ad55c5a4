"""with_dropout (D1-D8) and with_torch's torch_dropout (D6): small named cases."""

from typing import Any, Callable, Dict, List, Tuple

import numpy
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import (
    Dropout,
    Linear,
    Model,
    Padded,
    Ragged,
    chain,
    concatenate,
    fix_random_seed,
    noop,
    registry,
    set_dropout_rate,
    with_array,
    with_padded,
)

from torchlayers.with_dropout import with_dropout
from torchlayers.with_torch import with_torch

RTOL = 1e-6  # float32: the kept scale 1/(1-rate) is rounded to float32 once
F64_RTOL = 1e-6  # finite differences in float64 with eps=1e-6: truncation error ~eps


def inputs(*shape: int, seed: int = 0) -> numpy.ndarray:
    """Values in ±[0.5, 2]: never zero, so a zero output means a dropped unit."""
    rng = numpy.random.default_rng(seed)
    magnitude = rng.uniform(0.5, 2.0, size=shape)
    return (magnitude * rng.choice([-1.0, 1.0], size=shape)).astype("float32")


def recorded_layer() -> Tuple[Model, Dict[str, Any]]:
    """A layer that doubles its input and keeps what it returned, to check identity."""
    seen: Dict[str, Any] = {}

    def forward(model: Model, X: Any, is_train: bool) -> Tuple[Any, Callable]:
        def backprop(dY: Any) -> Any:
            seen["dY"] = dY
            return dY * 2

        seen["Y"], seen["backprop"] = X * 2, backprop
        return seen["Y"], backprop

    return Model("double", forward), seen


def torch_mlp(dropout: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(6, 3)
    ).to(dtype)


# D1


def test_training_output_is_layer_output_times_inverted_mask() -> None:
    """D1: Y = layer(X) * mask, mask entries 0 or 1/(1-rate)."""
    rate = 0.4
    model = with_dropout(Linear(5, 3), rate)
    X = inputs(64, 3)
    model.initialize(X=X)
    full = model.layers[0].predict(X)
    Y, _ = model(X, is_train=True)
    kept = Y != 0
    assert 0 < kept.mean() < 1
    assert_allclose(Y, full * kept / (1 - rate), rtol=RTOL)


def test_backprop_masks_dY_before_the_layer() -> None:
    """D1: dX = backprop_layer(dY * mask), the mask the forward pass used."""
    rate = 0.5
    layer, seen = recorded_layer()
    model = with_dropout(layer, rate)
    X = inputs(8, 5)
    Y, backprop = model(X, is_train=True)
    mask = Y / seen["Y"]
    assert set(numpy.unique(mask).tolist()) <= {0.0, numpy.float32(1 / (1 - rate))}
    dY = inputs(8, 5, seed=1)
    dX = backprop(dY)
    assert_array_equal(seen["dY"], dY * mask)
    assert_array_equal(dX, dY * mask * 2)


def test_gradient_matches_finite_differences_with_the_mask_fixed() -> None:
    """D1: with the mask fixed, dX is the gradient of sum(layer(X) * mask * dY) (float64)."""
    rate, eps = 0.3, 1e-6
    model = with_dropout(with_torch(torch_mlp(dtype=torch.float64)), rate)
    inner = model.layers[0]
    X = inputs(5, 4).astype("float64")
    Y, backprop = model(X, is_train=True)
    mask = (Y != 0) / (1 - rate)
    dY = inputs(5, 3, seed=1).astype("float64")
    dX = backprop(dY)

    def loss(X: numpy.ndarray) -> float:
        return float((inner.predict(X) * mask * dY).sum())

    numeric = numpy.zeros_like(X)
    for index in numpy.ndindex(X.shape):
        step = numpy.zeros_like(X)
        step[index] = eps
        numeric[index] = (loss(X + step) - loss(X - step)) / (2 * eps)
    assert_allclose(dX, numeric, rtol=F64_RTOL, atol=1e-8)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_same_draws_as_thincs_dropout(rate: float) -> None:
    """D1, D8: under one fix_random_seed, the mask is bit for bit Thinc's Dropout mask."""
    X = inputs(50, 40)
    fix_random_seed(7)
    ours, _ = with_dropout(noop(), rate)(X, is_train=True)
    fix_random_seed(7)
    theirs, _ = Dropout(rate)(X, is_train=True)
    assert ours.dtype == theirs.dtype == numpy.float32
    assert_array_equal(ours, theirs)


# D2


def test_set_dropout_rate_reaches_a_nested_node() -> None:
    """D2: set_dropout_rate on a composed model sets attrs and changes the training output."""
    dropout = with_dropout(Linear(4, 3), 0.0)
    model = chain(dropout, Linear(2, 4))
    X = inputs(16, 3)
    model.initialize(X=X)
    Y0, _ = model(X, is_train=True)
    assert_array_equal(Y0, model.predict(X))
    set_dropout_rate(model, 0.5)
    assert dropout.attrs["dropout_rate"] == 0.5
    hidden, _ = dropout(X, is_train=True)
    assert (hidden == 0).any()


def test_rate_survives_serialization_and_copy() -> None:
    """D2: the rate is a plain attr, kept by to_bytes/from_bytes and copy()."""
    model = with_dropout(Linear(4, 3), 0.2, mode="variational")
    model.initialize()
    set_dropout_rate(model, 0.35)
    loaded = with_dropout(Linear(4, 3), 0.0).from_bytes(model.to_bytes())
    assert loaded.attrs["dropout_rate"] == 0.35
    assert loaded.attrs["dropout_mode"] == "variational"
    assert model.copy().attrs["dropout_rate"] == 0.35


def test_spacy_update_drop_sets_the_rate() -> None:
    """D2, D4, D5, C1: nlp.update(drop=...) sets the rate of a with_dropout tok2vec (config)."""
    spacy = pytest.importorskip("spacy")
    from spacy.training import Example

    nlp = spacy.blank("en")
    tok2vec = {
        "@architectures": "spacy.HashEmbedCNN.v2",
        **dict(width=8, depth=1, embed_size=50, window_size=1, maxout_pieces=2),
        **dict(subword_features=False, pretrained_vectors=None),
    }
    model = {
        "@architectures": "spacy.Tagger.v2",
        "nO": None,
        "tok2vec": {"@layers": "torchlayers.with_dropout.v1", "layer": tok2vec, "rate": 0.0,
                    "mode": "variational"},
    }  # fmt: skip
    tagger = nlp.add_pipe("tagger", config={"model": model})
    examples = [Example.from_dict(nlp.make_doc("I like cats"), {"tags": ["N", "V", "N"]})]
    nlp.initialize(lambda: examples)
    node = tagger.model.get_ref("tok2vec")
    assert node.name.startswith("with_dropout(")
    nlp.update(examples, drop=0.3, sgd=None)
    assert node.attrs["dropout_rate"] == 0.3
    nlp.update(examples, drop=0.0, sgd=None)
    assert node.attrs["dropout_rate"] == 0.0


# D3


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_prediction_returns_the_very_output(rate: float) -> None:
    """D3: at prediction the layer's output object comes back, whatever the rate."""
    layer, seen = recorded_layer()
    Y = with_dropout(layer, rate).predict(inputs(4, 3))
    assert Y is seen["Y"]


def test_rate_zero_training_returns_output_and_backprop_untouched() -> None:
    """D3: rate 0 in training: the layer's own output and backprop callback, no mask."""
    layer, seen = recorded_layer()
    Y, backprop = with_dropout(layer, 0.0)(inputs(4, 3), is_train=True)
    assert Y is seen["Y"]
    assert backprop is seen["backprop"]


# D4, D5


def sequences() -> List[numpy.ndarray]:
    """Three sequences of 6 features, lengths 3, 1, 5."""
    return [inputs(n, 6, seed=n) for n in (3, 1, 5)]


def test_ragged_output() -> None:
    """D4: a Ragged output keeps its lengths; data and dY data are masked alike."""
    Xs = sequences()
    X = Ragged(numpy.concatenate(Xs), numpy.array([len(x) for x in Xs], dtype="int32"))
    Y, backprop = with_dropout(noop(), 0.5)(X, is_train=True)
    assert isinstance(Y, Ragged) and Y.lengths is X.lengths
    mask = Y.data / X.data
    dX = backprop(Ragged(numpy.ones_like(X.data), X.lengths))
    assert_array_equal(dX.data, mask)


@pytest.mark.parametrize("mode", ["standard", "variational"])
def test_ragged_output_keeps_its_shape(mode: str) -> None:
    """D4, D5: Ragged data of more than 2 dims, or with no rows, keeps its shape (dataXd)."""
    model = with_dropout(noop(), 0.5, mode=mode)
    for data, lengths in ((inputs(5, 2, 3), [2, 3]), (inputs(0, 2), [0])):
        X = Ragged(data, numpy.array(lengths, dtype="int32"))
        Y, backprop = model(X, is_train=True)
        assert Y.dataXd.shape == data.shape
        assert backprop(Y).dataXd.shape == data.shape
        if mode == "variational" and len(data):
            mask = Y.dataXd / data
            assert_array_equal(mask[:2], numpy.broadcast_to(mask[:1], mask[:2].shape))
            assert_array_equal(mask[2:], numpy.broadcast_to(mask[2:3], mask[2:].shape))


def test_padded_output() -> None:
    """D4: a Padded output keeps size_at_t, lengths and indices."""
    ops = noop().ops
    X = ops.list2padded(sequences())
    Y, backprop = with_dropout(noop(), 0.5)(X, is_train=True)
    assert isinstance(Y, Padded)
    assert (Y.size_at_t, Y.lengths, Y.indices) == (X.size_at_t, X.lengths, X.indices)
    assert ((Y.data == 0) | (Y.data == 2 * X.data)).all()
    dX = backprop(Padded(numpy.ones_like(X.data), X.size_at_t, X.lengths, X.indices))
    assert_array_equal(dX.data * X.data, Y.data)


@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_of_arrays_output(container: type) -> None:
    """D4: a list (or tuple) of arrays: each masked on its own, same container back."""
    Xs = container(sequences())
    Ys, backprop = with_dropout(noop(), 0.5)(Xs, is_train=True)
    assert type(Ys) is container and [y.shape for y in Ys] == [x.shape for x in Xs]
    dXs = backprop(container(numpy.ones_like(x) for x in Xs))
    for x, y, dx in zip(Xs, Ys, dXs):
        assert_array_equal(x * dx, y)


def test_variational_padded_shares_one_mask_over_time() -> None:
    """D5: Padded, variational: one (batch, nO) mask broadcast over every time step."""
    X = noop().ops.list2padded(sequences())
    Y, _ = with_dropout(noop(), 0.5, mode="variational")(X, is_train=True)
    assert Y.data.shape == X.data.shape
    dropped = Y.data == 0
    real = X.data != 0  # inputs are never zero; padding is
    assert dropped[real].any() and not dropped[real].all()
    assert_array_equal(dropped & real, numpy.broadcast_to(dropped[:1], X.data.shape) & real)


def test_variational_ragged_and_list_share_a_row_per_sequence() -> None:
    """D5: Ragged and lists, variational: every time step of a sequence has the same mask row."""
    Xs = sequences()
    model = with_dropout(noop(), 0.5, mode="variational")
    lengths = numpy.array([len(x) for x in Xs], dtype="int32")
    Yr, _ = model(Ragged(numpy.concatenate(Xs), lengths), is_train=True)
    Ys, _ = model(Xs, is_train=True)
    for x, y in zip(Xs + Xs, numpy.split(Yr.data, numpy.cumsum(lengths)[:-1]) + Ys):
        mask = y / x
        assert_array_equal(mask, numpy.broadcast_to(mask[:1], mask.shape))


def test_variational_on_a_plain_array_is_standard() -> None:
    """D5: a plain 2d array has no sequences: variational draws the standard mask."""
    X = inputs(32, 8)
    fix_random_seed(3)
    standard, _ = with_dropout(noop(), 0.5)(X, is_train=True)
    fix_random_seed(3)
    variational, _ = with_dropout(noop(), 0.5, mode="variational")(X, is_train=True)
    assert_array_equal(variational, standard)
    assert not (standard == 0).all(axis=0).all()


# D6: with_torch(module, torch_dropout=True)


def record_dropout(module: torch.nn.Module) -> List[Tuple[float, bool]]:
    """(p, training) of every Dropout submodule, at each call."""
    calls: List[Tuple[float, bool]] = []
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_hook(lambda m, args, out: calls.append((m.p, m.training)))
    return calls


def test_torch_dropout_takes_the_rate_set_on_a_composed_model() -> None:
    """D6, D2: set_dropout_rate on a composed model reaches nn.Dropout.p for the training call."""
    module = torch_mlp(dropout=0.9)
    calls = record_dropout(module)
    model = chain(with_dropout(with_torch(module, torch_dropout=True)), Linear(2, 3))
    X = inputs(16, 4)
    model.initialize(X=X)
    set_dropout_rate(model, 0.3)
    calls.clear()  # initialize ran a prediction
    model(X, is_train=True)
    assert calls == [(pytest.approx(0.3), True)]
    assert module[2].p == 0.9  # the module's own rate, back after the call


def test_torch_dropout_drops_at_the_callers_rate() -> None:
    """D6, D8: a Dropout(0.9) module drops about 30% of units once the caller sets 0.3."""
    model = with_torch(torch.nn.Sequential(torch.nn.Dropout(0.9)), torch_dropout=True)
    set_dropout_rate(model, 0.3)
    n = 100_000
    Y, _ = model(numpy.ones((100, n // 100), dtype="float32"), is_train=True)
    # binomial: sd = sqrt(0.3 * 0.7 / 1e5) = 0.0014; 0.01 is 7 sd
    assert abs((Y == 0).mean() - 0.3) < 0.01
    assert_allclose(Y[Y != 0], 1 / 0.7, rtol=RTOL)


def test_torch_dropout_is_off_at_prediction() -> None:
    """D6, W3: prediction runs Dropout in eval mode, whatever rate the caller set."""
    module = torch_mlp(dropout=0.5)
    calls = record_dropout(module)
    model = with_torch(module, torch_dropout=True)
    set_dropout_rate(model, 0.3)
    X = inputs(16, 4)
    Y = model.predict(X)
    assert calls == [(0.5, False)]
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(X)).numpy()
    assert_array_equal(Y, expected)


def test_torch_dropout_rate_none_leaves_the_modules_own_rate() -> None:
    """D6: with no rate set (None), training uses the module's own p."""
    module = torch_mlp(dropout=0.25)
    calls = record_dropout(module)
    model = with_torch(module, torch_dropout=True)
    assert model.attrs["dropout_rate"] is None
    model(inputs(16, 4), is_train=True)
    assert calls == [(0.25, True)]


def test_torch_dropout_rate_zero_turns_it_off_in_training() -> None:
    """D6: rate 0 (nlp.update's default drop) gives the training call the prediction's output."""
    model = with_torch(torch_mlp(dropout=0.9), torch_dropout=True)
    X = inputs(16, 4)
    set_dropout_rate(model, 0.0)
    Y, _ = model(X, is_train=True)
    assert_array_equal(Y, model.predict(X))


def test_torch_dropout_bad_rate_raises() -> None:
    """D6, D7: a bad rate on a with_torch node raises ValueError naming it."""
    model = with_torch(torch_mlp(dropout=0.25), torch_dropout=True)
    set_dropout_rate(model, 1.0)
    with pytest.raises(ValueError, match=r"with_torch\(Sequential\)"):
        model(inputs(16, 4), is_train=True)


# D7


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), None, "0.1", True])
def test_bad_rate_at_construction(rate: Any) -> None:
    """D7: a rate outside [0, 1) (or not a number) raises ValueError at construction."""
    with pytest.raises(ValueError, match="dropout rate"):
        with_dropout(Linear(2, 2), rate)


@pytest.mark.parametrize("is_train", [True, False])
@pytest.mark.parametrize("rate", [1.0, -0.5])
def test_bad_rate_set_later_raises_in_forward(rate: float, is_train: bool) -> None:
    """D7: a bad rate written into attrs later raises in forward, naming the layer."""
    model = chain(with_dropout(Linear(2, 2), 0.1), noop())
    model.initialize()
    set_dropout_rate(model, rate)
    with pytest.raises(ValueError, match=r"with_dropout\(linear\).*got"):
        model(numpy.ones((1, 2), dtype="float32"), is_train=is_train)


def test_bad_mode_and_bad_output() -> None:
    """D4: an unknown mode, or an output that is no array/Ragged/Padded/list, is refused."""
    with pytest.raises(ValueError, match="mode"):
        with_dropout(noop(), 0.1, mode="spatial")
    with pytest.raises(TypeError, match=r"with_dropout\(noop\).*dict"):
        with_dropout(noop(), 0.1)({"x": numpy.ones(2)}, is_train=True)


# Composition, dims and registry


def test_composes_with_chain_concatenate_with_array() -> None:
    """D1, D2, D4: inside chain, concatenate and with_array: training masks, rate 0 gives the
    prediction exactly, and a backprop reaches the inner layer."""
    Xs = sequences()
    inner = with_dropout(Linear(4, 6), 0.5)
    model = with_array(chain(concatenate(inner, Linear(2, 6)), Linear(3, 6)))
    model.initialize(X=Xs)
    predicted = model.predict(Xs)
    Ys, backprop = model(Xs, is_train=True)
    assert [y.shape for y in Ys] == [(len(x), 3) for x in Xs]
    assert any((y != p).any() for y, p in zip(Ys, predicted))
    backprop([numpy.ones_like(y) for y in Ys])
    assert (inner.layers[0].get_grad("W") != 0).any()
    set_dropout_rate(model, 0.0)
    Ys, _ = model(Xs, is_train=True)
    for y, p in zip(Ys, predicted):
        assert_array_equal(y, p)


def test_variational_inside_with_padded_around_with_torch() -> None:
    """D1, D4, D5: with_padded(with_dropout(with_array(with_torch(Linear)), variational)) on a
    list: each sequence keeps one mask over its steps, and dX is the masked backprop."""
    Xs = sequences()
    torch.manual_seed(0)
    module = torch.nn.Linear(6, 4)
    linear = with_torch(module)
    model = with_padded(with_dropout(with_array(linear), 0.5, mode="variational"))
    Ys, backprop = model(Xs, is_train=True)
    dYs = [inputs(*y.shape, seed=7) for y in Ys]
    dXs = backprop(dYs)
    weight = module.weight.detach().numpy()
    for x, y, dy, dx in zip(Xs, Ys, dYs, dXs):
        full = linear.predict(x)
        mask = numpy.where(y == 0, 0.0, 2.0).astype("float32")
        assert_array_equal(mask, numpy.broadcast_to(mask[:1], mask.shape))
        assert_allclose(y, full * mask, rtol=RTOL)
        assert_allclose(dx, (dy * mask) @ weight, rtol=1e-5, atol=1e-6)


def test_dims_follow_the_layer() -> None:
    """D2: nI/nO are the layer's, including dims inferred or set at initialize."""
    model = with_dropout(Linear(), 0.1)
    model.set_dim("nO", 4)
    model.initialize(X=inputs(2, 3))
    assert (model.get_dim("nI"), model.get_dim("nO")) == (3, 4)
    assert model.layers[0].get_dim("nO") == 4
    assert model.name == "with_dropout(linear)"


def test_registered_for_configs() -> None:
    """C1: torchlayers.with_dropout.v1 resolves from the layers registry."""
    assert registry.layers.get("torchlayers.with_dropout.v1") is with_dropout


def test_numpy_scalar_rates_are_accepted():
    """D2, D7: a rate from numpy (a schedule's float32) is a rate; numpy's 1.0 is still refused."""
    model = with_dropout(Linear(3, 2), numpy.float32(0.25))
    model.attrs["dropout_rate"] = numpy.float32(0.5)
    model.initialize(X=numpy.zeros((2, 2), dtype="float32"))
    model(numpy.ones((2, 2), dtype="float32"), is_train=True)
    model.attrs["dropout_rate"] = numpy.float64(1.0)
    with pytest.raises(ValueError, match="dropout rate"):
        model(numpy.ones((2, 2), dtype="float32"), is_train=True)
