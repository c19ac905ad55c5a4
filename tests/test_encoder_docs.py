"""docs/encoders.md: each ```ini config snippet assembles into a spaCy pipeline (E3)."""

import re
from pathlib import Path

import pytest

spacy = pytest.importorskip("spacy")

import torchlayers.spacy.encoders  # noqa: E402, F401  (the entry points do it in a config)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "encoders.md"
SNIPPETS = re.findall(r"```ini\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_both_configs() -> None:
    """E3: a ner on a torch BiLSTM and a shared tok2vec with listeners."""
    assert len(SNIPPETS) == 2


@pytest.mark.parametrize("snippet", SNIPPETS, ids=["ner", "shared tok2vec"])
def test_snippet_builds_a_pipeline(snippet: str) -> None:
    """E3: the snippet, with spaCy's defaults filled in, builds and initializes a pipeline
    whose encoder is torch."""
    config = spacy.util.load_config_from_str('[nlp]\nlang = "en"\n\n[components]\n\n' + snippet)
    names = [name for name in config["components"]]
    config["nlp"]["pipeline"] = names
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    assert nlp.pipe_names == names
    for name, pipe in nlp.pipeline:
        if name != "tok2vec":  # tok2vec has no labels
            pipe.add_label("X")
    nlp.initialize()
    doc = nlp("Alice visited Paris")
    assert len(doc) == 3
    nodes = [n.name for _, pipe in nlp.pipeline for n in pipe.model.walk()]
    assert any(name.startswith("with_padding(with_torch(") for name in nodes)
