"""with_padding: run a layer that takes a padded batch and a mask on a list of docs' arrays."""

from typing import Any, Callable, List, Optional, Tuple, cast

import numpy
from thinc.api import ArgsKwargs, Model, registry
from thinc.types import Floats2d, Floats3d

from ._loading import Layer

PaddedBatch = ArgsKwargs  # args=(X (batch, max_len, nI) float, mask (batch, max_len) bool)

# The mask check at initialize: outputs at real tokens may move this much (relative to their
# scale) when the padding changes. float32 rounding moves them ~1e-7; a mask that is ignored
# moves them by the size of the signal.
LEAK_TOLERANCE = 1e-4


@registry.layers("torchlayers.with_padding.v1")
def with_padding(layer: Model[PaddedBatch, Floats3d]) -> Model[List[Floats2d], List[Floats2d]]:
    """Pad a list of `(n_i, nI)` arrays into one batch for `layer`, and unpad what it returns.

    layer: called on `ArgsKwargs(args=(X, mask))`, with `X` a `(batch, max_len, nI)` float array
        (docs in their given order, zeros after each doc's `n_i` rows) and `mask` a
        `(batch, max_len)` bool array, True at real rows; it returns `(batch, max_len, nO)`.
        `with_torch(module)` is such a layer: it calls `module(X, mask)` (torchlayers' encoders).
    In: one `(n_i, nI)` array per doc; `n_i` may be 0. Out: one `(n_i, nO)` array per doc, a view
        of the layer's output (one copy pads the input, none unpads the output; the same for the
        gradients). A doc with no rows gives `(0, nO)` wherever it stands, and its neighbours'
        gradients stay aligned.
    Not Thinc's `with_padded`: that gives a time-major, length-sorted `Padded`; this keeps the
    docs in order, batch first, and hands the layer the mask.
    The layer must not let the padding reach real rows (a BiLSTM must pack, attention must mask
    keys): `initialize` with sample data checks that and raises ValueError if it does.
    """
    return Layer(
        f"with_padding({layer.name})",
        forward,
        init=init,
        layers=[layer],
        dims={name: layer.maybe_get_dim(name) for name in ("nI", "nO")},
    )


