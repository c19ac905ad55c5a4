"""Properties of with_padding and the torch encoders (E1, E2, W2, W6)."""

from typing import Dict, List

import numpy
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from thinc.api import Model

from torchlayers.spacy.encoders import (
    build_torch_bilstm_encoder,
    build_torch_bilstm_encoder_v2,
    build_torch_transformer_encoder,
)

from .strategies import doc_batches

NI, WIDTH = 4, 6
RTOL, ATOL = 1e-5, 1e-5  # float32: the batched kernels round differently for other batch sizes
BUILDERS = {
    "bilstm": lambda: build_torch_bilstm_encoder(WIDTH, depth=2),
    "bilstm v2": lambda: build_torch_bilstm_encoder_v2(WIDTH, depth=2),
    "transformer": lambda: build_torch_transformer_encoder(WIDTH, depth=1, heads=2),
}
MODELS: Dict[str, Model] = {}


def encoder(kind: str) -> Model:
    """One initialized encoder per kind (built once: the properties only read it)."""
    if kind not in MODELS:
        torch.manual_seed(0)
        model = BUILDERS[kind]()
        model.initialize(X=[numpy.zeros((3, NI), dtype="float32")])
        MODELS[kind] = model
    return MODELS[kind]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@given(batch=doc_batches(NI), order=st.randoms(use_true_random=False))
def test_batch_independence_and_padding_invariance(kind: str, batch: List, order) -> None:
    """E1: a doc's output does not depend on the other docs of its batch, their lengths or
    their order (float32 rounding): each doc alone gives its rows of the batch's output."""
    model = encoder(kind)
    permutation = list(range(len(batch)))
    order.shuffle(permutation)
    shuffled = model.predict([batch[i] for i in permutation])
    for place, i in enumerate(permutation):
        (alone,) = model.predict([batch[i]])
        assert shuffled[place].shape == (len(batch[i]), WIDTH)
        assert_allclose(shuffled[place], alone, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@given(batch=doc_batches(NI), seed=st.integers(0, 2**16))
def test_gradients_equal_torch_on_each_doc_alone(kind: str, batch: List, seed: int) -> None:
    """E1, W2: dX through the padding helper equals plain torch autograd on each doc alone,
    and the weight gradients equal the sum of those of each doc alone."""
    model = encoder(kind)
    module = model.layers[0].shims[0].module
    rng = numpy.random.default_rng(seed)
    dYs = [rng.uniform(-1, 1, (len(x), WIDTH)).astype("float32") for x in batch]
    for name in model.layers[0].grad_names:
        model.layers[0].get_grad(name)[...] = 0
    _, backprop = model(batch, is_train=True)
    dXs = backprop(dYs)
    ours = {name: model.layers[0].get_grad(name).copy() for name in model.layers[0].grad_names}
    module.zero_grad(set_to_none=True)
    for x, dY, dX in zip(batch, dYs, dXs):
        if not len(x):
            assert dX.shape == (0, NI)
            continue
        X = torch.from_numpy(x.copy()).unsqueeze(0).requires_grad_()
        mask = torch.ones((1, len(x)), dtype=torch.bool)
        module(X, mask).backward(torch.from_numpy(dY).unsqueeze(0))
        assert_allclose(dX, X.grad[0].numpy(), rtol=RTOL, atol=ATOL)
    for name, param in module.named_parameters():
        expected = param.grad.numpy() if param.grad is not None else numpy.zeros(param.shape)
        assert_allclose(ours.get(name, numpy.zeros(param.shape)), expected, rtol=1e-4, atol=ATOL)
    module.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@given(batch=doc_batches(NI))
def test_bytes_round_trip(kind: str, batch: List) -> None:
    """W6, E4: to_bytes, then from_bytes into a fresh identical (unbuilt) encoder: identical
    outputs."""
    model = encoder(kind)
    fresh = BUILDERS[kind]().from_bytes(model.to_bytes())
    for a, b in zip(fresh.predict(batch), model.predict(batch)):
        assert_array_equal(a, b)
