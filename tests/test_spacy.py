"""spaCy pipelines on torchlayers (C1, C2): torchlayers.TorchTextCat.v1 in textcat components."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy
import pytest
import torch
from thinc.api import Adam, Config, Model, fix_random_seed

from torchlayers.averaged import use_averages

spacy = pytest.importorskip("spacy")
from spacy.training import Example  # noqa: E402
from spacy.training.initialize import init_nlp  # noqa: E402
from spacy.training.loop import train as train_nlp  # noqa: E402
from spacy.util import registry  # noqa: E402  Thinc's registry, plus architectures

import torchlayers.spacy.architectures  # noqa: E402, F401  registers torchlayers.TorchTextCat.v1

RTOL, ATOL = 1e-5, 1e-6
TEXTS = [
    ("sunny and warm today", "WEATHER"),
    ("heavy rain all week", "WEATHER"),
    ("cold wind and snow", "WEATHER"),
    ("the team won the match", "SPORTS"),
    ("a late goal in the final", "SPORTS"),
    ("the striker missed a penalty", "SPORTS"),
    ("bake the bread for an hour", "COOKING"),
    ("stir the soup and add salt", "COOKING"),
    ("the pasta sauce tasted great", "COOKING"),
]
LABELS = ["WEATHER", "SPORTS", "COOKING"]
NEW_TEXTS = [("we missed the flight", "TRAVEL"), ("the train to paris was late", "TRAVEL")]
PROBES = ["rain at the match", "warm soup", "the final was sunny"]
TOK2VEC = {
    "@architectures": "spacy.Tok2Vec.v2",
    "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 16, "attrs": ["NORM"],
              "rows": [300], "include_static_vectors": False},
    "encode": {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 16, "window_size": 1,
               "maxout_pieces": 2, "depth": 1},
}  # fmt: skip


def textcat_config(exclusive: bool = True, **model: Any) -> Dict[str, Any]:
    return {
        "model": {
            "@architectures": "torchlayers.TorchTextCat.v1",
            "tok2vec": TOK2VEC,
            "exclusive_classes": exclusive,
            "hidden_width": 16,
            **model,
        }
    }


def make_nlp(component: str = "textcat", exclusive: bool = True, **model: Any):
    nlp = spacy.blank("en")
    nlp.add_pipe(component, config=textcat_config(exclusive, **model))
    return nlp


def examples(nlp, pairs, labels: List[str]) -> List[Example]:
    return [
        Example.from_dict(nlp.make_doc(text), {"cats": {lab: float(lab == gold) for lab in labels}})
        for text, gold in pairs
    ]


def trained_nlp(component: str = "textcat", exclusive: bool = True, steps: int = 5, **model: Any):
    fix_random_seed(0)
    nlp = make_nlp(component, exclusive, **model)
    train = examples(nlp, TEXTS, LABELS)
    optimizer = nlp.initialize(lambda: train)
    optimizer = Adam(0.01, use_averages=True)
    for _ in range(steps):
        nlp.update(train, sgd=optimizer, drop=0.1)
    return nlp, optimizer


def scores(nlp, texts=PROBES) -> List[Dict[str, float]]:
    return [doc.cats for doc in nlp.pipe(texts)]


def node_named(model: Model, prefix: str) -> Model:
    return next(node for node in model.walk() if node.name.startswith(prefix))


LOAD = """
import json, sys
import torchlayers.spacy.architectures  # or the spacy_architectures entry point, once installed
import spacy
nlp = spacy.load(sys.argv[1])
print(json.dumps([doc.cats for doc in nlp.pipe(json.loads(sys.argv[2]))]))
"""


def test_round_trip_in_a_fresh_process(tmp_path: Path) -> None:
    """C2, W6, A4: nlp.to_disk, then spacy.load in a new Python: identical scores."""
    nlp, _ = trained_nlp()
    nlp.get_pipe("textcat").add_label("TRAVEL")  # the resized sizes must round-trip too
    nlp.to_disk(tmp_path / "pipeline")
    texts = PROBES + [text for text, _ in TEXTS]
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "pipeline"), json.dumps(texts)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout) == scores(nlp, texts)


def test_update_drop_reaches_the_torch_dropout() -> None:
    """C2, D2, D6: nlp.update(drop=...) sets with_dropout's rate and the torch Dropout's p in
    the forward pass; prediction runs the Dropout in eval mode; its own p is put back."""
    nlp, optimizer = trained_nlp(steps=1)
    model = nlp.get_pipe("textcat").model
    hidden = node_named(model, "with_torch(torch_mlp)")
    dropout = next(m for m in hidden.shims[0].module.modules() if isinstance(m, torch.nn.Dropout))
    seen: List[tuple] = []
    dropout.register_forward_hook(lambda m, i, o: seen.append((m.training, m.p)))
    train = examples(nlp, TEXTS, LABELS)
    nlp.update(train, sgd=optimizer, drop=0.35)
    assert seen == [(True, 0.35)]
    assert node_named(model, "with_dropout(").attrs["dropout_rate"] == 0.35
    assert dropout.p == 0.0  # the architecture's initial rate, restored after the pass
    nlp("sunny")
    assert seen[-1] == (False, 0.0)


def test_use_params_averages_changes_and_restores_predictions() -> None:
    """C2, W5: nlp.use_params(optimizer.averages) changes the scores; the live ones come back."""
    nlp, optimizer = trained_nlp()
    live = scores(nlp)
    with nlp.use_params(optimizer.averages):
        averaged = scores(nlp)
    assert averaged != live
    assert scores(nlp) == live
    with use_averages(nlp.get_pipe("textcat").model):  # torchlayers' own EMA, likewise
        ema = scores(nlp)
    assert ema != live and scores(nlp) == live


@pytest.mark.parametrize("component, exclusive", [("textcat", True), ("textcat_multilabel", False)])
def test_add_label_after_training_keeps_old_scores(component: str, exclusive: bool) -> None:
    """C2, R1, R3, R7: add_label on a trained component (the root's resize_output) keeps the
    old labels' scores, sets nO all the way up, and the new label learns."""
    nlp, optimizer = trained_nlp(component, exclusive)
    textcat = nlp.get_pipe(component)
    before = scores(nlp)
    assert textcat.add_label("TRAVEL") == 1
    after = scores(nlp)
    for b, a in zip(before, after):
        numpy.testing.assert_allclose([a[k] for k in LABELS], [b[k] for k in LABELS], RTOL, ATOL)
        assert a["TRAVEL"] == pytest.approx(0.0 if exclusive else 0.5, abs=1e-6)
    assert textcat.model.get_dim("nO") == textcat.model.layers[0].get_dim("nO") == 4
    more = examples(nlp, TEXTS + NEW_TEXTS * 2, LABELS + ["TRAVEL"])
    for _ in range(40):  # a new exclusive class starts at logit -16: it has some way to go
        nlp.update(more, sgd=optimizer)
    travel = [doc.cats["TRAVEL"] for doc in nlp.pipe(text for text, _ in NEW_TEXTS)]
    assert min(travel) > 0.5, travel


@registry.architectures("test_spacy.TorchMLP.v1")
def user_mlp(nI: int, width: int) -> torch.nn.Module:
    """A torch module from a function of the user's, named in the config."""
    module = torch.nn.Sequential(torch.nn.Linear(nI, width), torch.nn.ReLU(), torch.nn.Dropout())
    module.built_by_user = True  # type: ignore[assignment]
    return module


def test_config_with_a_user_registered_torch_module_builds_and_trains() -> None:
    """C1, C2: `with_torch`'s module comes from the user's registered function in the config."""
    module = {"@architectures": "test_spacy.TorchMLP.v1", "nI": 16, "width": 12}
    hidden = {"@layers": "torchlayers.with_torch.v1", "module": module, "torch_dropout": True}
    nlp, optimizer = trained_nlp(steps=0, hidden=hidden)
    node = node_named(nlp.get_pipe("textcat").model, "with_torch(Sequential)")
    assert node.shims[0].module.built_by_user and node.get_dim("nO") == 12
    before = node.get_param("0.weight").copy()
    train = examples(nlp, TEXTS, LABELS)
    first = nlp.update(train, sgd=optimizer)["textcat"]
    for _ in range(8):
        last = nlp.update(train, sgd=optimizer)["textcat"]
    assert not numpy.array_equal(node.get_param("0.weight"), before)
    assert last < first


THINC_CONFIG = """
[model]
@layers = "torchlayers.averaged.v1"
max_decay = 0.9

[model.layer]
@layers = "torchlayers.with_dropout.v1"
rate = 0.25

[model.layer.layer]
@layers = "torchlayers.resizable.v1"

[model.layer.layer.layer]
@layers = "torchlayers.with_torch.v1"

[model.layer.layer.layer.module]
@architectures = "test_spacy.TorchMLP.v1"
nI = 3
width = 5
"""


def test_thinc_config_resolves_every_combinator() -> None:
    """C1: a config names torchlayers.<name>.v1 for all four, nested, around a user module."""
    model = registry.resolve(Config().from_str(THINC_CONFIG))["model"]
    names = [node.name for node in model.walk()]
    assert names[:4] == [
        "averaged(with_dropout(resizable(with_torch(Sequential))))",
        "with_dropout(resizable(with_torch(Sequential)))",
        "resizable(with_torch(Sequential))",
        "with_torch(Sequential)",
    ]
    assert model.layers[0].attrs["dropout_rate"] == 0.25 and model.attrs["max_decay"] == 0.9
    assert model.predict(numpy.ones((2, 3), dtype="float32")).shape == (2, 5)


def test_spacy_train_honours_training_dropout(tmp_path: Path) -> None:
    """C2, D2: spaCy's training loop (what `spacy train` runs) with [training] dropout = 0.3
    trains the pipeline, sets the rate on the with_dropout and with_torch nodes, and saves."""
    nlp = make_nlp()
    config = nlp.config.copy()
    db = spacy.tokens.DocBin(docs=[eg.reference for eg in examples(nlp, TEXTS, LABELS)])
    db.to_disk(tmp_path / "train.spacy")
    config["paths"]["train"] = config["paths"]["dev"] = str(tmp_path / "train.spacy")
    config["training"].update({"dropout": 0.3, "max_steps": 6, "eval_frequency": 3})
    config["training"]["batcher"]["size"] = 9
    config["training"]["logger"] = {"@loggers": "spacy.ConsoleLogger.v1", "progress_bar": False}
    trained = init_nlp(Config(config))
    (tmp_path / "out").mkdir()
    trained, path = train_nlp(trained, tmp_path / "out", stdout=Sink(), stderr=Sink())
    model = trained.get_pipe("textcat").model
    assert node_named(model, "with_dropout(").attrs["dropout_rate"] == 0.3
    assert node_named(model, "with_torch(torch_mlp)").attrs["dropout_rate"] == 0.3
    assert model.attrs["average_steps"] == 7  # the loop's steps 0..max_steps, one update each
    assert scores(spacy.load(path)) == scores(trained)


class Sink:
    def write(self, text: str) -> Optional[int]:
        return len(text)

    def flush(self) -> None:
        pass


TAGGED = [
    ("I like green eggs", ["PRP", "VBP", "JJ", "NNS"]),
    ("she eats red apples", ["PRP", "VBZ", "JJ", "NNS"]),
    ("we see big dogs", ["PRP", "VBP", "JJ", "NNS"]),
    ("they want cold soup", ["PRP", "VBP", "JJ", "NN"]),
    ("he has a cat", ["PRP", "VBZ", "DT", "NN"]),
]
NEW_TAGGED = [("oh I see", ["UH", "PRP", "VBP"]), ("oh she eats soup", ["UH", "PRP", "VBZ", "NN"])]
TAG_PROBE = "oh we like the red soup"


def tagger_nlp():
    nlp = spacy.blank("en")
    model = {"@architectures": "torchlayers.TorchTagger.v1", "tok2vec": TOK2VEC, "hidden_width": 16}
    nlp.add_pipe("tagger", config={"model": model})
    return nlp


def tag_examples(nlp, pairs) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"tags": tags}) for text, tags in pairs]


