"""The row of docs/comparison.md on BiLSTM encoders: Thinc's PyTorchLSTM against
torchlayers.TorchBiLSTMEncoder.v1. If Thinc starts packing, the first test fails and the row
needs rewriting."""

import numpy
import torch
from numpy.testing import assert_allclose
from thinc.api import PyTorchLSTM

from torchlayers.spacy.encoders import build_torch_bilstm_encoder

WIDTH = 16


def short_and_long():
    rng = numpy.random.default_rng(0)
    return [rng.uniform(-1, 1, (n, WIDTH)).astype("float32") for n in (3, 20)]


def test_pytorch_lstm_depends_on_the_batch() -> None:
    """E1 (the anchor of P7): PyTorchLSTM(bi=True) runs its backward direction through the
    padding, so a 3-token doc's outputs change when a 20-token doc shares its batch."""
    torch.manual_seed(0)
    model = PyTorchLSTM(WIDTH, WIDTH, bi=True)
    short, long = short_and_long()
    model.initialize(X=[short, long])
    alone = model.predict([short])[0]
    beside = model.predict([short, long])[0]
    assert numpy.abs(alone - beside).max() > 1e-2


def test_torch_bilstm_encoder_does_not() -> None:
    """E1: TorchBiLSTMEncoder.v1 gives the 3-token doc the same outputs alone or beside a
    20-token doc (float32 rounding)."""
    torch.manual_seed(0)
    model = build_torch_bilstm_encoder(WIDTH)
    short, long = short_and_long()
    model.initialize(X=[short, long])
    assert_allclose(model.predict([short])[0], model.predict([short, long])[0], atol=1e-6)
