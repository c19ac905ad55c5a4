"""The shipped encoders' defaults as spaCy's fixtures meet them (E5, E6): no sample data at
initialize, every dropout inside following the caller's rate, odd widths, the residual BiLSTM."""

from typing import List

import numpy
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import set_dropout_rate

from torchlayers.spacy._bilstm import CONTEXT_GAIN, AroundStates, Flips, run_lstm
from torchlayers.spacy._transformer import CONTEXT_GAIN as TRANSFORMER_GAIN
from torchlayers.spacy._transformer import NEAR_BIAS, Around, positions, side_bias
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


@pytest.mark.parametrize("training", [True, False])
def test_the_lstm_kernel_called_directly_equals_the_module(training: bool) -> None:
    """P7, E1: `run_lstm` (the CPU kernel without `nn.LSTM.forward`'s checks) gives the
    module's outputs and the same gradients for the input and every weight, in both modes."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 3).train(training)
    X = torch.randn(4, 2, 5, requires_grad=True)
    dY = torch.randn(4, 2, 3)
    wrt = [X, *lstm.parameters()]
    expected = lstm(X)[0]
    ours = run_lstm(lstm, X)
    assert_array_equal(ours.detach().numpy(), expected.detach().numpy())
    gradients = torch.autograd.grad(ours, wrt, dY)
    for got, want in zip(gradients, torch.autograd.grad(expected, wrt, dY)):
        assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("nI", [WIDTH, 5])
def test_the_residual_bilstm(nI: int) -> None:
    """E6: the v2 BiLSTM gives `X + LayerNorm(context)` where its input is `width` wide, and
    `LayerNorm(context)` where not, the context being the LSTMs' states around each token; the
    norm's gain starts at CONTEXT_GAIN."""
    torch.manual_seed(0)
    module = BiLSTM(nI, WIDTH, residual=True)
    assert (module.norm.weight == CONTEXT_GAIN).all()
    X = torch.randn(2, 4, nI)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        context = module.norm(module.lstms(X, mask, around=True))
        expected = X + context if nI == WIDTH else context
        assert_array_equal(module(X, mask).numpy(), expected.numpy())


