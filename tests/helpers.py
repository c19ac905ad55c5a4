"""Reference code shared by the example tests and the properties."""

import copy
from typing import Dict, List

import numpy
import torch
from numpy.testing import assert_array_equal
from thinc.api import Model

from torchlayers import with_torch

NI, NH, NO = 6, 5, 3


def mlp(nI: int = NI, nH: int = NH, nO: int = NO, seed: int = 0) -> torch.nn.Sequential:
    """Linear, Tanh, Linear with seeded weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(nI, nH), torch.nn.Tanh(), torch.nn.Linear(nH, nO))


def batch(n: int = 4, width: int = NI, seed: int = 0, dtype: str = "float32") -> numpy.ndarray:
    """A seeded batch of unit-scale inputs."""
    return numpy.random.default_rng(seed).uniform(-1, 1, (n, width)).astype(dtype)


def train_step(model, X, dY, optimizer):
    """Forward, backprop from dY, one update; returns (Y, dX)."""
    Y, backprop = model(X, is_train=True)
    dX = backprop(dY)
    model.finish_update(optimizer)
    return Y, dX


def reference_ema(history: List[Dict], max_decay: float = 0.9999) -> Dict:
    """SPEC A1 in float64: the first post-update values, then avg -= (1 - d_t) * (avg - w)."""
    avg: Dict = {}
    for t, weights in enumerate(history, start=1):
        for key, w in weights.items():
            if t == 1:
                avg[key] = w.astype("float64")
            else:
                decay = min((1 + t) / (10 + t), max_decay)
                avg[key] -= (1 - decay) * (avg[key] - w)
    return avg


def bag_of_words(n_features: int) -> Model:
    """Docs -> (n_docs, n_features) counts of hashed lowercase tokens; no gradient."""

    def forward(model: Model, docs: List, is_train: bool):
        X = model.ops.alloc2f(len(docs), n_features)
        for i, doc in enumerate(docs):
            for token in doc:
                X[i, token.lower % n_features] += 1
        return X, lambda dX: []

    return Model("bag_of_words", forward)


def refuse_unpickling(monkeypatch) -> None:
    """A pickle spy: pickle, torch.load and srsly's pickle fail if anything calls them."""
    import pickle

    import srsly

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    for owner, name in (
        (pickle, "loads"),
        (pickle, "load"),
        (torch, "load"),
        (srsly, "pickle_loads"),
    ):
        monkeypatch.setattr(owner, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def run_threads(work, count: int, timeout: float = 60) -> bool:
    """Run `work` on `count` threads at once; True if all finished within `timeout` each."""
    import threading

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return not any(thread.is_alive() for thread in threads)


def assert_gradients_equal_torch(module: torch.nn.Module, X: numpy.ndarray, dY: numpy.ndarray):
    """W2: with_torch(module)'s dX and parameter gradients equal plain torch autograd on a
    copy of the module, bit for bit."""
    reference = copy.deepcopy(module)
    model = with_torch(module)
    _, backprop = model(X, is_train=True)
    dX = backprop(dY)
    X_t = torch.from_numpy(X.copy()).requires_grad_()
    reference(X_t).backward(torch.from_numpy(dY))
    assert_array_equal(dX, X_t.grad.numpy())
    for name, param in reference.named_parameters():
        assert_array_equal(model.get_grad(name), param.grad.numpy())


TINY_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "dog", "cat", "run",
                   "##s", "sleep", "big", "##gest", "sun", ".", ",", "paris", "berlin", "in", "is",
                   "##ing", "walk", "##ed", "to"]  # fmt: skip
TINY_BERT_WIDTH = 16


def save_tiny_bert(path) -> str:
    """A random 2-layer BERT, 16 wide, with a fast WordPiece tokenizer over TINY_BERT_VOCAB,
    written to `path` as save_pretrained writes it (the HFTransformer.v1 tests, T1-T6)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_BERT_VOCAB), hidden_size=TINY_BERT_WIDTH, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    tokenizer = BertTokenizerFast(vocab={piece: i for i, piece in enumerate(TINY_BERT_VOCAB)})
    assert tokenizer(["the", "biggest"], is_split_into_words=True).input_ids == [2, 5, 12, 13, 3]
    tokenizer.save_pretrained(path)
    return str(path)
