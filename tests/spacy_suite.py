"""pytest plugin: spaCy's own test suite with a torchlayers encoder in place of its CNN (E6).

    TORCHLAYERS_ENCODER=bilstm python -m pytest -p tests.spacy_suite --pyargs spacy.tests.parser

`make spacy-suite` runs the files SPEC E6 names once per shipped encoder. The plugin swaps
spaCy's default encoder, `MaxoutWindowEncoder` (the CNN under `spacy.HashEmbedCNN.v2`, every
default `tok2vec` and every component's default model), for a torchlayers encoder of the same
width, before any test builds a model: in the registry, for configs, and in the module that
`HashEmbedCNN` calls it from. The report header names the encoder, and the session refuses to
start if a default model would still get the CNN. Each test starts from seed 0, so a run
does not depend on the order of the tests.
"""

import os
from typing import Callable, Dict, List

import pytest
from thinc.api import Model
from thinc.types import Floats2d

from torchlayers.spacy.encoders import (
    build_torch_bilstm_encoder_v2,
    build_torch_transformer_encoder_v2,
)

Encoder = Model[List[Floats2d], List[Floats2d]]

# The CNN's arguments are (width, window_size, maxout_pieces, depth); each encoder keeps the
# width and its own shipped defaults otherwise: the suite checks the encoders as users get them.
# The Transformer takes the most heads up to its default 4 that divide the width (spaCy's
# suite builds widths such as 333 and 342, which a user would give 3 or 2 heads).
ENCODERS: Dict[str, Callable[[int], Encoder]] = {
    "bilstm": lambda width: build_torch_bilstm_encoder_v2(width),
    "transformer": lambda width: build_torch_transformer_encoder_v2(width, heads=heads(width)),
}


# Tests an encoder still fails, each with why: marked strict xfail, so the run stays green, the
# report counts them, and one that starts to pass fails the run until it is taken off the list.
KNOWN_FAILURES: Dict[str, Dict[str, str]] = {
    "bilstm": {},
    "transformer": {},
}


def heads(width: int) -> int:
    return next(n for n in (4, 3, 2, 1) if width % n == 0)


def chosen() -> str:
    name = os.environ.get("TORCHLAYERS_ENCODER", "bilstm")
    if name not in ENCODERS:
        raise pytest.UsageError(f"TORCHLAYERS_ENCODER={name!r}: expected one of {list(ENCODERS)}")
    return name


def torch_encoder(width: int, window_size: int, maxout_pieces: int, depth: int) -> Encoder:
    """Stands in for spaCy's `MaxoutWindowEncoder`: the chosen encoder at the same width."""
    return ENCODERS[chosen()](width)


def pytest_configure(config: pytest.Config) -> None:
    import spacy.ml.models.tok2vec as spacy_tok2vec
    from spacy import registry
    from spacy.registrations import populate_registry

    populate_registry()  # spaCy registers lazily: ours must come after its own
    spacy_tok2vec.MaxoutWindowEncoder = torch_encoder  # what HashEmbedCNN calls
    registry.architectures.register("spacy.MaxoutWindowEncoder.v2", func=torch_encoder)
    check_swapped()


def check_swapped() -> None:
    """A default tok2vec built from the registry must hold a torch encoder."""
    from spacy import registry

    build = registry.architectures.get("spacy.HashEmbedCNN.v2")
    tok2vec = build(
        width=8,
        depth=2,
        embed_size=10,
        window_size=1,
        maxout_pieces=3,
        subword_features=True,
        pretrained_vectors=None,
    )
    if not any(node.name.startswith("with_padding(") for node in tok2vec.walk()):
        raise pytest.UsageError("spacy_suite: spaCy's default tok2vec still builds its CNN")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    known = KNOWN_FAILURES[chosen()]
    for item in items:
        why = next((why for test, why in known.items() if item.nodeid.endswith(test)), None)
        if why is not None:
            item.add_marker(pytest.mark.xfail(reason=why, strict=True))


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from seed 0 (Python, numpy, torch): a test's result no longer depends
    on which tests ran before it and drew from the generators (spaCy's tests seed few)."""
    from thinc.api import fix_random_seed

    fix_random_seed(0)


def pytest_report_header(config: pytest.Config) -> str:
    return f"torchlayers encoder in place of spaCy's CNN: {chosen()}"
