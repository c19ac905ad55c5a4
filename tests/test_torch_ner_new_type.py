"""torch_ner: a new type from examples that label only it (N5), rehearse, the default's EMA."""

import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy
import pytest
import torch
from thinc.api import Adam, fix_random_seed, to_numpy

spacy = pytest.importorskip("spacy")
from spacy.tokens import DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402

from torchlayers.averaged import is_averaged, use_averages  # noqa: E402
from torchlayers.spacy._ner_teacher import ANNOTATED_WEIGHT  # noqa: E402
from torchlayers.spacy.biluo import transition_scores, viterbi  # noqa: E402
from torchlayers.spacy.ner import learned_transitions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "torch_ner"))
from ner_corpus import LABELS, NEW_LABEL, make_corpus  # noqa: E402

TOK2VEC = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 32,
    "depth": 2, "embed_size": 1000, "window_size": 1, "maxout_pieces": 2,
    "subword_features": True,
}  # fmt: skip
TRAIN = make_corpus(LABELS, 160, seed=1)
DEV = make_corpus(LABELS, 40, seed=2)
# The new type's examples: sentences with every type in them, only the new type's spans given.
ONLY_NEW = [
    (text, [e for e in ents if e[2] == NEW_LABEL])
    for text, ents in make_corpus(LABELS + [NEW_LABEL], 160, seed=3)
]
NEW_DEV = make_corpus([NEW_LABEL], 30, seed=5)
CACHE: Dict[bool, Tuple[bytes, float]] = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_nlp(transitions: bool = False, **settings: Any):
    nlp = spacy.blank("en")
    config = {"model": {"tok2vec": TOK2VEC, "hidden_width": 32, "transitions": transitions}}
    config.update(settings)
    nlp.add_pipe("torch_ner", config=config)
    return nlp


def examples(nlp, data) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def train(nlp, optimizer, data, epochs: int) -> None:
    batch = examples(nlp, data)
    for epoch in range(epochs):
        numpy.random.RandomState(epoch).shuffle(batch)  # type: ignore[arg-type]
        for i in range(0, len(batch), 16):
            nlp.update(batch[i : i + 16], sgd=optimizer, drop=0.1)


def old_types_trained(transitions: bool):
    """A pipeline trained on the three old types, its averages as its weights (as `spacy
    train` saves it), and its F on DEV; rebuilt from cached bytes for each test."""
    if transitions not in CACHE:
        fix_random_seed(0)
        nlp = make_nlp(transitions)
        nlp.initialize(lambda: examples(nlp, TRAIN))
        optimizer = Adam(0.01, use_averages=True)
        train(nlp, optimizer, TRAIN, epochs=5)
        with nlp.use_params(optimizer.averages):
            CACHE[transitions] = (nlp.to_bytes(), nlp.evaluate(examples(nlp, DEV))["ents_f"])
    data, f = CACHE[transitions]
    return make_nlp(transitions).from_bytes(data), f


def probe_scores(nlp, texts=tuple(t for t, _ in DEV[:6])) -> List[numpy.ndarray]:
    return [s.copy() for s in nlp.get_pipe("torch_ner").model.predict(list(nlp.pipe(texts)))]


@pytest.mark.parametrize("transitions", [False, True])
def test_annotated_types_learns_the_new_type_and_keeps_the_old(transitions: bool) -> None:
    """N5, N2, N3: add_label, then train on examples that label only the new type (every other
    token O): with annotated_types the old types' F stays (within 3 points on this small
    corpus) and the new type learns; without it, the old types are unlearned."""
    results = {}
    for setting in (None, [NEW_LABEL]):
        nlp, before = old_types_trained(transitions)
        ner = nlp.get_pipe("torch_ner")
        ner.add_label(NEW_LABEL)
        ner.annotated_types = setting
        fix_random_seed(1)
        train(nlp, Adam(0.01), ONLY_NEW, epochs=3)
        old = nlp.evaluate(examples(nlp, DEV))["ents_f"]
        new = nlp.evaluate(examples(nlp, NEW_DEV))["ents_per_type"][NEW_LABEL]["f"]
        results[str(setting)] = (before, old, new)
    before, old, new = results[str([NEW_LABEL])]
    assert old >= before - 0.03 and new > 0.6, results
    assert results["None"][1] < before - 0.3, results  # what the setting prevents


