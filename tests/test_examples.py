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
