"""torch_ner (N1-N4): a spaCy entity recognizer on torchlayers, with and without a CRF."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy
import pytest
import torch
from thinc.api import Adam, fix_random_seed

from torchlayers.averaged import use_averages

spacy = pytest.importorskip("spacy")
from spacy.tokens import Doc, DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402

from torchlayers.spacy.biluo import allowed_transitions, is_valid  # noqa: E402
from torchlayers.spacy.ner import TorchEntityRecognizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "torch_ner"))
from ner_corpus import LABELS, NEW_LABEL, make_corpus  # noqa: E402

TOK2VEC = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 32,
    "depth": 2, "embed_size": 1000, "window_size": 1, "maxout_pieces": 2,
    "subword_features": True,
}  # fmt: skip
TRAIN = make_corpus(LABELS, 160, seed=1)
DEV = make_corpus(LABELS, 40, seed=2)
NEW = make_corpus(LABELS + [NEW_LABEL], 160, seed=3)
PROBES = [text for text, _ in DEV] + [text for text, _ in make_corpus([NEW_LABEL], 20, seed=4)]
CACHE: Dict[bool, Tuple[Any, Any]] = {}
EMA = 0.999  # the shared pipeline keeps torchlayers' EMA (max_decay set; the default has none)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy 2-core machine two threads make these steps 3-5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_nlp(transitions: bool = False, **model: Any):
    nlp = spacy.blank("en")
    config = {"model": {"tok2vec": TOK2VEC, "hidden_width": 32, "transitions": transitions}}
    config["model"].update(model)
    nlp.add_pipe("torch_ner", config=config)
    return nlp


def examples(nlp, data) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def train(nlp, optimizer, data, epochs: int, drop: float = 0.1) -> None:
    batch = examples(nlp, data)
    for epoch in range(epochs):
        numpy.random.RandomState(epoch).shuffle(batch)  # type: ignore[arg-type]
        for i in range(0, len(batch), 16):
            nlp.update(batch[i : i + 16], sgd=optimizer, drop=drop)


def trained(transitions: bool = False):
    """A pipeline trained on three types (shared: do not change it; see `fresh_copy`)."""
    if transitions not in CACHE:
        fix_random_seed(0)
        nlp = make_nlp(transitions, max_decay=EMA)
        nlp.initialize(lambda: examples(nlp, TRAIN))
        optimizer = Adam(0.01, use_averages=True)
        train(nlp, optimizer, TRAIN, epochs=4)
        CACHE[transitions] = (nlp, optimizer)
    return CACHE[transitions]


def fresh_copy(nlp, transitions: bool):
    """The same pipeline, rebuilt from its config and loaded from bytes."""
    copy = make_nlp(transitions, max_decay=EMA)
    return copy.from_bytes(nlp.to_bytes())


def ents(nlp, texts=PROBES) -> List[List[Tuple[int, int, str]]]:
    return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]


def scores(nlp, texts=PROBES[:5]) -> List[numpy.ndarray]:
    return [s.copy() for s in nlp.get_pipe("torch_ner").model.predict(list(nlp.pipe(texts)))]


@pytest.mark.parametrize("transitions", [False, True])
def test_learns_entities_and_decodes_valid_sequences(transitions: bool) -> None:
    """N1, N3: after training, valid BILUO sequences and spaCy's NER scores on held-out text."""
    nlp, _ = trained(transitions)
    ner = nlp.get_pipe("torch_ner")
    assert ner.labels == tuple(sorted(LABELS)) and len(ner.tags) == 13
    result = nlp.evaluate(examples(nlp, DEV))
    assert result["ents_f"] > 0.8
    assert set(result["ents_per_type"]) == set(LABELS)
    docs = [nlp.make_doc(text) for text in PROBES]
    assert all(is_valid(tags, len(LABELS)) for tags in ner.predict(docs))


def test_decoding_keeps_entities_whose_argmax_is_invalid() -> None:
    """N1: per-token argmax I-X I-X (invalid BILUO) decodes to an entity, not to none at all
    (spaCy's PyTorch NER tutorial drops every entity of such a doc)."""
    nlp = make_nlp()
    ner = nlp.get_pipe("torch_ner")
    ner.add_label("X")
    scores = numpy.full((3, 5), -5.0, dtype="f")
    scores[0, 0] = 0.0  # O
    scores[1:, 2] = 3.0  # I-X twice: the argmax is invalid; B-X, L-X a little lower
    scores[1, 1] = scores[2, 3] = 2.0
    (tags,) = ner.decode([scores])
    assert [ner.tags[i] for i in tags] == ["O", "B-X", "L-X"]