@pytest.mark.parametrize("transitions", [False, True])
def test_teacher_is_the_model_when_the_setting_takes_effect(transitions: bool) -> None:
    """N5, W5: the first update with the setting takes the teacher: the model as it was, with
    the optimizer's averages swapped in when there are some; later updates keep it; changing
    the setting or initialize retires it; add_label grows it with the model, its old scores
    unchanged."""
    nlp, _ = old_types_trained(transitions)
    ner = nlp.get_pipe("torch_ner")
    optimizer = Adam(0.01, use_averages=True)
    train(nlp, optimizer, TRAIN[:32], epochs=1)  # averages differ from the live weights
    with nlp.use_params(optimizer.averages):
        averaged = probe_scores(nlp)
    ner.annotated_types = ["CITY"]
    assert ner._teacher is None
    nlp.update(examples(nlp, TRAIN[:8]), sgd=optimizer)
    teacher = ner._teacher
    docs = [nlp.make_doc(t) for t, _ in DEV[:6]]
    for got, want in zip(teacher.predict(docs), averaged):
        numpy.testing.assert_array_equal(got, want)
    nlp.update(examples(nlp, TRAIN[8:16]), sgd=optimizer)
    assert ner._teacher is teacher
    ner.add_label(NEW_LABEL)
    assert ner._teacher is teacher and teacher.get_dim("nO") == 17
    for got, want in zip(teacher.predict(docs), averaged):
        numpy.testing.assert_allclose(got[:, :13], want, rtol=1e-5, atol=1e-5)
    ner.annotated_types = ["CITY"]  # the same: kept
    assert ner._teacher is teacher
    ner.annotated_types = [NEW_LABEL]
    assert ner._teacher is None
    nlp.update(examples(nlp, TRAIN[:8]), sgd=optimizer)
    assert ner._teacher is not None
    ner.initialize(lambda: examples(nlp, TRAIN[:8]))  # new weights: the copy retires
    assert ner._teacher is None


def test_setting_in_the_config_and_as_attribute() -> None:
    """N5: `annotated_types` is a factory setting (default null), the component's attribute;
    a config may name types that initialize adds; initialize checks them."""
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("torch_ner")
    assert nlp.config["components"]["torch_ner"]["annotated_types"] is None
    assert ner.annotated_types is None
    nlp = make_nlp(annotated_types=["CITY"])
    ner = nlp.get_pipe("torch_ner")
    assert ner.annotated_types == ("CITY",)
    nlp.initialize(lambda: examples(nlp, TRAIN[:20]))
    assert ner.annotated_types == ("CITY",) and "CITY" in ner.labels
    nlp = make_nlp(annotated_types=["GADGET"])
    with pytest.raises(ValueError, match="torch_ner: annotated_types: 'GADGET' is not one of"):
        nlp.initialize(lambda: examples(nlp, TRAIN[:20]))


@pytest.mark.parametrize(
    "value, message",
    [
        (["GADGET"], "'GADGET' is not one of this component's types"),
        ([], "must name at least one type"),
        ([3], "an entity type must be a str, got 3"),
        ("CITY", "must be a list of entity types or None"),
        ({"CITY": 1}, "must be a list of entity types or None"),
    ],
)
def test_bad_settings_are_refused(value: Any, message: str) -> None:
    """N5: a type the component does not have, an empty list, a non-string: ValueError naming
    the component and the setting; the setting stays as it was."""
    nlp, _ = old_types_trained(False)
    ner = nlp.get_pipe("torch_ner")
    ner.annotated_types = ["CITY"]
    with pytest.raises(ValueError, match=f"torch_ner: annotated_types.*{message}"):
        ner.annotated_types = value
    assert ner.annotated_types == ("CITY",)
    if value != ["GADGET"]:  # an unknown type may wait for initialize; the rest may not
        with pytest.raises(ValueError, match="annotated_types"):  # spaCy's or ours
            make_nlp(annotated_types=value)


