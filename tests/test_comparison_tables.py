"""The comparison tables of docs/comparison.md (PyTorchWrapper) and docs/transformers.md
(spacy-transformers) name their evidence: each row's last column names a test that exists, or
a benchmark script that exists and measures what the row says. A renamed or deleted test fails
here, so a row cannot keep citing a check that no longer runs."""

import ast
import re
from pathlib import Path
from typing import List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = {  # page: the test file a bare test name is looked up in
    "docs/comparison.md": "tests/test_comparison.py",
    "docs/transformers.md": "tests/test_hf_transformer.py",
}


def feature_rows(page: str) -> List[List[str]]:
    """The body rows (cells) of the page's table whose first header cell is "feature"."""
    lines = (ROOT / page).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*feature\s*\|", line))
    rows = []
    for line in lines[start + 2 :]:  # past the header and its --- line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def defined_tests(path: Path) -> Set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name[:5] == "test_"}


def row_problems(page: str, cells: List[str]) -> List[str]:
    """What is wrong with the evidence a row's last cell names (nothing: an empty list)."""
    cell, problems = cells[-1], []
    tests = re.findall(r"`(test_\w+)`", cell)
    files = [PAGES[page], *re.findall(r"`(tests/\w+\.py)`", cell)]
    benches = re.findall(r"`(bench/\w+\.py)[^`]*`", cell)
    if not tests and not benches:
        problems.append(f"{page}: row {cells[0]!r} names no test and no benchmark")
    absent = [f for f in files if not (ROOT / f).is_file()]
    if absent:
        problems.append(f"{page}: row {cells[0]!r} names test files that do not exist: {absent}")
    known = set().union(*(defined_tests(ROOT / f) for f in files if f not in absent))
    missing = [name for name in tests if name not in known]
    if missing:
        problems.append(f"{page}: row {cells[0]!r} names tests not in {files}: {missing}")
    for script in benches:
        text = (ROOT / script).read_text() if (ROOT / script).is_file() else ""
        for spec_id in re.findall(r"\((P\d+|Q\d+)\)", cell) or ["def main"]:
            if spec_id not in text:
                problems.append(f"{page}: {script} is missing or does not measure {spec_id}")
    return problems


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_row_names_an_existing_test_or_benchmark(page: str) -> None:
    """Each row's last cell names at least one test or `bench/` script; every test it names is
    a function of the page's test file or of a `tests/` file named in the same cell; every
    script it names exists and measures the SPEC id the cell gives beside it."""
    rows = feature_rows(page)
    assert len(rows) >= 10, f"{page}: the feature table was not found whole"
    assert [p for cells in rows for p in row_problems(page, cells)] == []


def test_a_row_citing_what_does_not_exist_is_reported() -> None:
    """The check fails on rows naming a test no file has, a missing test file or script, a
    script that does not measure the id, or nothing."""
    page = "docs/transformers.md"
    assert len(row_problems(page, ["copy", "`test_copy_trains_independently`"])) == 0
    assert len(row_problems(page, ["a", "`test_no_such_check`"])) == 1
    assert len(row_problems(page, ["b", "`test_copy_trains_independently` (`tests/x.py`)"])) == 1
    assert len(row_problems(page, ["c", "measured: `bench/no_such.py` (P12)"])) == 1
    assert len(row_problems(page, ["d", "measured: `bench/bench_transformers.py` (P99)"])) == 1
    assert len(row_problems(page, ["e", "not measured"])) == 1
