"""HFTransformer.v1 against spacy-transformers: torchlayers' side of the rows of the table in
docs/transformers.md that no test in tests/test_hf_transformer.py already checks.

spacy-transformers is not a dependency, so its side of each row is a measurement
(bench/bench_transformers.py) or the PyTorchShim behaviour its HFShim inherits (checked on
PyTorchWrapper in tests/test_comparison.py), not a test here.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from typing import Dict  # noqa: E402

import numpy  # noqa: E402
import pytest  # noqa: E402
from numpy.testing import assert_array_equal  # noqa: E402

spacy = pytest.importorskip("spacy")
transformers = pytest.importorskip("transformers")
from spacy.training import Example  # noqa: E402
from thinc.api import Adam  # noqa: E402

from tests.helpers import save_tiny_bert  # noqa: E402
from torchlayers.spacy.hf_transformer import build_hf_transformer, save_pretrained  # noqa: E402

TRAIN = [("the dog walked to paris .", "paris"), ("a cat is in berlin", "berlin"),
         ("berlin is big", "berlin")]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A random 2-layer BERT, 16 wide, with a fast WordPiece tokenizer (tests/helpers.py)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def ner_pipeline(tiny: str, optimizer: Adam, **settings) -> "spacy.Language":
    """spaCy's ner over HFTransformer.v1, initialized on TRAIN with `optimizer`."""
    nlp = spacy.blank("en")
    tok2vec = {"@architectures": "torchlayers.HFTransformer.v1", "name": tiny, "window": 16,
               "stride": 8, "dropout": 0.0, **settings}  # fmt: skip
    model = {"@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner",
             "hidden_width": 16, "maxout_pieces": 2, "tok2vec": tok2vec}  # fmt: skip
    nlp.add_pipe("ner", config={"model": model})
    nlp.initialize(lambda: examples(nlp), sgd=optimizer)
    return nlp


def examples(nlp) -> list:
    spans = [(text.index(place), text.index(place) + len(place), "GPE") for text, place in TRAIN]
    return [
        Example.from_dict(nlp.make_doc(text), {"entities": [span]})
        for (text, _), span in zip(TRAIN, spans)
    ]


def transformer_of(nlp):
    """The with_torch node holding the ner's transformer weights."""
    return next(n for n in nlp.get_pipe("ner").model.walk() if n.name == "hf_transformer").layers[0]


def weights(node) -> Dict[str, numpy.ndarray]:
    return {name: node.get_param(name).copy() for name in node.param_names}


def test_model_best_saved_inside_use_params_holds_averaged_transformer_weights(tiny, tmp_path):
    """T4, W5: spaCy's loop saves model-best inside nlp.use_params(optimizer.averages). With
    ner over HFTransformer.v1 trained by nlp.update (averages on), a pipeline saved there
    loads with the averaged value of every transformer weight the optimizer stepped, not the
    live one; after the block the live weights are back."""
    optimizer = Adam(0.01, use_averages=True)
    nlp = ner_pipeline(tiny, optimizer)
    for _ in range(4):
        nlp.update(examples(nlp), sgd=optimizer, drop=0.0)
    node = transformer_of(nlp)
    live = weights(node)
    with nlp.use_params(optimizer.averages):
        nlp.to_disk(tmp_path / "model-best")
    for name, value in live.items():
        assert_array_equal(node.get_param(name), value, err_msg=name)
    saved = weights(transformer_of(spacy.load(tmp_path / "model-best")))
    averaged = [name for name in live if (node.id, name) in optimizer.averages]
    assert len(averaged) > 30  # every weight but the pooler's
    for name in averaged:
        assert_array_equal(saved[name], optimizer.averages[(node.id, name)], err_msg=name)
    assert sum(not numpy.array_equal(saved[name], live[name]) for name in averaged) > 30


def test_frozen_transformer_in_a_pipeline_gets_no_optimizer_state(tiny):
    """T5: ner over HFTransformer.v1 with frozen=true, trained by nlp.update with an Adam that
    has L2 and averages (either would move a weight it steps): the transformer's weights stay
    bit-identical and the optimizer holds no moment and no average for them, while ner's own
    layers train."""
    optimizer = Adam(0.01, L2=0.01, use_averages=True)
    nlp = ner_pipeline(tiny, optimizer, frozen=True)
    node = transformer_of(nlp)
    before = weights(node)
    heads = [(n, p, n.get_param(p).copy()) for n in nlp.get_pipe("ner").model.walk()
             if n.id != node.id for p in n.param_names if n.has_param(p)]  # fmt: skip
    for _ in range(3):
        nlp.update(examples(nlp), sgd=optimizer, drop=0.1)
    keys = {(node.id, name) for name in node.param_names}
    state = set(optimizer.mom1) | set(optimizer.mom2) | set(optimizer.averages)
    assert state and not keys & state
    for name, value in before.items():
        assert_array_equal(node.get_param(name), value, err_msg=name)
    assert any(not numpy.array_equal(n.get_param(p), value) for n, p, value in heads)


def test_weights_exported_inside_use_params_are_the_averages(tiny, tmp_path):
    """T3, T4: save_pretrained inside model.use_params(optimizer.averages) writes the averaged
    transformer weights: AutoModel.from_pretrained reads the averages, not the live ones."""
    model = build_hf_transformer(tiny, dropout=0.0)
    model.initialize()
    optimizer = Adam(0.01, use_averages=True)
    docs = [spacy.blank("en")("the dog walked to paris .")]
    for _ in range(3):
        rows, backprop = model(docs, is_train=True)
        backprop([numpy.full_like(r, 0.5) for r in rows])
        model.finish_update(optimizer)
    node = model.layers[0]
    live = weights(node)
    with model.use_params(optimizer.averages):
        save_pretrained(model, tmp_path / "averaged")
    exported = transformers.AutoModel.from_pretrained(tmp_path / "averaged")
    found = {name: p.detach().numpy() for name, p in exported.named_parameters()}
    averaged = [name for name in live if (node.id, name) in optimizer.averages]
    assert len(averaged) > 30
    for name in averaged:
        assert_array_equal(found[name], optimizer.averages[(node.id, name)], err_msg=name)
    assert sum(not numpy.array_equal(found[name], live[name]) for name in averaged) > 30
    assert_array_equal(node.get_param(averaged[0]), live[averaged[0]])  # live ones back