def trained_tagger(steps: int = 10):
    fix_random_seed(0)
    nlp = tagger_nlp()
    train = tag_examples(nlp, TAGGED)
    nlp.initialize(lambda: train)
    optimizer = Adam(0.01, use_averages=True)
    for _ in range(steps):
        nlp.update(train, sgd=optimizer, drop=0.1)
    return nlp, optimizer


def tag_probs(nlp, text: str = TAG_PROBE) -> numpy.ndarray:
    """Per-token tag probabilities (tokens x tags) of the tagger on `text`."""
    return nlp.get_pipe("tagger").model.predict([nlp.make_doc(text)])[0]


def test_tagger_trains_per_token_with_drop() -> None:
    """C1, C2, D2: torchlayers.TorchTagger.v1 from a config gives spaCy's tagger one row of tag
    probabilities per token, sized from the labels at initialize; drop reaches with_dropout and
    the torch Dropout; the loss falls."""
    nlp, optimizer = trained_tagger(steps=0)
    tagger = nlp.get_pipe("tagger")
    assert tagger.labels == ("DT", "JJ", "NN", "NNS", "PRP", "VBP", "VBZ")
    probs = tag_probs(nlp)
    assert probs.shape == (6, 7) and tagger.model.get_dim("nO") == 7
    numpy.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=RTOL)
    train = tag_examples(nlp, TAGGED)
    first = nlp.update(train, sgd=optimizer, drop=0.1)["tagger"]
    rates = {n.name: n.attrs.get("dropout_rate") for n in tagger.model.walk()}
    assert rates["with_dropout(with_torch(torch_mlp))"] == rates["with_torch(torch_mlp)"] == 0.1
    for _ in range(9):
        last = nlp.update(train, sgd=optimizer, drop=0.1)["tagger"]
    assert last < first
    assert [token.tag_ for token in nlp("she has red eggs")][0] == "PRP"


