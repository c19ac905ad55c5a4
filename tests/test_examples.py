"""The examples run top to bottom and do what they say."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns_the_spirals(capsys):
    """W1, W4, D2, A2: the quickstart trains a torch encoder under Thinc to high accuracy."""
    accuracy = load("quickstart").main(epochs=8)
    assert accuracy > 0.9
    assert "averaged weights" in capsys.readouterr().out


def test_ner_encoder_example(capsys):
    """E3, C2: examples/ner_encoder trains ner on a torch BiLSTM with spacy train, adds an
    entity type without changing old predictions, and learns it (~15 s on CPU)."""
    spec = importlib.util.spec_from_file_location(
        "ner_encoder", EXAMPLES / "ner_encoder" / "run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main()
    out = capsys.readouterr().out
    assert "old predictions unchanged: True" in out
    assert "encoder weights moved while learning PRODUCT: True" in out
    assert report["PRODUCT f"] > 0.5 and report["ents_f before"] > 0.8
