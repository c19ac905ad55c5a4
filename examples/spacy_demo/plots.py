"""The demo's training curves as a PNG, drawn with matplotlib (the `plots` extra).

Four panels: loss and dev score of `spacy train` by step (top), loss and dev accuracy of the
`nlp.update` run with the new label by epoch (bottom). Each has its own axes and units, so no
curve is rescaled to share one, and each legend is placed where it covers no data.
"""

from pathlib import Path
from typing import Dict, List


def plot_curves(path: Path, steps: List[Dict], curve: List[Dict[str, float]], new_label: str):
    """Write `path` (PNG): `steps` are spacy train's log lines, `curve` one row per epoch."""
    try:
        import matplotlib
    except ImportError as err:  # the demo's plot is optional; the checks are not
        raise SystemExit(
            "the demo draws its curves with matplotlib: pip install -e '.[plots]'"
        ) from err
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    step = [s["step"] for s in steps]
    epoch = [r["epoch"] for r in curve]
    draw(
        axes[0][0],
        "spacy train, 3 labels: loss",
        "optimizer step",
        "textcat loss\n(summed since the previous evaluation)",
        step,
        {"training loss": [s["losses"]["textcat"] for s in steps]},
    )
    draw(
        axes[0][1],
        "spacy train, 3 labels: dev score",
        "optimizer step",
        "dev macro F (0 to 1)",
        step,
        {"cats_macro_f": [s["score"] for s in steps]},
        unit_range=True,
    )
    draw(
        axes[1][0],
        f"nlp.update with {new_label}: loss",
        "epoch",
        "textcat loss\n(summed over the epoch's batches)",
        epoch,
        {"training loss": [r["loss"] for r in curve]},
    )
    draw(
        axes[1][1],
        f"nlp.update with {new_label}: dev accuracy, 4 labels",
        "epoch",
        "dev accuracy (fraction of docs)",
        epoch,
        {
            "live weights": [r["live"] for r in curve],
            "optimizer.averages": [r["averages"] for r in curve],
        },
        unit_range=True,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw(ax, title, xlabel, ylabel, x, series: Dict[str, List[float]], unit_range=False):
    """One panel: a line with markers per series, labelled axes, a legend clear of the data."""
    for (name, y), marker in zip(series.items(), "os^"):
        ax.plot(x, y, marker=marker, markersize=4, label=name)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if unit_range:
        ax.set_ylim(0, 1.05)
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
