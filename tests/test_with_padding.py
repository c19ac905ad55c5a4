"""with_padding and the torch encoders on their own (E1, E2, E4): no spaCy pipeline here."""

from typing import List, Optional

import numpy
import pytest
import srsly
import torch
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import Adam, Model, set_dropout_rate

from torchlayers import with_torch
from torchlayers.spacy.encoders import (
    build_torch_bilstm_encoder,
    build_torch_encoder,
    build_torch_transformer_encoder,
)
from torchlayers.with_padding import with_padding

NI, WIDTH = 6, 8
RTOL, ATOL = 1e-5, 1e-6
BUILDERS = [build_torch_bilstm_encoder, build_torch_transformer_encoder]


def docs(*lengths: int, seed: int = 0, width: int = NI, dtype: str = "float32") -> List:
    rng = numpy.random.default_rng(seed)
    return [rng.uniform(-1, 1, (n, width)).astype(dtype) for n in lengths]


def encoder(build=build_torch_bilstm_encoder, sample: Optional[List] = None, **kwargs) -> Model:
    torch.manual_seed(0)
    model = build(WIDTH, **kwargs)
    model.initialize(X=sample or docs(3, 5))
    return model


class Linear3d(torch.nn.Module):
    """module(X, mask): a per-token Linear; the mask is not needed (no token sees another)."""

    def __init__(self, nI: int = NI, nO: int = WIDTH) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(nI, nO)

    def forward(self, X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(X)


class Unpacked(torch.nn.Module):
    """module(X, mask) that ignores the mask: a BiLSTM over the padding (PyTorchLSTM's way)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(NI, WIDTH // 2, batch_first=True, bidirectional=True)

    def forward(self, X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lstm(X)[0]


class Narrow(torch.nn.Module):
    """module(X, mask) that returns fewer columns than it was built for."""

    def __init__(self, nO: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(nO))

    def forward(self, X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return X[..., : len(self.scale)] * self.scale


class Recorder(torch.nn.Module):
    """Linear3d that keeps the tensors it was called with and what it returned."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Linear3d()
        self.seen: List = []

    def forward(self, X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        Y = self.inner(X, mask)
        self.seen.append((X, mask, Y))
        return Y


@pytest.mark.parametrize("build", BUILDERS)
def test_empty_docs_anywhere(build) -> None:
    """E1: docs with no tokens give (0, nO) wherever they stand; the others' outputs and
    gradients are those they get alone, in order (spacy-transformers issue 365 shifted them)."""
    model = encoder(build)
    batch = docs(0, 4, 0, 0, 2, 7, 0, seed=1)
    dYs = docs(0, 4, 0, 0, 2, 7, 0, seed=2, width=WIDTH)
    Ys, backprop = model(batch, is_train=True)
    dXs = backprop(dYs)
    assert [y.shape for y in Ys] == [(len(x), WIDTH) for x in batch]
    assert [dx.shape for dx in dXs] == [x.shape for x in batch]
    for x, y, dy, dx in zip(batch, Ys, dYs, dXs):
        y_alone, backprop_alone = model([x], is_train=True)
        assert_allclose(y_alone[0], y, rtol=RTOL, atol=ATOL)
        assert_allclose(backprop_alone([dy])[0], dx, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch", [[], docs(0), docs(0, 0, 0)], ids=["no docs", "1", "3"])
def test_no_tokens_at_all(batch) -> None:
    """E1: a batch without tokens gives (0, nO) per doc and (0, nI) gradients, without
    calling the module (an LSTM refuses a zero-length batch)."""
    model = encoder()
    Ys, backprop = model(batch, is_train=True)
    assert [y.shape for y in Ys] == [(0, WIDTH)] * len(batch)
    assert [dx.shape for dx in backprop(Ys)] == [(0, NI)] * len(batch)
    assert [y.shape for y in model.predict(batch)] == [(0, WIDTH)] * len(batch)


def test_the_module_sees_the_padded_batch_and_mask() -> None:
    """E1: module(X, mask): X (batch, max_len, nI) in doc order, zeros after each doc; mask
    True at real tokens; the outputs are views of what it returned (no copy to unpad)."""
    module = Recorder()
    model = with_padding(with_torch(module))
    batch = docs(2, 0, 3)
    model.initialize(X=batch)
    module.seen.clear()
    Ys = model.predict(batch)
    X, mask, Y = module.seen[-1]
    assert X.shape == (3, 3, NI) and X.dtype == torch.float32
    assert mask.dtype == torch.bool
    assert_array_equal(mask.numpy(), [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    assert_array_equal(X[0, :2].numpy(), batch[0])
    assert_array_equal(X[2].numpy(), batch[2])
    assert not X[0, 2:].any() and not X[1].any()
    for y in Ys:
        assert y.size == 0 or numpy.shares_memory(y, Y.numpy())


def test_dims_are_inferred() -> None:
    """E1, W7: nI from the data, nO from a factory's module or from `width`."""
    model = build_torch_encoder(lambda nI, nO: Linear3d(nI, nO), width=5)
    assert model.get_dim("nO") == 5 and not model.has_dim("nI")
    model.initialize(X=docs(2, 3))
    assert (model.get_dim("nI"), model.get_dim("nO")) == (NI, 5)
    assert model.predict(docs(4))[0].shape == (4, 5)


def test_a_module_that_ignores_the_mask_is_refused() -> None:
    """E1: a module whose outputs at real tokens depend on the padding (an unpacked BiLSTM)
    fails at initialize, naming the layer and both input shapes."""
    model = build_torch_encoder(Unpacked(), width=WIDTH)
    with pytest.raises(ValueError, match=r"with_padding\(with_torch\(Unpacked\)\).*mask"):
        model.initialize(X=docs(2, 5))


def test_a_wrong_output_shape_is_refused() -> None:
    """E1: a module returning another width: ValueError naming the layer and both shapes."""
    model = build_torch_encoder(Narrow(5), width=WIDTH)
    with pytest.raises(
        ValueError, match=r"with_padding\(with_torch\(Narrow\)\).*\(2, 4, 8\).*\(2, 4, 5\)"
    ):
        model.initialize(X=docs(4, 1))
    with pytest.raises(ValueError, match=r"width=8.*gives 5"):
        build_torch_encoder(Linear3d(NI, 5), width=WIDTH)


def test_a_wrong_input_width_is_refused() -> None:
    """E1, W10: a doc of another width: ValueError naming the layer and both shapes."""
    model = encoder()
    with pytest.raises(
        ValueError, match=r"with_padding\(with_torch\(BiLSTM\)\).*\(n, 6\).*\(3, 4\)"
    ):
        model.predict(docs(2) + docs(3, width=4))


def test_float64_docs() -> None:
    """W10: float64 docs run (one copy into the float32 module); outputs and dX come back in
    the input's dtype, equal to the float32 run to float32 rounding."""
    model = encoder()
    batch = docs(3, 1)
    Ys, backprop = model([x.astype("float64") for x in batch], is_train=True)
    dXs = backprop([numpy.ones_like(y) for y in Ys])
    assert {y.dtype for y in dXs} == {numpy.dtype("float64")}
    assert_allclose(Ys[0], model.predict(batch)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("build", BUILDERS)
def test_order_matters(build) -> None:
    """E2: the encoders see the order of the tokens (recurrence, positions)."""
    model = encoder(build)
    (x,) = docs(5)
    Y, Y_reversed = model.predict([x, x[::-1].copy()])
    assert not numpy.allclose(Y[::-1], Y_reversed, atol=1e-4)


@pytest.mark.parametrize("build", BUILDERS)
def test_width_is_set_at_construction(build) -> None:
    """E2: nO = width before initialize (spaCy's Tok2Vec reads it); out rows are width wide."""
    model = build(WIDTH)
    assert model.get_dim("nO") == WIDTH
    model.initialize(X=docs(3))
    assert model.predict(docs(2))[0].shape == (2, WIDTH)


@pytest.mark.parametrize("build", BUILDERS)
def test_caller_dropout_reaches_the_module(build) -> None:
    """E4, D2, D6: set_dropout_rate changes training outputs; prediction has no dropout."""
    model = encoder(build)
    batch = docs(4, 6)
    set_dropout_rate(model, 0.0)
    plain = model(batch, is_train=True)[0]
    set_dropout_rate(model, 0.5)
    dropped = model(batch, is_train=True)[0]
    assert not numpy.allclose(plain[1], dropped[1])
    assert_allclose(model.predict(batch)[1], plain[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("build", BUILDERS)
def test_averages_copy_and_bytes(build) -> None:
    """E4, W5, W6, W9: use_params(averages) changes outputs and restores them; copy() trains
    apart; to_bytes holds no pickle and loads into a fresh model to identical outputs."""
    model = encoder(build)
    batch = docs(4, 0, 6)
    optimizer = Adam(0.01, use_averages=True)
    for _ in range(3):
        Ys, backprop = model(batch, is_train=True)
        backprop([numpy.ones_like(y) for y in Ys])
        model.finish_update(optimizer)
    live = model.predict(batch)
    with model.use_params(optimizer.averages):
        assert not numpy.allclose(model.predict(batch)[0], live[0])
    assert_array_equal(model.predict(batch)[2], live[2])
    twin = model.copy()
    Ys, backprop = twin(batch, is_train=True)
    backprop([numpy.ones_like(y) for y in Ys])
    twin.finish_update(Adam(0.1))
    assert_array_equal(model.predict(batch)[0], live[0])
    data = model.to_bytes()
    assert b"pickle" not in data and b"data.pkl" not in data
    fresh = build(WIDTH).from_bytes(data)
    for a, b in zip(fresh.predict(batch), live):
        assert_array_equal(a, b)
    assert srsly.msgpack_loads(data)  # plain msgpack


def test_bad_arguments() -> None:
    """E2: a BiLSTM narrower than 2 or heads that do not divide the width fail at
    construction."""
    with pytest.raises(ValueError, match=">= 2"):
        build_torch_bilstm_encoder(1)
    with pytest.raises(ValueError, match="multiple of heads"):
        build_torch_transformer_encoder(10, heads=4)


def test_averaged_encoder() -> None:
    """E4, A2: averaged(encoder) keeps an EMA of the torch weights; use_averages swaps it in
    for prediction and puts the live weights back."""
    from torchlayers import averaged, use_averages

    model = averaged(encoder())
    batch = docs(4, 2)
    optimizer = Adam(0.05)
    for _ in range(4):
        Ys, backprop = model(batch, is_train=True)
        backprop([numpy.ones_like(y) for y in Ys])
        model.finish_update(optimizer)
    live = model.predict(batch)
    with use_averages(model):
        assert not numpy.allclose(model.predict(batch)[0], live[0])
    assert_array_equal(model.predict(batch)[0], live[0])


def test_bilstm_equals_a_packed_bidirectional_lstm() -> None:
    """E2: the BiLSTM module gives what torch's bidirectional nn.LSTM gives on a
    PackedSequence (pack_padded_sequence, enforce_sorted=False) with the same weights, layer by
    layer, outputs and input gradients (float32 rounding); under no_grad, the same outputs."""
    from torchlayers.spacy._bilstm import BiLSTM

    torch.manual_seed(0)
    ours = BiLSTM(NI, WIDTH, depth=2)
    packed_lstm = torch.nn.LSTM(NI, WIDTH // 2, num_layers=2, bidirectional=True)
    with torch.no_grad():
        for layer, (fwd, bwd) in enumerate(zip(ours.forwards, ours.backwards)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(packed_lstm, f"{name}_l{layer}").copy_(getattr(fwd, f"{name}_l0"))
                getattr(packed_lstm, f"{name}_l{layer}_reverse").copy_(getattr(bwd, f"{name}_l0"))
    lengths = [3, 0, 7, 1, 5]
    X = torch.zeros(len(lengths), max(lengths), NI)
    for i, x in enumerate(docs(*lengths)):
        X[i, : len(x)] = torch.from_numpy(x)
    mask = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    X_ours = X.clone().requires_grad_()
    Y = ours(X_ours, mask)
    X_ref = X.clone().requires_grad_()
    real = [i for i, n in enumerate(lengths) if n]  # packing refuses empty sequences
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        X_ref[real],
        torch.tensor([lengths[i] for i in real]),
        batch_first=True,
        enforce_sorted=False,
    )
    Y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(
        packed_lstm(packed)[0], batch_first=True, total_length=max(lengths)
    )
    dY = torch.randn_like(Y) * mask.unsqueeze(-1)
    Y.backward(dY)
    Y_ref.backward(dY[real])
    for k, i in enumerate(real):
        n = lengths[i]
        assert_allclose(Y[i, :n].detach().numpy(), Y_ref[k, :n].detach().numpy(), atol=1e-6)
    assert_allclose(X_ours.grad.numpy(), X_ref.grad.numpy(), atol=1e-6)
    with torch.no_grad():  # a prediction lays the rows out without the backward's inverses
        assert torch.equal(ours(X, mask), Y.detach())
