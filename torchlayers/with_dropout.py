"""with_dropout: dropout on a layer's output, at a rate that the calling code controls."""

from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, cast

from thinc.api import Model, Ops, registry
from thinc.types import Floats2d, Padded, Ragged

from ._checks import check_rate
from ._loading import Layer

InT = TypeVar("InT")
OutT = TypeVar("OutT")

MODES = ("standard", "variational")


@registry.layers("torchlayers.with_dropout.v1")
def with_dropout(
    layer: Model[InT, OutT], rate: float = 0.0, *, mode: str = "standard"
) -> Model[InT, OutT]:
    """Zero a fraction `rate` of `layer`'s outputs in training; scale the rest by 1/(1-rate).

    Registered as `torchlayers.with_dropout.v1`. Training: output * mask, and backprop
    multiplies dY by the same mask before `layer`'s own. Prediction, or rate 0: `layer`'s own
    output object and backprop, untouched.

    Args:
        layer: the layer whose output is dropped out.
        rate: the drop rate, _not_ the keep rate, in [0, 1); default 0 (no dropout until the
            caller sets one). Lives in `attrs["dropout_rate"]`, so Thinc's `set_dropout_rate`,
            spaCy's `nlp.update(drop=...)` and schedules change it.
        mode: `"standard"` draws a mask per unit. `"variational"` draws one mask per sequence,
            shared by all its time steps: a `(1, batch, nO)` mask for `Padded`, a row per
            sequence for `Ragged` and lists of arrays (axis 0 is time). A plain array has no
            sequences, so it gets `"standard"`.

    Returns:
        A Model named `with_dropout(<layer's name>)` with `layer`'s dims.

    Raises:
        ValueError: `rate` outside [0, 1) (also when a bad rate is set later and the layer
            runs), or an unknown `mode`.

    Shape:
        In and out: what `layer` takes and returns (array, `Ragged`, `Padded`, list of arrays).
    """
    check_rate("with_dropout", rate)
    if mode not in MODES:
        raise ValueError(f"with_dropout: mode must be one of {MODES}, got {mode!r}")
    return Layer(
        f"with_dropout({layer.name})",
        forward,
        init=init,
        layers=[layer],
        dims={name: layer.maybe_get_dim(name) for name in layer.dim_names},
        attrs={"dropout_rate": rate, "dropout_mode": mode},
    )


def forward(model: Model[InT, OutT], X: InT, is_train: bool) -> Tuple[OutT, Callable]:
    rate = model.attrs["dropout_rate"]
    check_rate(model.name, rate)  # D7: set_dropout_rate writes attrs without a check
    Y, backprop_layer = model.layers[0](X, is_train)
    if not is_train or rate == 0:
        return Y, backprop_layer  # D3: the very output, no mask, no copy
    mask = make_mask(model, Y, rate)

    def backprop(dY: OutT) -> InT:
        return backprop_layer(apply_mask(dY, mask))

    return apply_mask(Y, mask), backprop


def init(model: Model[InT, OutT], X: Optional[InT] = None, Y: Optional[OutT] = None) -> None:
    layer = model.layers[0]
    for name in layer.dim_names:  # a dim set on the wrapper (spaCy sets nO) reaches the layer
        if model.has_dim(name) and layer.has_dim(name) is None:
            layer.set_dim(name, model.get_dim(name))
    layer.initialize(X, Y)
    for name in layer.dim_names:
        if layer.has_dim(name):
            model.set_dim(name, layer.get_dim(name))


def make_mask(model: Model, Y: Any, rate: float) -> Any:
    """The mask for output `Y`: an array that broadcasts against Y's data, or a list of them.

    Variational masks have one row per sequence.
    """
    ops = model.ops
    variational = model.attrs["dropout_mode"] == "variational"
    if isinstance(Y, Padded):
        shape = (1, *Y.data.shape[1:]) if variational else Y.data.shape
        return dropout_mask(ops, shape, rate)
    if isinstance(Y, Ragged):  # Y.data: the rows flattened to 2d, whatever Y.dataXd's shape
        if not variational:
            return dropout_mask(ops, Y.data.shape, rate)
        rows = dropout_mask(ops, (len(Y.lengths), Y.data.shape[1]), rate)
        # row i repeated lengths[i] times: the backward of a per-sequence sum, which Thinc has
        # for numpy and cupy (cupy.repeat takes no array of counts)
        return ops.backprop_reduce_sum(cast(Floats2d, rows), ops.asarray1i(Y.lengths))
    if isinstance(Y, (list, tuple)):
        return [dropout_mask(ops, (1, *y.shape[1:]) if variational else y.shape, rate) for y in Y]
    if not hasattr(Y, "shape"):
        raise TypeError(
            f"{model.name}: expected the layer to output an array, Ragged, Padded or a list "
            f"of arrays, got {type(Y).__name__}"
        )
    return dropout_mask(ops, Y.shape, rate)


def dropout_mask(ops: Ops, shape: Tuple[int, ...], rate: float) -> Any:
    """0 where dropped, 1/(1-rate) where kept, float32: the draws of Thinc's get_dropout_mask
    (same global RNG, so fix_random_seed replays them) without its float64 pass and copy."""
    keep = ops.xp.random.random_sample(shape) >= rate
    return ops.xp.multiply(keep, 1.0 / (1.0 - rate), dtype="float32")


def apply_mask(Y: Any, mask: Any) -> Any:
    """Y (or dY) times the mask, in Y's own container."""
    if isinstance(Y, Padded):
        return Padded(Y.data * mask, Y.size_at_t, Y.lengths, Y.indices)
    if isinstance(Y, Ragged):
        return Ragged((Y.data * mask).reshape(Y.dataXd.shape), Y.lengths)
    if isinstance(Y, (list, tuple)):
        masked = [y * m for y, m in zip(cast(Sequence, Y), cast(List, mask))]
        return tuple(masked) if isinstance(Y, tuple) else masked
    return Y * mask