def test_gradient_outside_gold_spans_follows_the_teacher() -> None:
    """N5: with the setting, a gold O token's gradient is softmax - the teacher's softmax
    without the annotated type's tags; a token in a gold span gets ANNOTATED_WEIGHT *
    (softmax - one_hot)."""
    nlp, _ = old_types_trained(False)
    ner = nlp.get_pipe("torch_ner")
    ner.annotated_types = ["CITY"]
    eg = Example.from_dict(nlp.make_doc("Mary flew to Paris ."), {"entities": [(13, 18, "CITY")]})
    scores = ner.model.predict([eg.predicted])
    teacher = ner._snapshot(None).predict([eg.predicted])[0]
    _, (d,) = ner.get_loss([eg], scores)
    probs = numpy.exp(scores[0] - scores[0].max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    city = [i for i, tag in enumerate(ner.tags) if tag.endswith("-CITY")]
    target = numpy.exp(teacher - teacher.max(1, keepdims=True))
    target[:, city] = 0
    target /= target.sum(1, keepdims=True)
    target[3] = 0
    target[3, ner.tags.index("U-CITY")] = 1
    weights = numpy.ones((len(target), 1))
    weights[3] = ANNOTATED_WEIGHT
    numpy.testing.assert_allclose(d, weights * (probs - target), atol=1e-5)


@pytest.mark.parametrize("transitions", [False, True])
def test_rehearse_pulls_toward_the_copy_resume_training_took(transitions: bool) -> None:
    """N5 (rehearse): nlp.rehearse on raw docs moves torch_ner back toward the copy that
    nlp.resume_training() took (grown by add_label with the model); without
    resume_training it is a clear error, not a silent no-op."""
    nlp, _ = old_types_trained(transitions)
    raw = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t, _ in TRAIN[:32]]
    with pytest.raises(ValueError, match="torch_ner: nothing to rehearse against"):
        nlp.rehearse(raw)
    optimizer = nlp.resume_training(sgd=Adam(0.01))
    ner = nlp.get_pipe("torch_ner")
    ner.add_label(NEW_LABEL)
    teacher = ner._rehearsal_model
    assert teacher is not ner.model and teacher.get_dim("nO") == 17
    docs = [nlp.make_doc(t) for t, _ in DEV]

    trans = transition_scores(len(ner.labels), learned_transitions(teacher))
    taught = numpy.concatenate(viterbi([to_numpy(s) for s in teacher.predict(docs)], *trans))

    def agreement() -> float:  # the fraction of tokens whose decoded tag is the teacher's
        return float((numpy.concatenate(ner.predict(docs)) == taught).mean())

    assert agreement() == 1.0
    train(nlp, optimizer, ONLY_NEW[:32], epochs=1)  # plain updates: the old types drift
    drifted = agreement()
    for _ in range(4):
        losses = nlp.rehearse(raw, sgd=optimizer)
    assert losses["torch_ner"] > 0 and drifted < 0.9 < agreement(), (drifted, agreement())


@pytest.mark.parametrize("transitions", [False, True])
@pytest.mark.parametrize("max_decay", [None, 0.999])
def test_rehearse_right_after_add_label_on_a_used_optimizer(transitions: bool, max_decay) -> None:
    """N5 (rehearse), N2: `nlp.rehearse` as the first step after `add_label`, with the
    optimizer that trained the old shapes (spaCy hands the component a gradient collector,
    not the optimizer), steps the grown model's weights and keeps their shapes."""
    fix_random_seed(0)
    model = {"tok2vec": TOK2VEC, "hidden_width": 32, "transitions": transitions}
    nlp = make_nlp(transitions, model={**model, "max_decay": max_decay})
    nlp.initialize(lambda: examples(nlp, TRAIN))
    optimizer = Adam(0.01)
    train(nlp, optimizer, TRAIN[:32], epochs=1)
    nlp.resume_training(sgd=optimizer)
    ner = nlp.get_pipe("torch_ner")
    ner.add_label(NEW_LABEL)
    before = [p.copy() for p in all_params(ner.model)]
    raw = [Example(nlp.make_doc(t), nlp.make_doc(t)) for t, _ in TRAIN[:32]]
    losses = nlp.rehearse(raw, sgd=optimizer)
    after = all_params(ner.model)
    assert losses["torch_ner"] > 0
    assert [p.shape for p in after] == [p.shape for p in before]
    assert any(not numpy.array_equal(a, b) for a, b in zip(after, before))


def all_params(model) -> List[numpy.ndarray]:
    return [
        to_numpy(node.get_param(name))
        for node in model.walk()
        for name in node.param_names
        if node.has_param(name)
    ]


def test_default_model_has_no_ema_and_max_decay_asks_for_it() -> None:
    """N1, A1: the default TorchNER.v1 keeps no torchlayers EMA (spaCy evaluates with its
    optimizer's averages); max_decay = 0.999, as configs that set it, wraps both children."""
    for transitions in (False, True):
        plain = make_nlp(transitions).get_pipe("torch_ner").model
        assert not any(is_averaged(node) for node in plain.walk())
        kept = make_nlp(transitions, model={"tok2vec": TOK2VEC, "transitions": transitions,
                                            "max_decay": 0.999})  # fmt: skip
        nodes = [n for n in kept.get_pipe("torch_ner").model.walk() if is_averaged(n)]
        assert len(nodes) == 1 + transitions and nodes[0].attrs["max_decay"] == 0.999


