"""Every config the docs show is a real one: C1, C2.

The demo's config.cfg is complete (`spacy init fill-config` adds nothing) and passes
`spacy debug config`; every ```ini fence in docs/*.md and README.md, merged into it, gives a
config that interpolates, validates and builds a pipeline.
"""

import copy
import importlib.util
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

spacy = pytest.importorskip("spacy")
from spacy.cli.debug_config import debug_config  # noqa: E402
from spacy.cli.init_config import fill_config  # noqa: E402
from spacy.util import load_config, load_model_from_config, registry  # noqa: E402
from thinc.api import Config  # noqa: E402

import torchlayers.spacy.callbacks  # noqa: E402, F401  (the spacy_callbacks entry point, installed)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "spacy_demo"
FENCE = re.compile(r"^```ini\n(.*?)^```", re.MULTILINE | re.DOTALL)


def load_demo_functions() -> None:
    """What `--code examples/spacy_demo/functions.py` does: register spacy_demo.TorchMLP.v1."""
    spec = importlib.util.spec_from_file_location("spacy_demo_functions", DEMO / "functions.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


@registry.architectures("my_project.TorchMLP.v1")
def my_project_mlp(nI: int, width: int = 32, dropout: float = 0.1) -> torch.nn.Module:
    """The function docs/spacy.md registers in the Python example beside its fragment."""
    return torch.nn.Sequential(
        torch.nn.Linear(nI, width), torch.nn.ReLU(), torch.nn.Dropout(dropout)
    )


def fragments() -> List[Tuple[str, str]]:
    """(where, text) of every ```ini fence in the docs and the README."""
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def parse(text: str) -> Config:
    """A fragment as a Config; parent sections it leaves out (`[components]`) are added."""
    headers = re.findall(r"^\[([^\]]+)\]", text, re.MULTILINE)
    parents = {".".join(h.split(".")[:i]) for h in headers for i in range(1, h.count(".") + 1)}
    missing = sorted(parents - set(headers), key=lambda name: name.count("."))
    return Config().from_str("".join(f"[{name}]\n" for name in missing) + text, interpolate=False)


def function_of(section: Dict[str, Any]) -> Optional[Tuple[str, Any]]:
    """The ("@registry", name) pair of a config section that names a function, else None."""
    return next(((k, v) for k, v in section.items() if k.startswith("@")), None)


def merge(base: Dict[str, Any], fragment: Dict[str, Any]) -> Dict[str, Any]:
    """`fragment` over `base`; a section naming another function replaces the base's wholly
    (its arguments are not the base function's)."""
    out = copy.deepcopy(base)
    for key, value in fragment.items():
        below = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(below, dict)
            and function_of(value) in (None, function_of(below))
        ):
            out[key] = merge(below, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_the_demo_config_is_complete_and_valid(tmp_path: Path) -> None:
    """C1, C2: `spacy init fill-config` adds nothing to the demo's config.cfg, and
    `spacy debug config config.cfg --code functions.py` passes."""
    load_demo_functions()
    _, filled = fill_config(tmp_path / "filled.cfg", DEMO / "config.cfg", silent=True)
    shipped = load_config(DEMO / "config.cfg", interpolate=False)
    assert dict(filled) == dict(shipped)
    debug_config(DEMO / "config.cfg", overrides={}, show_funcs=False, show_vars=False)


@pytest.mark.parametrize("where, text", fragments(), ids=[w for w, _ in fragments()])
def test_a_docs_config_fragment_builds_a_pipeline(where: str, text: str) -> None:
    """C1: the fragment, merged into the demo's config, interpolates (no `Bad value
    substitution`), validates and builds the pipeline it describes."""
    load_demo_functions()
    fragment = parse(text)
    config = Config(merge(load_config(DEMO / "config.cfg", interpolate=False), fragment))
    for name in fragment.get("components", {}):
        if name not in config["nlp"]["pipeline"]:
            config["nlp"]["pipeline"].append(name)
    config = config.interpolate()
    nlp = load_model_from_config(config, auto_fill=True, validate=True)
    assert set(fragment.get("components", {})) <= set(nlp.pipe_names), where
    registry.resolve(config["initialize"], validate=True)  # its callbacks exist and fit