def forward(
    model: Model[List[Floats2d], List[Floats2d]], Xs: List[Floats2d], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    layer: Model[PaddedBatch, Floats3d] = model.layers[0]
    lengths = check_docs(model, Xs)
    nO = model.get_dim("nO")
    if not any(lengths):  # nothing to run: (0, nO) per doc, and (0, nI) gradients back
        widths = [x.shape[1] for x in Xs]
        outputs = [model.ops.alloc2f(0, nO, dtype=x.dtype) for x in Xs]

        def backprop_empty(dYs: List[Floats2d]) -> List[Floats2d]:
            return [model.ops.alloc2f(0, w, dtype=dy.dtype) for w, dy in zip(widths, dYs)]

        return outputs, backprop_empty
    X, mask = pad(model, Xs, lengths)
    Y, backprop_layer = layer(ArgsKwargs(args=(X, mask), kwargs={}), is_train)
    check_output(model, Y, (len(Xs), X.shape[1], nO))

    def backprop(dYs: List[Floats2d]) -> List[Floats2d]:
        if len(dYs) != len(lengths):
            raise ValueError(f"{model.name}: expected {len(lengths)} gradients, got {len(dYs)}")
        dY = model.ops.alloc3f(len(dYs), X.shape[1], nO, dtype=Y.dtype)
        for i, (dy, n) in enumerate(zip(dYs, lengths)):
            if dy.shape != (n, nO):
                raise ValueError(
                    f"{model.name}: expected a gradient of shape {(n, nO)} for doc {i}, "
                    f"got {dy.shape}"
                )
            dY[i, :n] = dy
        dX = cast(ArgsKwargs, backprop_layer(dY)).args[0]
        return [dX[i, :n] for i, n in enumerate(lengths)]

    return [Y[i, :n] for i, n in enumerate(lengths)], backprop


def init(
    model: Model[List[Floats2d], List[Floats2d]],
    X: Optional[List[Floats2d]] = None,
    Y: Optional[List[Floats2d]] = None,
) -> None:
    layer = model.layers[0]
    if X and model.maybe_get_dim("nI") is None:
        model.set_dim("nI", X[0].shape[1])
    if Y and model.maybe_get_dim("nO") is None:
        model.set_dim("nO", Y[0].shape[1])
    for name in ("nI", "nO"):
        value = model.maybe_get_dim(name)
        if value is not None and layer.maybe_get_dim(name) is None:
            layer.set_dim(name, value)
    sample = None
    if X and any(len(x) for x in X):
        lengths = check_docs(model, X)
        sample = pad(model, X, lengths)
    layer.initialize(X=ArgsKwargs(args=sample, kwargs={}) if sample is not None else None)
    for name in ("nI", "nO"):
        if model.maybe_get_dim(name) is None and layer.maybe_get_dim(name) is not None:
            model.set_dim(name, layer.get_dim(name))
    if sample is not None:
        check_mask_is_used(model, *sample)


def pad(model: Model, Xs: List[Floats2d], lengths: List[int]) -> Tuple[Floats3d, Any]:
    """`(batch, max_len, nI)` zeros with each doc's rows at the start of its row, and the mask.

    One copy of the data; one slice assignment per doc (microseconds for a batch of docs).
    """
    xp = model.ops.xp
    nI = model.get_dim("nI")
    X = model.ops.alloc3f(len(Xs), max(lengths), nI, dtype=Xs[0].dtype)
    for i, (x, n) in enumerate(zip(Xs, lengths)):
        X[i, :n] = x
    mask = xp.arange(max(lengths))[None, :] < xp.asarray(lengths)[:, None]
    return X, mask


def check_docs(model: Model, Xs: List[Any]) -> List[int]:
    """Each doc's number of rows, checked (`check_doc`); nI is read once, not per doc:
    Thinc's lookup shows on a prediction."""
    nI = model.maybe_get_dim("nI")
    return [check_doc(model, nI, i, x) for i, x in enumerate(Xs)]


def check_doc(model: Model, nI: Optional[int], i: int, x: Any) -> int:
    """A doc's array: 2d, `nI` wide (once nI is known), float. Returns its number of rows."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2 or (nI is not None and shape[1] != nI):
        expected = f"(n, {nI})" if nI is not None else "(n, nI)"
        raise ValueError(f"{model.name}: expected doc {i} of shape {expected}, got {shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{model.name}: expected doc {i} as floats, got dtype {x.dtype}")
    return int(shape[0])


def check_output(model: Model, Y: Any, expected: Tuple[int, int, int]) -> None:
    shape = tuple(getattr(Y, "shape", ()))
    if shape != expected:
        raise ValueError(
            f"{model.name}: expected the layer to return (batch, max_len, nO) = {expected}, "
            f"got {shape if shape else type(Y).__name__}"
        )


def check_mask_is_used(model: Model, X: Floats3d, mask: Any) -> None:
    """Run the sample twice, padding zeros and then noise: real rows must not change."""
    layer = model.layers[0]
    xp = model.ops.xp
    B, T, nI = X.shape
    noise = numpy.random.default_rng(0).standard_normal((B, T + 1, nI))  # padding everywhere
    noisy = model.ops.asarray3f(cast(Floats3d, noise), dtype=X.dtype)
    wide = xp.concatenate([mask, xp.zeros((B, 1), dtype=bool)], axis=1)
    noisy[wide] = X[mask]
    Y = layer.predict(ArgsKwargs(args=(X, mask), kwargs={}))
    check_output(model, Y, (B, T, model.get_dim("nO")))
    Y_noisy = layer.predict(ArgsKwargs(args=(noisy, wide), kwargs={}))
    real, moved = Y[mask], Y_noisy[wide]
    scale = float(xp.abs(real).max()) if real.size else 0.0
    change = float(xp.abs(real - moved).max()) if real.size else 0.0
    if change > LEAK_TOLERANCE * max(scale, 1.0):
        raise ValueError(
            f"{model.name}: the layer's outputs at real tokens changed by {change:.3g} when only "
            f"the padding changed (input {(B, T, nI)} -> {(B, T + 1, nI)}): it must use the "
            "mask (pack sequences for an RNN, a key padding mask for attention)"
        )