@pytest.mark.parametrize("transitions", [False, True])
def test_add_label_after_training_keeps_old_entities_then_learns(transitions: bool) -> None:
    """N2, N3, R3, R7: add_label on a trained pipeline grows the torch output layer (and the CRF
    matrix in both axes) by four tags; every old entity stays identical; the type then learns
    with a rehearsal sample of the old data."""
    nlp = fresh_copy(trained(transitions)[0], transitions)
    ner = nlp.get_pipe("torch_ner")
    before, old_scores = ents(nlp), scores(nlp)
    assert ner.add_label(NEW_LABEL) == 1 and ner.add_label(NEW_LABEL) == 0
    assert ner.model.get_dim("nO") == 17 and ner.tags[-4:][0] == f"B-{NEW_LABEL}"
    assert ents(nlp) == before
    for old, new in zip(old_scores, scores(nlp)):
        numpy.testing.assert_allclose(new[:, :13], old, rtol=1e-5, atol=1e-5)
        assert (new[:, 13:] == -16).all()
    if transitions:
        crf = ner.model.get_ref("transitions").get_param("transitions.weight")
        assert crf.shape == (18, 18) and (crf[14:, :] == 0).all() and (crf[:, 14:] == 0).all()
    train(nlp, Adam(0.01), NEW[:96] + TRAIN[:32], epochs=3)
    per_type = nlp.evaluate(examples(nlp, make_corpus([NEW_LABEL], 40, seed=5)))["ents_per_type"]
    assert per_type[NEW_LABEL]["f"] > 0.5


def test_add_label_before_training() -> None:
    """N2: types added before initialize set the output size; initialize adds the rest."""
    nlp = make_nlp()
    ner = nlp.get_pipe("torch_ner")
    ner.add_label(NEW_LABEL)
    nlp.initialize(lambda: examples(nlp, TRAIN[:20]))
    assert ner.labels == (NEW_LABEL, *sorted(LABELS))
    assert ner.model.get_dim("nO") == 17
    assert ner.model.predict([nlp.make_doc("Paris flew to Berlin .")])[0].shape == (5, 17)


@pytest.mark.parametrize("label", [3, None, "", "  ", "B-X", "U-ORG", "-", "-X", "O"])
def test_bad_labels_are_refused(label: Any) -> None:
    """N1: a label that is not a str, is empty or reads as a BILUO tag: a clear ValueError."""
    ner = make_nlp().get_pipe("torch_ner")
    with pytest.raises(ValueError, match="torch_ner: .*entity type"):
        ner.add_label(label)
    assert ner.labels == ()


def test_set_output_takes_whole_types_only() -> None:
    """N2, R9: set_output (spaCy's resize_output hook) takes 1 + 4 * types tags, else ValueError."""
    ner = make_nlp().get_pipe("torch_ner")
    ner.set_output(9)
    assert ner.model.get_dim("nO") == 9
    for bad in (6, 0, 9.0, True):
        with pytest.raises(ValueError, match="n_tags must be 1 \\+ 4 \\* types"):
            ner.set_output(bad)


@pytest.mark.parametrize("transitions", [False, True])
def test_initialize_without_entities_gives_no_types_then_add_label_trains(
    transitions: bool,
) -> None:
    """N6, N2: no gold entities and no labels: no types, one output (O), no entities
    predicted; add_label then grows the model and the types train."""
    fix_random_seed(0)
    nlp = make_nlp(transitions)
    plain = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t in ("no entities here", "none")]
    nlp.initialize(lambda: plain)
    ner = nlp.get_pipe("torch_ner")
    assert ner.labels == () and ner.tags == ["O"] and ner.model.get_dim("nO") == 1
    assert ents(nlp) == [[] for _ in PROBES]
    assert nlp.update(plain, sgd=Adam(0.01))["torch_ner"] == 0.0
    for label in LABELS:
        ner.add_label(label)
    assert ner.model.get_dim("nO") == 13
    train(nlp, Adam(0.01), TRAIN, epochs=4)
    assert nlp.evaluate(examples(nlp, DEV))["ents_f"] > 0.6
    other = make_nlp(transitions).get_pipe("torch_ner")
    other.initialize(lambda: plain, labels=["CITY"])  # what [initialize.components] passes
    assert other.labels == ("CITY",) and other.model.get_dim("nO") == 5


