"""The examples run top to bottom and do what they say."""

import importlib.util
from pathlib import Path

import pytest

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


def test_demo_plot_is_a_png_with_labelled_axes(tmp_path):
    """The spaCy demo draws its curves with matplotlib: a PNG, every panel with axis labels,
    ticks and a legend."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    spec = importlib.util.spec_from_file_location("plots", EXAMPLES / "spacy_demo" / "plots.py")
    assert spec is not None and spec.loader is not None
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    steps = [
        {"step": 10 * i, "losses": {"textcat": 2.0 / (i + 1)}, "score": i / 5} for i in range(5)
    ]
    curve = [{"epoch": e, "loss": 3.0 - e, "live": 0.5, "averages": 0.6} for e in range(1, 4)]
    figures = []
    real_close = plt.close
    plt.close = figures.append  # keep the figure to look at it
    try:
        plots.plot_curves(tmp_path / "curves.png", steps, curve, "TRAVEL")
    finally:
        plt.close = real_close
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = figures
    for ax in figure.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
        assert len(ax.get_xticks()) > 1 and len(ax.get_yticks()) > 1
    real_close(figure)


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


def test_transformer_ner_example(capsys):
    """T1, T3, T6, E3: examples/transformer_ner trains spaCy's ner over the real MiniLM
    (HFTransformer.v1), adds a type with every old entity unchanged, and the saved pipeline
    loads offline with the MiniLM directory gone, with identical entities."""
    pytest.importorskip("all_minilm_l6_v2")
    spec = importlib.util.spec_from_file_location(
        "transformer_ner", EXAMPLES / "transformer_ner" / "run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(sentences=32, epochs=1)
    out = capsys.readouterr().out
    assert "old entities unchanged: True" in out and "entities identical: True" in out
    assert report["unchanged"] and report["same"]
