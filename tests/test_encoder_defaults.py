"""The shipped encoders' defaults as spaCy's fixtures meet them (E5, E6): no sample data at
initialize, every dropout inside following the caller's rate, odd widths, the residual BiLSTM."""

from typing import List

import numpy
import pytest
import torch
from numpy.testing import assert_array_equal
from thinc.api import set_dropout_rate

from torchlayers.spacy._bilstm import CONTEXT_GAIN
from torchlayers.spacy.encoders import (
    BiLSTM,
    Transformer,
    build_torch_bilstm_encoder,
    build_torch_transformer_encoder,
)

BUILDERS = [build_torch_bilstm_encoder, build_torch_transformer_encoder]
WIDTH = 8


def docs(*lengths: int, width: int = WIDTH) -> List[numpy.ndarray]:
    rng = numpy.random.default_rng(0)
    return [rng.uniform(-1, 1, (n, width)).astype("f") for n in lengths]


@pytest.mark.parametrize("build", BUILDERS)
def test_initialize_without_data_takes_width_inputs(build) -> None:
    """E5: initialize() with no sample builds the module for `width` inputs, as spaCy's own
    encoders assume, and the model then runs and trains on such docs."""
    model = build(WIDTH)
    model.initialize()
    assert model.get_dim("nI") == WIDTH
    Ys, backprop = model(docs(3, 5), is_train=True)
    assert [y.shape for y in Ys] == [(3, WIDTH), (5, WIDTH)]
    assert [dx.shape for dx in backprop(Ys)] == [(3, WIDTH), (5, WIDTH)]


@pytest.mark.parametrize("build", BUILDERS)
def test_a_doc_of_another_width_is_refused_by_name(build) -> None:
    """E5, E1: built without data for `width` inputs, a doc of another width is refused with
    the layer's name and both shapes, not a torch error."""
    model = build(WIDTH)
    model.initialize()
    with pytest.raises(ValueError, match=r"with_padding.*\(n, 8\).*\(3, 5\)"):
        model.predict(docs(3, width=5))


def test_attention_dropout_follows_the_caller() -> None:
    """E5, D6: the Transformer's attention dropout (nn.MultiheadAttention keeps it as a float)
    runs at the caller's rate in a training call, and is put back after it."""
    torch.manual_seed(0)
    model = build_torch_transformer_encoder(WIDTH, dropout=0.3)
    model.initialize(X=docs(3, 5))
    module = model.layers[0].shims[0].module
    attentions = [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    seen: List[float] = []
    for attention in attentions:
        attention.register_forward_pre_hook(lambda mod, args: seen.append(mod.dropout))
    set_dropout_rate(model, 0.11)
    model(docs(3, 5), is_train=True)
    assert seen == [0.11] * len(attentions)
    assert [a.dropout for a in attentions] == [0.3] * len(attentions)


@pytest.mark.parametrize("build", BUILDERS)
def test_rate_zero_makes_training_calls_deterministic(build) -> None:
    """E5, D6: at the caller's rate 0, two training calls give identical outputs (no dropout
    left anywhere inside), though the encoder was built with dropout."""
    torch.manual_seed(0)
    model = build(WIDTH, dropout=0.5)
    model.initialize(X=docs(3, 5))
    set_dropout_rate(model, 0.0)
    first, _ = model(docs(4, 6), is_train=True)
    second, _ = model(docs(4, 6), is_train=True)
    for a, b in zip(first, second):
        assert_array_equal(a, b)


def test_an_odd_width_bilstm() -> None:
    """E6, E2: an odd width (spaCy's suite builds 333) gives the forward direction the odd unit;
    the rows are `width` wide."""
    model = build_torch_bilstm_encoder(7)
    model.initialize()
    assert [y.shape for y in model.predict(docs(3, 2, width=7))] == [(3, 7), (2, 7)]


@pytest.mark.parametrize("nI", [WIDTH, 5])
def test_the_residual_bilstm(nI: int) -> None:
    """E6: the v2 BiLSTM gives `X + LayerNorm(lstms(X))` where its input is `width` wide, and
    `LayerNorm(lstms(X))` where not; the norm's gain starts at CONTEXT_GAIN."""
    torch.manual_seed(0)
    module = BiLSTM(nI, WIDTH, residual=True)
    assert (module.norm.weight == CONTEXT_GAIN).all()
    X = torch.randn(2, 4, nI)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        context = module.norm(module.lstms(X, mask))
        expected = X + context if nI == WIDTH else context
        assert_array_equal(module(X, mask).numpy(), expected.numpy())


def test_bilstm_v2_is_registered() -> None:
    """E6, C1: configs name the residual encoder `torchlayers.TorchBiLSTMEncoder.v2`."""
    from spacy import registry

    build = registry.architectures.get("torchlayers.TorchBiLSTMEncoder.v2")
    model = build(width=WIDTH)
    model.initialize()
    node = model.layers[0]
    assert node.shims[0].module.residual


@pytest.mark.parametrize("nI", [WIDTH, 5])
def test_the_residual_transformer(nI: int) -> None:
    """E6: the v2 Transformer gives `X + LayerNorm(layers(X))` where its input is `width` wide,
    and `LayerNorm(layers(X))` where not; the norm's gain starts at CONTEXT_GAIN."""
    torch.manual_seed(0)
    module = Transformer(nI, WIDTH, residual=True)
    plain = Transformer(nI, WIDTH)
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if "norm." != k[:5]})
    module.eval(), plain.eval()
    assert (module.norm.weight == CONTEXT_GAIN).all()
    X = torch.randn(2, 4, nI)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        context = module.norm(plain(X, mask))
        expected = X + context if nI == WIDTH else context
        assert torch.allclose(module(X, mask), expected, atol=1e-6)


def test_transformer_v2_is_registered() -> None:
    """E6, C1: configs name the residual Transformer `torchlayers.TorchTransformerEncoder.v2`."""
    from spacy import registry

    build = registry.architectures.get("torchlayers.TorchTransformerEncoder.v2")
    model = build(width=WIDTH, heads=2)
    model.initialize()
    assert model.layers[0].shims[0].module.residual