def test_saved_after_training_with_the_setting_loads_to_the_same_entities(tmp_path: Path) -> None:
    """N5, N4, W6: a pipeline trained with annotated_types saves and loads (spacy.load, entry
    points) to identical entities; the setting comes back from the config; the teacher is
    not saved."""
    nlp = make_nlp(annotated_types=[NEW_LABEL])
    nlp.get_pipe("torch_ner").add_label(NEW_LABEL)
    nlp.initialize(lambda: examples(nlp, TRAIN[:40]))
    train(nlp, Adam(0.01), ONLY_NEW[:32], epochs=1)
    nlp.to_disk(tmp_path / "model")
    loaded = spacy.load(tmp_path / "model")
    texts = [t for t, _ in NEW_DEV[:10]]
    assert [d.to_json()["ents"] for d in loaded.pipe(texts)] == [
        d.to_json()["ents"] for d in nlp.pipe(texts)
    ]
    ner = loaded.get_pipe("torch_ner")
    assert ner.annotated_types == (NEW_LABEL,) and ner._teacher is None


SOURCED = """
[paths]
train = "{dir}/train.spacy"
dev = "{dir}/dev.spacy"

[nlp]
lang = "en"
pipeline = ["torch_ner"]

[components]

[components.torch_ner]
source = "{dir}/old"

[corpora]

[corpora.train]
@readers = "spacy.Corpus.v1"
path = ${paths.train}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${paths.dev}

[training]
max_steps = 8
eval_frequency = 4

[initialize]

[initialize.after_init]
@callbacks = "torchlayers.annotated_types.v1"
component = "torch_ner"
types = ["{new}"]
"""


def test_spacy_train_adds_a_type_with_annotated_types(tmp_path: Path) -> None:
    """N5, N4: `spacy train` on a sourced trained torch_ner, with the after_init callback
    `torchlayers.annotated_types.v1`, adds the type, sets the setting, trains on examples
    that label only it, and saves a pipeline that loads."""
    from spacy.cli.init_config import fill_config
    from spacy.cli.train import train as spacy_train

    nlp, _ = old_types_trained(False)
    nlp.to_disk(tmp_path / "old")
    for name, data in (("train", ONLY_NEW[:48]), ("dev", NEW_DEV[:10])):
        docs = [eg.reference for eg in examples(nlp, data)]
        DocBin(docs=docs).to_disk(tmp_path / f"{name}.spacy")
    (tmp_path / "base.cfg").write_text(
        SOURCED.replace("{dir}", str(tmp_path)).replace("{new}", NEW_LABEL)
    )
    fill_config(tmp_path / "config.cfg", tmp_path / "base.cfg", silent=True)
    spacy_train(tmp_path / "config.cfg", tmp_path / "out")
    trained = spacy.load(tmp_path / "out" / "model-last")
    ner = trained.get_pipe("torch_ner")
    assert ner.labels == (*sorted(LABELS), NEW_LABEL)
    assert ner.annotated_types is None  # the setting came from the callback, not the config
    callback = spacy.registry.callbacks.get("torchlayers.annotated_types.v1")
    callback(component="torch_ner", types=["GADGET"])(trained)
    assert ner.labels[-1] == "GADGET" and ner.annotated_types == ("GADGET",)
    assert trained("Mary flew to Paris .").ents is not None


@pytest.mark.parametrize("transitions", [False, True])
def test_annotated_types_with_averaged_nodes(transitions: bool) -> None:
    """N5, A2, A5: with max_decay set (averaged nodes), the setting trains after add_label;
    the teacher is a copy that leaves the model's averages alone, and use_averages still
    swaps them in (the new type's units resized)."""
    fix_random_seed(0)
    nlp = make_nlp(transitions, model={"tok2vec": TOK2VEC, "hidden_width": 32,
                                       "transitions": transitions, "max_decay": 0.999})  # fmt: skip
    nlp.initialize(lambda: examples(nlp, TRAIN[:48]))
    train(nlp, Adam(0.01), TRAIN[:48], epochs=1)
    ner = nlp.get_pipe("torch_ner")
    ner.add_label(NEW_LABEL)
    ner.annotated_types = [NEW_LABEL]
    train(nlp, Adam(0.01), ONLY_NEW[:32], epochs=1)
    assert ner._teacher is not None and ner._teacher is not ner.model
    live = probe_scores(nlp)
    with use_averages(ner.model):
        ema = probe_scores(nlp)
    assert all(a.shape == b.shape == (len(a), 17) for a, b in zip(live, ema))
    assert not all(numpy.allclose(a, b) for a, b in zip(live, ema))
