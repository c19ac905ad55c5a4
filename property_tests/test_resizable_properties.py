"""Laws of resizable (R3-R9) over generated layers, sizes and batches.

"Unchanged" means equal to float32 rounding (SPEC, note under R5): torch's and numpy's matrix
kernels block differently when a dimension changes, so outputs use RTOL/ATOL. Parameters and
optimizer state are copied, not computed: those are compared exactly.
"""

from typing import Any, Dict, Tuple

import numpy
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import SGD, Adam, Model, RAdam

from torchlayers._resize_params import is_torch_node, torch_layer
from torchlayers.resizable import find_target, resize_input, resize_output

from .strategies import SIZES, embeddings_and_ids, resizable_layers

RTOL, ATOL = 1e-5, 1e-6
OPTIMIZERS = {
    "adam": lambda: Adam(0.01),
    "radam": lambda: RAdam(0.01),
    "sgd": lambda: SGD(0.1),
    "adam-no-averages": lambda: Adam(0.01, use_averages=False),
}


@given(case=resizable_layers(), extra=st.integers(1, 4))
def test_growing_output_keeps_old_outputs(case, extra):
    """R3: growing the output keeps the old outputs; new units output exactly `fill`."""
    model, X = case
    before = model.predict(X)
    n_out = before.shape[1]
    resize_output(model, n_out + extra)
    after = model.predict(X)
    assert after.shape == (X.shape[0], n_out + extra)
    assert_allclose(after[:, :n_out], before, rtol=RTOL, atol=ATOL)
    expected = model.attrs["fill"] if output_has_bias(model) else 0.0
    assert_array_equal(after[:, n_out:], numpy.float32(expected))


@given(case=resizable_layers(fill=-1e4), extra=st.integers(1, 4))
def test_negative_fill_keeps_softmax_probabilities(case, extra):
    """R3: with a large negative fill a following softmax keeps the old-class probabilities."""
    model, X = case
    assume(output_has_bias(model))
    before = softmax(model.predict(X))
    resize_output(model, before.shape[1] + extra)
    after = softmax(model.predict(X))
    assert_allclose(after[:, : before.shape[1]], before, rtol=RTOL, atol=ATOL)
    assert_array_equal(after[:, before.shape[1] :], 0)


@given(case=resizable_layers(), extra=SIZES, seed=st.integers(0, 2**16))
def test_growing_input_ignores_new_inputs(case, extra, seed):
    """R4: growing the input (zero weight columns): f'(concat(X, Z)) == f(X) for any Z."""
    model, X = case
    before = model.predict(X)
    resize_input(model, X.shape[1] + extra)
    Z = numpy.random.default_rng(seed).uniform(-9, 9, (X.shape[0], extra)).astype("float32")
    assert_allclose(model.predict(numpy.hstack([X, Z])), before, rtol=RTOL, atol=ATOL)


@given(case=embeddings_and_ids(), extra=SIZES)
def test_growing_embedding_rows_keeps_old_ids(case, extra):
    """R4: growing an Embedding's rows (its inputs): old ids embed as before, new ids as 0."""
    model, ids = case
    before = model.predict(ids)
    rows = model.get_dim("nI")
    resize_input(model, rows + extra)
    assert_array_equal(model.predict(ids), before)
    new_ids = numpy.arange(rows, rows + extra, dtype="int64")
    assert_array_equal(model.predict(new_ids), 0)


@given(case=embeddings_and_ids(), extra=SIZES)
def test_growing_embedding_columns_fills_them(case, extra):
    """R3: an Embedding as the output layer grows columns that hold exactly `fill`."""
    model, ids = case
    before = model.predict(ids)
    resize_output(model, before.shape[1] + extra)
    after = model.predict(ids)
    assert_array_equal(after[:, : before.shape[1]], before)
    assert_array_equal(after[:, before.shape[1] :], numpy.float32(model.attrs["fill"]))


@given(case=resizable_layers(), data=st.data())
def test_shrinking_output_truncates(case, data):
    """R5: shrinking the output to n drops the last units: f'(X) == f(X)[:, :n]."""
    model, X = case
    before = model.predict(X)
    n = data.draw(st.integers(1, before.shape[1]))
    resize_output(model, n)
    assert_allclose(model.predict(X), before[:, :n], rtol=RTOL, atol=ATOL)


@given(case=resizable_layers(), data=st.data())
def test_shrinking_input_drops_last_inputs(case, data):
    """R5: shrinking the input to n: f'(X[:, :n]) == f(concat(X[:, :n], 0))."""
    model, X = case
    n = data.draw(st.integers(1, X.shape[1]))
    zeroed = X.copy()
    zeroed[:, n:] = 0
    before = model.predict(zeroed)
    resize_input(model, n)
    assert_allclose(model.predict(X[:, :n]), before, rtol=RTOL, atol=ATOL)


@given(case=resizable_layers(), which=st.sampled_from(["nI", "nO"]))
def test_same_size_changes_nothing(case, which):
    """R6: resizing to the same size changes nothing: same arrays, same dims, same outputs."""
    model, X = case
    arrays, before = params(model), model.predict(X)
    resize(model, which, model.get_dim(which))
    assert all(params(model)[key] is array for key, array in arrays.items())
    assert_array_equal(model.predict(X), before)