@pytest.mark.parametrize("transitions", [False, True])
def test_missing_annotation_gives_no_gradient(transitions: bool) -> None:
    """N1, N3: docs without gold entity annotation get no gradient; per token, neither do
    tokens without it (None, '-'); the CRF sums over every tag there."""
    nlp, _ = trained(transitions)
    ner = nlp.get_pipe("torch_ner")
    text = "Paris said the plan would work ."
    unannotated = Example(nlp.make_doc(text), nlp.make_doc(text))  # no ENT_IOB at all
    partial = Example.from_dict(nlp.make_doc(text), {"entities": ["U-PERSON"] + ["-"] * 6})
    docs = [unannotated.predicted, partial.predicted]
    loss, d_scores = ner.get_loss([unannotated, partial], ner.model.predict(docs))
    assert (d_scores[0] == 0).all()
    if not transitions:  # per token: a missing token's row is zero (the CRF marginalises it)
        assert (d_scores[1][1:] == 0).all()
    assert numpy.abs(d_scores[1]).sum() > 0 and loss >= 0
    empty = Example(nlp.make_doc(""), nlp.make_doc(""))
    assert nlp.update([empty]) == {"torch_ner": 0.0}


def test_unknown_gold_type_is_a_clear_error() -> None:
    """N1: a gold entity of a type the component does not have: ValueError naming it."""
    nlp = fresh_copy(trained()[0], False)
    eg = Example.from_dict(nlp.make_doc("I bought a Kindle ."), {"entities": [(11, 17, "GADGET")]})
    with pytest.raises(ValueError, match="'GADGET' is not one of"):
        nlp.update([eg])


def test_update_drop_reaches_the_torch_dropout() -> None:
    """N1, D2, D6: nlp.update(drop=...) sets the rate of with_dropout and of the torch MLP's
    own Dropout; prediction runs it in eval mode."""
    nlp = fresh_copy(trained()[0], False)
    model = nlp.get_pipe("torch_ner").model
    hidden = next(n for n in model.walk() if n.name == "with_torch(torch_mlp)")
    dropout = next(m for m in hidden.shims[0].module.modules() if isinstance(m, torch.nn.Dropout))
    seen: List[tuple] = []
    dropout.register_forward_hook(lambda m, i, o: seen.append((m.training, m.p)))
    nlp.update(examples(nlp, TRAIN[:4]), sgd=Adam(0.001), drop=0.35)
    assert seen == [(True, 0.35)]
    rates = [
        n.attrs["dropout_rate"]
        for n in model.walk()
        if n.name == "with_dropout(with_torch(torch_mlp))"
    ]
    assert rates == [0.35]
    nlp("Paris")
    assert seen[-1] == (False, 0.0)


@pytest.mark.parametrize("transitions", [False, True])
def test_use_params_and_use_averages_swap_the_torch_weights(transitions: bool) -> None:
    """N1, W5, A2: nlp.use_params(optimizer.averages) and use_averages change the scores (and the
    CRF's transitions); the live ones come back."""
    nlp, optimizer = trained(transitions)
    ner = nlp.get_pipe("torch_ner")
    live = scores(nlp)
    with nlp.use_params(optimizer.averages):
        swapped = scores(nlp)
    with use_averages(ner.model):
        ema = scores(nlp)
        ema_trans = ner._learned_transitions()
    for a, b, c, d in zip(live, swapped, ema, scores(nlp)):
        assert not numpy.allclose(a, b) and not numpy.allclose(a, c)
        numpy.testing.assert_array_equal(a, d)
    if transitions:
        assert not numpy.allclose(ema_trans, ner._learned_transitions())


LOAD = """
import json, sys
import spacy  # no torchlayers import: the factory comes from the entry points
out = {}
texts = json.loads(sys.argv[-1])
for path in sys.argv[1:-1]:
    nlp = spacy.load(path)
    out[path] = [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(texts)]
print(json.dumps(out))
"""