def test_tagger_add_label_then_set_output_keeps_old_tags() -> None:
    """C2, R1, R3, R7: on a trained tagger, spaCy 3.8's add_label only appends the label;
    set_output (the root's attrs["resize_output"]) then grows the output: the old tags'
    probabilities stay, the new tag starts at ~e^-16 and learns from a sentence using it."""
    nlp, optimizer = trained_tagger()
    tagger = nlp.get_pipe("tagger")
    assert tagger.is_resizable
    before = tag_probs(nlp)
    assert tagger.add_label("UH") == 1
    assert tagger.model.get_dim("nO") == 7  # add_label alone does not resize a tagger
    tagger.set_output(len(tagger.labels))
    assert tagger.model.get_dim("nO") == tagger.model.layers[0].get_dim("nO") == 8
    after = tag_probs(nlp)
    numpy.testing.assert_allclose(after[:, :7], before, RTOL, ATOL)
    assert after[:, 7].max() < 1e-6
    more = tag_examples(nlp, TAGGED + NEW_TAGGED)
    for _ in range(30):
        nlp.update(more, sgd=optimizer, drop=0.1)
    assert tag_probs(nlp)[0, 7] > 0.5
    assert nlp("oh I see")[0].tag_ == "UH"


def test_tagger_bytes_round_trip_after_set_output() -> None:
    """C2, R8, W6: nlp.to_bytes after add_label + set_output, from_bytes into a pipeline rebuilt
    from the config (as spacy.load does; also one given the same labels + set_output first):
    the labels and the per-token probabilities are identical."""
    nlp, optimizer = trained_tagger(steps=3)
    tagger = nlp.get_pipe("tagger")
    tagger.add_label("UH")
    tagger.set_output(len(tagger.labels))
    nlp.update(tag_examples(nlp, TAGGED + NEW_TAGGED), sgd=optimizer, drop=0.1)
    data = nlp.to_bytes()
    for resize_first in (False, True):
        fresh = spacy.util.get_lang_class("en").from_config(nlp.config)
        if resize_first:  # before initialize, a resize only sets the width to build with
            for label in tagger.labels:
                fresh.get_pipe("tagger").add_label(label)
            fresh.get_pipe("tagger").set_output(len(tagger.labels))
        fresh.from_bytes(data)
        assert fresh.get_pipe("tagger").labels == tagger.labels
        assert numpy.array_equal(tag_probs(fresh), tag_probs(nlp))
        assert [t.tag_ for t in fresh(TAG_PROBE)] == [t.tag_ for t in nlp(TAG_PROBE)]
