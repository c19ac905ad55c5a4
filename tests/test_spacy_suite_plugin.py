"""The E6 harness itself (tests/spacy_suite.py): its choice of encoder, its known failures."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any, List

import pytest

spacy = pytest.importorskip("spacy")

from tests import spacy_suite  # noqa: E402

SPACY_ROOT = Path(spacy.__file__).parent.parent


def test_an_unknown_encoder_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """E6: TORCHLAYERS_ENCODER names one of the shipped encoders, or the run does not start."""
    monkeypatch.setenv("TORCHLAYERS_ENCODER", "cnn")
    with pytest.raises(pytest.UsageError, match="expected one of"):
        spacy_suite.chosen()


@pytest.mark.parametrize("width, expected", [(96, 4), (333, 3), (342, 3), (98, 2), (7, 1)])
def test_heads_divide_the_width(width: int, expected: int) -> None:
    """E6: the Transformer gets the most heads up to 4 that divide spaCy's widths."""
    assert spacy_suite.heads(width) == expected


def test_known_failures_become_strict_xfails(monkeypatch: pytest.MonkeyPatch) -> None:
    """E6: a known failure is marked strict xfail with its reason (a fix then fails the run
    until the entry goes); every other test is left alone."""
    monkeypatch.setenv("TORCHLAYERS_ENCODER", "transformer")
    known = "spacy/tests/test_x.py::t_known"
    monkeypatch.setitem(spacy_suite.KNOWN_FAILURES, "transformer", {known: "why it fails"})
    items: List[Any] = [
        FakeItem(f"site-packages/{known}"),
        FakeItem("spacy/tests/test_x.py::t_other"),
    ]
    spacy_suite.pytest_collection_modifyitems(SimpleNamespace(), items)  # type: ignore[arg-type]
    marked, other = items
    assert [m.name for m in marked.markers] == ["xfail"]
    assert marked.markers[0].kwargs["strict"] is True and marked.markers[0].kwargs["reason"]
    assert other.markers == []


def test_known_failures_name_tests_spacy_has() -> None:
    """E6: each known failure names a test function in the installed spaCy's own suite."""
    for known in spacy_suite.KNOWN_FAILURES.values():
        for nodeid in known:
            path, name = nodeid.split("::")
            source = SPACY_ROOT / path
            assert source.exists(), nodeid
            assert f"def {name.split('[')[0]}(" in source.read_text(encoding="utf8"), nodeid


class FakeItem:
    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.markers: List[Any] = []

    def add_marker(self, marker: Any) -> None:
        self.markers.append(marker.mark)
