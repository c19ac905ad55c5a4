"""W6, W7, W3 for spaCy pipelines on the shipped architectures: empty components serialize,
foreign bytes leave a component as it was, nothing unpickles, threads predict safely."""

from typing import Any, Dict

import pytest
import srsly
from thinc.api import Linear

spacy = pytest.importorskip("spacy")
from spacy.pipeline import Tagger, TextCategorizer  # noqa: E402
from spacy.util import registry  # noqa: E402

import torchlayers.spacy.architectures  # noqa: E402, F401  registers the architectures

from .helpers import refuse_unpickling, run_threads  # noqa: E402
from .test_loading import assert_same_state, state_of  # noqa: E402
from .test_spacy import TEXTS, TOK2VEC, scores, trained_nlp  # noqa: E402

ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "textcat": {"@architectures": "torchlayers.TorchTextCat.v1", "tok2vec": TOK2VEC,
                "exclusive_classes": True, "hidden_width": 8},
    "tagger": {"@architectures": "torchlayers.TorchTagger.v1", "tok2vec": TOK2VEC,
               "hidden_width": 8},
}  # fmt: skip
PIPES = {"textcat": TextCategorizer, "tagger": Tagger}


def empty_component(name: str):
    model = registry.resolve({"model": ARCHITECTURES[name]}, validate=True)["model"]
    vocab = spacy.blank("en").vocab
    if name == "textcat":
        return TextCategorizer(vocab, model, threshold=0.5)
    return Tagger(vocab, model)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_serialize_empty_component(name):
    """W6, W7: spaCy's test_serialize_textcat_empty on both architectures: a component whose
    model was never initialized saves, and its bytes load into a fresh identical one."""
    data = empty_component(name).to_bytes(exclude=["vocab"])
    fresh = empty_component(name)
    fresh.from_bytes(data, exclude=["vocab"])
    assert fresh.to_bytes(exclude=["vocab"]) == data


def test_foreign_model_bytes_leave_the_component_as_it_was():
    """W6: a trained component's model refuses bytes of another layer and of other sizes."""
    nlp, _ = trained_nlp(steps=1)
    model = nlp.get_pipe("textcat").model
    truncated = model.to_bytes()[:-7]  # (to_bytes folds the last step into the averages)
    before = state_of(model)
    other, _ = trained_nlp(steps=1, hidden_width=24)
    for data in (
        Linear(2, 2).initialize().to_bytes(),
        other.get_pipe("textcat").model.to_bytes(),
        srsly.msgpack_dumps({"nodes": 3}),
        b"",
        truncated,
    ):
        with pytest.raises(ValueError, match="averaged"):
            model.from_bytes(data)
        assert_same_state(before, state_of(model))


def test_pipeline_loads_without_unpickling(tmp_path, monkeypatch):
    """W6: nlp.to_disk and spacy.load of a trained pipeline call no pickle or torch.load."""
    nlp, _ = trained_nlp(steps=2)
    nlp.to_disk(tmp_path / "nlp")
    data = nlp.to_bytes()

    refuse_unpickling(monkeypatch)
    loaded = spacy.load(tmp_path / "nlp")
    assert scores(loaded) == scores(nlp)
    fresh, _ = trained_nlp(steps=0)
    fresh.from_bytes(data)
    assert scores(fresh) == scores(nlp)


def test_threads_predict_a_pipeline_alike():
    """W3: nlp.pipe from four threads gives exactly the single-thread scores."""
    nlp, _ = trained_nlp(steps=2, dropout=0.5)
    texts = [text for text, _ in TEXTS] * 4
    expected = scores(nlp, texts)
    results = []

    def work() -> None:
        for _ in range(5):
            results.append(scores(nlp, texts) == expected)

    assert run_threads(work, 4)
    assert len(results) == 20 and all(results)