def test_the_context_around_a_token_is_its_neighbours_states() -> None:
    """E6, E1: the v2 BiLSTM's context at token t is the forward state at t - 1 and the backward
    state at t + 1 of the same doc, zeros past its ends; the padding is never read."""
    torch.manual_seed(0)
    module = BiLSTM(5, WIDTH, residual=True)
    X = torch.randn(2, 4, 5)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    ahead = WIDTH - WIDTH // 2
    with torch.no_grad():
        states = module.lstms(X, mask)
        around = module.lstms(X, mask, around=True)
    for doc, length in enumerate([4, 3]):
        zeros = torch.zeros(1, WIDTH // 2)
        forward = torch.cat([torch.zeros(1, ahead), states[doc, : length - 1, :ahead]])
        backward = torch.cat([states[doc, 1:length, ahead:], zeros])
        assert_array_equal(around[doc, :length, :ahead].numpy(), forward.numpy())
        assert_array_equal(around[doc, :length, ahead:].numpy(), backward.numpy())


@pytest.mark.parametrize("lengths", [[4, 2, 0], [1], [3, 3]])
def test_the_states_around_each_token_have_exact_gradients(lengths: List[int]) -> None:
    """E1, P7: `Around`'s own backward pass (a gather, each state taken at most once) equals
    the numerical gradient, padding and empty docs included, with an odd width's halves."""
    max_len = max(lengths)
    mask = torch.tensor([[t < n for t in range(max_len)] for n in lengths])
    flips = Flips(mask, around=True)
    shape = (max_len, len(lengths))
    ahead = torch.randn(*shape, 3, dtype=torch.float64, requires_grad=True)
    back = torch.randn(*shape, 2, dtype=torch.float64, requires_grad=True)
    around = lambda a, b: AroundStates.apply(a, b, flips.around)  # noqa: E731
    assert torch.autograd.gradcheck(around, (ahead, back))


def test_the_flips_are_the_same_in_numpy_and_torch() -> None:
    """E1, W8: the rows the BiLSTM gathers (`Flips`, `AroundStates`' included), computed with
    torch's ops (as for a CUDA mask) and with numpy's (a CPU one), are the same."""
    mask = torch.tensor([[t < n for t in range(5)] for n in [4, 2, 0, 5]])
    by_numpy, by_torch = Flips(mask, around=True), Flips(mask, around=True, xp=torch)
    for name in ["x_to_tb", "tb_to_bt", "tb", "around"]:
        ours, theirs = getattr(by_numpy, name), getattr(by_torch, name)
        assert len(tensors(ours)) == len(tensors(theirs)) > 0
        for got, want in zip(tensors(ours), tensors(theirs)):
            assert_array_equal(got.numpy(), want.numpy())


def tensors(value) -> List[torch.Tensor]:
    """The tensors in nested tuples, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [tensor for item in value for tensor in tensors(item)]


def test_a_tokens_context_does_not_read_the_token() -> None:
    """E6: a token's context comes from the other tokens alone, so a word never seen in
    training is read from its neighbours (spaCy's tests tag "blue" in "I like blue eggs" from
    "I like green eggs"); the token itself reaches the output through the residual."""
    torch.manual_seed(0)
    module = BiLSTM(WIDTH, WIDTH, residual=True)
    X = torch.randn(1, 5, WIDTH)
    changed = X.clone()
    changed[0, 2] = torch.randn(WIDTH)
    with torch.no_grad():
        Y, Y_changed = module(X), module(changed)
    # (Y - X) is the context; the subtraction rounds, so compare to float32 precision
    assert_allclose((Y_changed - changed)[0, 2].numpy(), (Y - X)[0, 2].numpy(), atol=1e-6)
    assert not torch.allclose(Y_changed[0, 1], Y[0, 1])  # its neighbours do read it


def test_bilstm_v2_is_registered() -> None:
    """E6, C1: configs name the residual encoder `torchlayers.TorchBiLSTMEncoder.v2`."""
    from spacy import registry

    build = registry.architectures.get("torchlayers.TorchBiLSTMEncoder.v2")
    model = build(width=WIDTH)
    model.initialize()
    node = model.layers[0]
    assert node.shims[0].module.residual


AROUND = {"around"}  # the v2 Transformer's own module


@pytest.mark.parametrize("nI", [WIDTH, 5])
def test_the_residual_transformer(nI: int) -> None:
    """E6: the v2 Transformer gives `X + around(P, layers(project(X)))` where its input is
    `width` wide, and no `X +` where not: its layers take no positions (the v1's do); the
    context's norm, `Around`'s last, starts at its CONTEXT_GAIN."""
    torch.manual_seed(0)
    module = Transformer(nI, WIDTH, residual=True).eval()
    assert (module.around.norm_fed.weight == TRANSFORMER_GAIN).all()
    X = torch.randn(2, 4, nI)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        P = positions(4, WIDTH, X.device, X.dtype)
        layers = module.layers(module.project(X), src_key_padding_mask=~mask)
        context = module.around(P, layers, ~mask)
        expected = X + context if nI == WIDTH else context
        assert torch.allclose(module(X, mask)[mask], expected[mask], atol=1e-6)


def test_around_heads_read_one_side_nearest_first() -> None:
    """E6: with 3 heads, the first reads only the tokens before each token, the last only
    those after, the middle both; never the token itself or the padding; each token beyond
    the nearest on a side starts NEAR_BIAS lower."""
    ignored = torch.tensor([[False] * 4, [False, False, False, True]])
    bias = side_bias(3, ignored, torch.float32).reshape(2, 3, 4, 4)
    t, s = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    sides = {0: s < t, 1: s != t, 2: s > t}
    for head, readable in sides.items():
        for doc, length in enumerate([4, 3]):
            expected = torch.where(
                readable & (s < length),
                -NEAR_BIAS * ((s - t).abs() - 1).clamp(min=0).float(),
                torch.tensor(float("-inf")),
            )
            assert torch.equal(bias[doc, head], expected)


def test_the_residual_transformer_reads_the_order() -> None:
    """E6: without positions in its layers, the v2 Transformer still tells a doc from its
    reverse: a token's context is not the reversed doc's context for that token."""
    torch.manual_seed(0)
    module = Transformer(WIDTH, WIDTH, heads=2, residual=True).eval()
    X = torch.randn(1, 5, WIDTH)
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        forward, backward = module(X, mask), module(X.flip(1), mask).flip(1)
    assert not torch.allclose(forward, backward, atol=1e-3)


def test_around_reads_every_token_but_itself() -> None:
    """E6, E1: `Around`'s row for token t does not depend on row t of its input, does depend
    on the other real rows, and never on the padding; a doc of one token reads nothing and
    still gets a finite row."""
    torch.manual_seed(0)
    around = Around(WIDTH, 2, 0.0).eval()
    P = positions(4, WIDTH, torch.device("cpu"), torch.float32)
    H = torch.randn(2, 4, WIDTH)
    ignored = torch.tensor([[False] * 4, [False, True, True, True]])
    changed = H.clone()
    changed[0, 2] = torch.randn(WIDTH)
    changed[1, 1:] = torch.randn(3, WIDTH)  # the padding of the one-token doc
    with torch.no_grad():
        G, G_changed = around(P, H, ignored), around(P, changed, ignored)
    assert torch.allclose(G_changed[0, 2], G[0, 2], atol=1e-6)
    assert not torch.allclose(G_changed[0, 1], G[0, 1])
    assert torch.allclose(G_changed[1, 0], G[1, 0], atol=1e-6)
    assert torch.isfinite(G).all()


def test_transformer_v2_is_registered() -> None:
    """E6, C1: configs name the residual Transformer `torchlayers.TorchTransformerEncoder.v2`."""
    from spacy import registry

    build = registry.architectures.get("torchlayers.TorchTransformerEncoder.v2")
    model = build(width=WIDTH, heads=2)
    model.initialize()
    assert model.layers[0].shims[0].module.residual
