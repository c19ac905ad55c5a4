"""Putting functions in spaCy's registries on import, where spaCy is installed.

An installed package is also found through its entry points (pyproject.toml); registering on
import serves code run from a source tree and keeps the modules importable without spaCy.
"""

from typing import Any, Callable, Dict


def register(kind: str, functions: Dict[str, Callable[..., Any]]) -> None:
    """Register `functions` by name in spaCy's registry `kind` ("architectures", "callbacks",
    ...); without spaCy, do nothing."""
    try:  # spaCy is an optional dependency
        from spacy.util import registry
    except ImportError:  # pragma: no cover - the test environment has spaCy
        return
    table = getattr(registry, kind)
    for name, function in functions.items():
        table(name)(function)