@given(case=resizable_layers(), which=st.sampled_from(["nI", "nO"]), extra=SIZES)
def test_grow_then_shrink_restores_parameters(case, which, extra):
    """R6: growing then shrinking back restores the exact parameters and dims."""
    model, X = case
    arrays, size = {key: a.copy() for key, a in params(model).items()}, model.get_dim(which)
    resize(model, which, size + extra)
    resize(model, which, size)
    assert model.get_dim(which) == size
    for key, array in params(model).items():
        assert_array_equal(array, arrays[key])
    assert model.predict(X).shape == (X.shape[0], model.get_dim("nO"))


@given(
    case=resizable_layers(),
    which=st.sampled_from(["nI", "nO"]),
    new_size=SIZES,
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_training_goes_on_after_a_resize(case, which, new_size, optimizer, steps, seed):
    """R7: after a resize, kept units get exactly the update they would have got without it
    (zero gradient on new units), keep their moments and averages; new units start at zero
    moments; use_params(optimizer.averages) works. Gradients are small, so clipping (a norm
    over all units, summed in another order) does not fire."""
    model, X = case
    twin = model.copy()  # same values, other ids: the run without the resize
    opt, twin_opt = OPTIMIZERS[optimizer](), OPTIMIZERS[optimizer]()
    rng = numpy.random.default_rng(seed)
    for _ in range(steps):
        train_step(model, opt, twin, twin_opt, rng)
    resize(model, which, new_size)
    for _ in range(steps):
        train_step(model, opt, twin, twin_opt, rng)
    for (key, array), (twin_key, twin_array) in zip(params(model).items(), params(twin).items()):
        keep = overlap(array, twin_array)
        assert_array_equal(array[keep], twin_array[keep])
        if twin_opt.averages is not None:
            assert_array_equal(opt.averages[key][keep], twin_opt.averages[twin_key][keep])
        for state, twin_state in ((opt.mom1, twin_opt.mom1), (opt.mom2, twin_opt.mom2)):
            if twin_key in twin_state:
                moment = state[key].reshape(array.shape)
                assert_array_equal(
                    moment[keep], twin_state[twin_key].reshape(twin_array.shape)[keep]
                )
                new = numpy.ones(array.shape, dtype=bool)
                new[keep] = False
                assert_array_equal(moment[new], 0)
    with model.use_params(opt.averages or {}):
        averaged = model.predict(fit(X, model.get_dim("nI")))
    assert averaged.shape == (X.shape[0], model.get_dim("nO"))


@given(case=resizable_layers(), which=st.sampled_from(["nI", "nO"]), new_size=SIZES)
def test_dims_follow_and_bytes_round_trip(case, which, new_size):
    """R8: nO/nI follow the resize; to_bytes/from_bytes into a layer resized the same way
    gives identical outputs."""
    model, X = case
    twin = model.copy()
    twin.predict(X)  # a with_torch copy can load bytes only once it has run (lead: _shim.py)
    resize(model, which, new_size)
    assert model.get_dim(which) == new_size
    assert find_target(model, which).get_dim(which) == new_size
    opt, rng = Adam(0.1), numpy.random.default_rng(0)
    train_step(model, opt, model.copy(), Adam(0.1), rng)  # saved values differ from twin's
    resize(twin, which, new_size)
    twin.from_bytes(model.to_bytes())
    X = fit(X, model.get_dim("nI"))
    assert_array_equal(twin.predict(X), model.predict(X))


@given(
    case=resizable_layers(),
    which=st.sampled_from(["nI", "nO"]),
    size=st.integers(max_value=0) | st.floats(1, 9) | st.booleans() | st.just("3"),
)
def test_bad_sizes_raise(case, which, size):
    """R9: a size below 1 or not an int raises ValueError, and nothing changes."""
    model, X = case
    before = model.predict(X)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        resize(model, which, size)
    assert_array_equal(model.predict(X), before)


# helpers


def resize(model: Model, which: str, size: Any) -> None:
    (resize_output if which == "nO" else resize_input)(model, size)


def params(model: Model) -> Dict[Tuple[int, str], Any]:
    return {(n.id, name): n.get_param(name) for n in model.walk() for name in n.param_names}


def train_step(model: Model, opt: Any, twin: Model, twin_opt: Any, rng: Any) -> None:
    """One update of `model` and of `twin` (same structure), with small random gradients that
    agree on the units both have; `model`'s units that `twin` lacks get 0."""
    for node, twin_node in zip(model.walk(), twin.walk()):
        for name in node.param_names:
            mine, theirs = node.get_param(name), twin_node.get_param(name)
            grad = (rng.standard_normal(theirs.shape) * 0.01).astype(theirs.dtype)
            own = numpy.zeros_like(mine)
            keep = overlap(mine, theirs)
            own[keep] = grad[keep]
            node.set_grad(name, own)
            twin_node.set_grad(name, grad)
    model.finish_update(opt)
    twin.finish_update(twin_opt)


def overlap(a: Any, b: Any) -> Tuple[slice, ...]:
    return tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape))


def fit(X: numpy.ndarray, width: int) -> numpy.ndarray:
    """X cut or zero-padded to `width` columns."""
    out = numpy.zeros((X.shape[0], width), dtype=X.dtype)
    out[:, : min(width, X.shape[1])] = X[:, :width]
    return out


def softmax(Y: numpy.ndarray) -> numpy.ndarray:
    e = numpy.exp(Y - Y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def output_has_bias(model: Model) -> bool:
    target = find_target(model, "nO")
    return not is_torch_node(target) or torch_layer(target, None, "nO")[1].bias is not None
