"""The torch encoders on CUDA (E4, W8). Skipped where there is no GPU or no cupy, as in CI."""

import numpy
import pytest
import torch
from numpy.testing import assert_allclose
from thinc.api import Adam

from torchlayers.spacy.encoders import (
    build_torch_bilstm_encoder,
    build_torch_transformer_encoder,
)

try:
    import cupy
except ImportError:  # pragma: no cover - CPU machines
    cupy = None

pytestmark = pytest.mark.skipif(
    cupy is None or not torch.cuda.is_available(), reason="needs a CUDA GPU and cupy"
)


@pytest.mark.parametrize("build", [build_torch_bilstm_encoder, build_torch_transformer_encoder])
def test_encoder_on_gpu_matches_cpu(build) -> None:
    """E4, W8: to_gpu moves the encoder; cupy docs in, cupy rows out, equal to the CPU run
    (float32 kernels differ: 1e-4); a training step runs on the GPU; empty docs stay (0, nO)."""
    rng = numpy.random.default_rng(0)
    docs = [rng.uniform(-1, 1, (n, 6)).astype("float32") for n in (3, 0, 5)]
    torch.manual_seed(0)
    model = build(8)
    model.initialize(X=docs)
    expected = model.predict(docs)
    model.to_gpu(0)
    gpu_docs = [cupy.asarray(x) for x in docs]
    for y, e in zip(model.predict(gpu_docs), expected):
        assert isinstance(y, cupy.ndarray)
        assert_allclose(cupy.asnumpy(y), e, rtol=1e-4, atol=1e-4)
    Ys, backprop = model(gpu_docs, is_train=True)
    dXs = backprop([cupy.ones_like(y) for y in Ys])
    assert [dx.shape for dx in dXs] == [x.shape for x in docs]
    model.finish_update(Adam(0.01))


@pytest.mark.parametrize("build", [build_torch_bilstm_encoder, build_torch_transformer_encoder])
def test_encoder_mixed_precision(build) -> None:
    """E4, W8: mixed_precision=True trains on CUDA under autocast; spaCy sees float32 rows."""
    rng = numpy.random.default_rng(0)
    docs = [cupy.asarray(rng.uniform(-1, 1, (n, 6)).astype("float32")) for n in (3, 5)]
    model = build(8, mixed_precision=True)
    model.to_gpu(0)
    model.initialize(X=docs)
    Ys, backprop = model(docs, is_train=True)
    assert {y.dtype for y in Ys} == {numpy.dtype("float32")}
    dXs = backprop([cupy.ones_like(y) for y in Ys])
    assert {dx.dtype for dx in dXs} == {numpy.dtype("float32")}
    model.finish_update(Adam(0.01))