def test_to_disk_and_spacy_load_in_a_fresh_process(tmp_path: Path) -> None:
    """N1, N2, N4, W6: to_disk/from_disk and spacy.load in a new Python (entry points only)
    give identical entities, also after add_label, with and without the CRF."""
    expected = {}
    for transitions in (False, True):
        nlp = fresh_copy(trained(transitions)[0], transitions)
        nlp.get_pipe("torch_ner").add_label(NEW_LABEL)
        path = tmp_path / f"crf{transitions}"
        nlp.to_disk(path)
        expected[str(path)] = [[list(e) for e in doc] for doc in ents(nlp)]
        loaded = make_nlp(transitions, max_decay=EMA).from_disk(path)
        assert ents(loaded) == ents(nlp)
    done = subprocess.run(
        [sys.executable, "-c", LOAD, *expected, json.dumps(PROBES)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(done.stdout) == expected


def test_scorer_agrees_with_spacy_ner() -> None:
    """N1: on the same predictions, our scorer and spaCy's own `ner` give the same scores."""
    nlp, _ = trained()
    predicted = list(nlp.pipe(text for text, _ in DEV))
    egs = [Example.from_dict(doc, {"entities": e}) for doc, (_, e) in zip(predicted, DEV)]
    spacy_ner = spacy.blank("en").add_pipe("ner")
    ours = nlp.get_pipe("torch_ner").score(egs)
    assert ours == spacy_ner.score(egs)
    assert set(ours) == {"ents_p", "ents_r", "ents_f", "ents_per_type"}


BASE_CONFIG = """
[nlp]
lang = "en"
pipeline = ["torch_ner"]

[components]

[components.torch_ner]
factory = "torch_ner"

[components.torch_ner.model]
@architectures = "torchlayers.TorchNER.v1"
hidden_width = 16
transitions = true

[components.torch_ner.model.tok2vec]
@architectures = "spacy.HashEmbedCNN.v2"
pretrained_vectors = null
width = 16
depth = 1
embed_size = 500
window_size = 1
maxout_pieces = 2
subword_features = false

[training]
max_steps = 12
eval_frequency = 6
"""


CLI = """
import sys
from spacy.cli import app  # spaCy's command line; no torchlayers import, no --code
for command in sys.argv[1:]:
    app(command.split(), standalone_mode=False)
"""


def test_cli_fill_config_train_evaluate(tmp_path: Path) -> None:
    """N4: `spacy init fill-config`, `spacy train` and `spacy evaluate` find the factory and
    the architecture through the entry points (no --code). One process runs the three
    commands through spaCy's CLI app (a process each would cost three start-ups)."""
    nlp = spacy.blank("en")
    for name, data in (("train", TRAIN[:60]), ("dev", DEV[:20])):
        DocBin(docs=[eg.reference for eg in examples(nlp, data)]).to_disk(
            tmp_path / f"{name}.spacy"
        )
    (tmp_path / "base.cfg").write_text(BASE_CONFIG)
    commands = [
        "init fill-config base.cfg config.cfg",
        "train config.cfg --output out --paths.train train.spacy --paths.dev dev.spacy",
        "evaluate out/model-last dev.spacy --output metrics.json",
    ]
    done = subprocess.run(
        [sys.executable, "-c", CLI, *commands],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "transitions = true" in (tmp_path / "config.cfg").read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"ents_f", "ents_p", "ents_r", "ents_per_type"} <= set(metrics)


def test_component_reads_like_spacy_ner() -> None:
    """N1: the factory builds a TorchEntityRecognizer; an empty doc gets no entities."""
    nlp, _ = trained()
    assert isinstance(nlp.get_pipe("torch_ner"), TorchEntityRecognizer)
    assert nlp("").ents == () and isinstance(nlp("Paris"), Doc)


def test_allowed_transitions_spell_biluo():
    """N1: the BILUO constraint matrix of one type, row by row (from -> to)."""
    allowed, start, end = allowed_transitions(1)  # O, B-X, I-X, L-X, U-X
    assert allowed.astype(int).tolist() == [
        [1, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1],
        [1, 1, 0, 0, 1],
    ]
    assert start.astype(int).tolist() == [1, 1, 0, 0, 1]
    assert end.astype(int).tolist() == [1, 0, 0, 1, 1]


def test_batched_decoding_equals_each_doc_alone():
    """P8, N1: docs of different lengths decode together (one loop over time steps for the
    whole batch, padded) to exactly what each decodes to alone."""
    from torchlayers.spacy.biluo import transition_scores, viterbi

    rng = numpy.random.default_rng(0)
    trans, start, end = transition_scores(3)
    docs = [rng.normal(size=(n, 13)).astype("f") for n in (7, 1, 0, 12, 4)]
    together = viterbi(docs, trans, start, end)
    for doc, tags in zip(docs, together):
        (alone,) = viterbi([doc], trans, start, end)
        assert tags.tolist() == alone.tolist() and is_valid(tags.tolist(), 3)
