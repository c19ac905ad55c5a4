"""spaCy's own components on torch encoders, end to end (E3, E4, C2).

Two pipelines from tests/configs/: `encoders_own.cfg` (ner, parser, tagger, textcat, each over
its own spacy.Tok2Vec.v2 with a torch BiLSTM or Transformer encoder) and `encoders_shared.cfg`
(one tok2vec on a torch BiLSTM feeding tagger, parser and ner through listeners). Each trains a
few steps with nlp.update on a tiny corpus made here; the expensive parts (training, saving,
the fresh process, `spacy train`) run once per module.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy
import pytest
import torch
from thinc.api import SGD, Adam, Model, fix_random_seed

spacy = pytest.importorskip("spacy")
from spacy.tokens import Doc, DocBin  # noqa: E402
from spacy.training import Example  # noqa: E402

import torchlayers.spacy.encoders  # noqa: E402, F401  registers the encoders (or the entry points)

CONFIGS = Path(__file__).parent / "configs"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # children: tiny models, 2 shared cores
TIMEOUT = 120  # seconds for a child process: a hung one fails the test
PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]
CITIES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Oslo"]
PRODUCTS = ["Zorblax", "Quibbit", "Flumox", "Grendak"]
EVAL = [
    "Erin lives in Oslo",
    "we met Frank in Rome",
    "Bob visited Madrid today",
    "Carol lives in Paris",
]


def sentence(template: int, person: str, other: str) -> Dict[str, Any]:
    """Words, tags, a dependency tree, entities and a category for one templated sentence."""
    if template == 0:
        words, tags = [person, "lives", "in", other], ["PROPN", "VERB", "ADP", "PROPN"]
        heads, deps = [1, 1, 1, 2], ["nsubj", "ROOT", "prep", "pobj"]
        ents, cat = [(0, "PERSON"), (3, "CITY")], "HOME"
    elif template == 1:
        words, tags = [person, "visited", other, "today"], ["PROPN", "VERB", "PROPN", "NOUN"]
        heads, deps = [1, 1, 1, 1], ["nsubj", "ROOT", "dobj", "npadvmod"]
        ents, cat = [(0, "PERSON"), (2, "CITY")], "TRIP"
    elif template == 2:
        words, tags = ["we", "met", person, "in", other], ["PRON", "VERB", "PROPN", "ADP", "PROPN"]
        heads, deps = [1, 1, 1, 1, 3], ["nsubj", "ROOT", "dobj", "prep", "pobj"]
        ents, cat = [(2, "PERSON"), (4, "CITY")], "TRIP"
    else:  # the new entity type, for add_label
        words, tags = [person, "bought", "a", other], ["PROPN", "VERB", "DET", "PROPN"]
        heads, deps = [1, 1, 3, 1], ["nsubj", "ROOT", "det", "dobj"]
        ents, cat = [(0, "PERSON"), (3, "PRODUCT")], "HOME"
    biluo = ["O"] * len(words)
    for i, label in ents:
        biluo[i] = f"U-{label}"
    cats = {"HOME": float(cat == "HOME"), "TRIP": float(cat == "TRIP")}
    return {"words": words, "tags": tags, "heads": heads, "deps": deps, "entities": biluo,
            "cats": cats}  # fmt: skip


def corpus(nlp, templates=(0, 1, 2), n: int = 18) -> List[Example]:
    examples = []
    for i in range(n):
        template = templates[i % len(templates)]
        others = PRODUCTS if template == 3 else CITIES
        gold = sentence(template, PEOPLE[i % len(PEOPLE)], others[(i // 3) % len(others)])
        doc = Doc(nlp.vocab, words=gold["words"])
        examples.append(Example.from_dict(doc, gold))
    return examples


def load_nlp(name: str):
    config = spacy.util.load_config(CONFIGS / name)
    return spacy.util.load_model_from_config(config, auto_fill=True, validate=True)


def train(nlp, examples: List[Example], steps: int = 30):
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer, drop=0.1)
    return optimizer


def encoder_nodes(nlp) -> List[Model]:
    """The with_torch nodes inside the pipeline's encoders, one per tok2vec."""
    return [
        node
        for _, pipe in nlp.pipeline
        if hasattr(pipe, "model")
        for node in pipe.model.walk()
        if node.name.startswith("with_torch(")
    ]


def weights(node: Model) -> Dict[str, numpy.ndarray]:
    return {name: node.get_param(name).copy() for name in node.param_names}


def changed(before: Dict[str, numpy.ndarray], node: Model) -> bool:
    return any(not numpy.array_equal(before[name], node.get_param(name)) for name in before)


def outputs(nlp, texts: List[str] = EVAL) -> List[Dict[str, Any]]:
    """Everything the pipeline predicts, as JSON (floats exact: float32 fits in a float64)."""
    return json.loads(json.dumps([describe(doc) for doc in nlp.pipe(texts)]))


def describe(doc) -> Dict[str, Any]:
    return {
        "tags": [t.tag_ for t in doc],
        "heads": [t.head.i for t in doc],
        "deps": [t.dep_ for t in doc],
        "ents": [(e.start, e.end, e.label_) for e in doc.ents],
        "cats": doc.cats,
        "tensor": doc.tensor.tolist(),
    }


# Run in a fresh process: the same `describe`, its source copied in (no test imports there).
LOAD = f"""
import json, sys
from typing import Any, Dict
import spacy  # no torchlayers import: the spacy_architectures entry points find the encoders
texts = json.loads(sys.argv[1])
{inspect.getsource(describe)}
print(json.dumps({{p: [describe(d) for d in spacy.load(p).pipe(texts)] for p in sys.argv[2:]}}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Dict[str, Tuple[Any, Path]]:
    """Both pipelines, trained with nlp.update, saved: name -> (nlp, path)."""
    torch.set_num_threads(1)  # small batches: more threads only contend (2 cores, 5 users)
    root = tmp_path_factory.mktemp("encoders")
    made = {}
    for name in ("encoders_own.cfg", "encoders_shared.cfg"):
        nlp = load_nlp(name)
        train(nlp, corpus(nlp))
        nlp.to_disk(root / name)
        made[name] = (nlp, root / name)
    return made


def test_pipelines_learn(trained) -> None:
    """E3: every component on a torch encoder learns the training corpus (tags, heads, ents,
    cats) after a few nlp.update steps."""
    for nlp, _ in trained.values():
        scores = nlp.evaluate(corpus(nlp))
        assert scores["tag_acc"] > 0.9
        assert scores["dep_uas"] > 0.8
        assert scores["ents_f"] > 0.8
        if "textcat" in nlp.pipe_names:
            assert scores["cats_score"] > 0.8


def test_saved_pipelines_load_in_a_fresh_process(trained) -> None:
    """E3, C2, W6: spacy.load in a new Python (entry points, no torchlayers import) gives the
    same tags, heads, deps, entities, categories and doc.tensor, float for float."""
    paths = [str(path) for _, path in trained.values()]
    done = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(EVAL), *paths],
        capture_output=True, text=True, check=True, timeout=TIMEOUT, env=ONE_THREAD,
    )  # fmt: skip
    loaded = json.loads(done.stdout)
    for nlp, path in trained.values():
        assert loaded[str(path)] == outputs(nlp)


def test_each_listener_trains_the_shared_encoder(trained) -> None:
    """E3: with one tok2vec feeding tagger, parser and ner, the gradients of all three reach
    the torch encoder: after one nlp.update the encoder's gradient is the sum of the gradients
    one update with each listener alone leaves (spaCy runs tok2vec's backprop from its last
    listener: "alone" is the pipeline loaded without the other two), each of those is not
    zero, and tok2vec without listeners leaves none. (nlp.update calls tok2vec's finish_update
    before the listeners backprop: the gradient waits in the encoder for the next update.)"""
    _, path = trained["encoders_shared.cfg"]
    listeners = ["tagger", "parser", "ner"]

    def gradients(*enabled: str) -> Dict[str, numpy.ndarray]:
        nlp = spacy.load(path, exclude=[name for name in listeners if name not in enabled])
        (node,) = encoder_nodes(nlp)
        fix_random_seed(0)
        nlp.update(corpus(nlp), sgd=SGD(0.01), drop=0.0)
        return {name: node.get_grad(name).copy() for name in node.grad_names}

    assert not gradients()
    alone = [gradients(name) for name in listeners]
    for name, grads in zip(listeners, alone):
        assert grads and all(grad.any() for grad in grads.values()), name
    # Two listeners add up to float32 rounding. (With parser and ner together, ner's
    # gradient differs from its own by a few percent: spaCy's parser and ner updates
    # interact, our encoder does not take part in that: measured with tagger in place of ner.)
    for pair in [("tagger", "parser"), ("tagger", "ner")]:
        together = gradients(*pair)
        for name, grad in together.items():
            summed = sum(alone[listeners.index(part)][name] for part in pair)
            numpy.testing.assert_allclose(grad, summed, rtol=1e-4, atol=1e-6)
    assert all(grad.any() for grad in gradients(*listeners).values())


def test_ner_add_label_after_training(trained) -> None:
    """E3, C2: ner.add_label after training leaves every old entity unchanged; training on
    the new type then learns it while the torch encoder keeps training."""
    _, path = trained["encoders_own.cfg"]
    nlp = spacy.load(path)
    new = corpus(nlp, templates=(3,), n=8)
    texts = EVAL + [ex.reference.text for ex in new]
    before = [describe(doc)["ents"] for doc in nlp.pipe(texts)]
    ner = nlp.get_pipe("ner")
    ner.add_label("PRODUCT")
    assert [describe(doc)["ents"] for doc in nlp.pipe(texts)] == before
    (node,) = [n for n in ner.model.walk() if n.name.startswith("with_torch(")]
    start = weights(node)
    optimizer = nlp.resume_training()
    examples = corpus(nlp) + new
    fix_random_seed(0)
    with nlp.select_pipes(enable=["ner"]):
        for _ in range(15):
            nlp.update(examples, sgd=optimizer)
    assert changed(start, node)
    found = {(ent.text, ent.label_) for doc in nlp.pipe(texts) for ent in doc.ents} & {
        (ex.reference.text.split()[-1], "PRODUCT") for ex in new
    }
    assert len(found) >= 2


def write_corpus(path: Path, examples: List[Example]) -> None:
    DocBin(docs=[ex.reference for ex in examples]).to_disk(path)


CLI = """
import sys
from spacy.cli import app  # `python -m spacy`; one process for the three commands
config, filled, train, dev, out = sys.argv[1:]
paths = ["--paths.train", train, "--paths.dev", dev]
for command in (["init", "fill-config", config, filled], ["debug", "config", filled, *paths],
                ["train", filled, "--output", out, *paths]):
    print("$ spacy", *command, flush=True)
    app(command, standalone_mode=False)
"""


def test_cli_fill_config_debug_config_and_train(tmp_path: Path) -> None:
    """E3, C2: `spacy init fill-config`, `spacy debug config` and `spacy train` (spaCy's own
    command line, in a new process that finds the encoders through the entry points alone)
    accept the shared-tok2vec config; the trained pipeline loads."""
    nlp = spacy.blank("en")
    write_corpus(tmp_path / "train.spacy", corpus(nlp))
    write_corpus(tmp_path / "dev.spacy", corpus(nlp, n=6))
    args = [CONFIGS / "encoders_shared.cfg", tmp_path / "filled.cfg", tmp_path / "train.spacy",
            tmp_path / "dev.spacy", tmp_path / "out"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", CLI, *map(str, args)],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, env=ONE_THREAD,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Config is valid" in done.stdout
    trained_nlp = spacy.load(tmp_path / "out" / "model-last")
    assert trained_nlp.pipe_names == ["tok2vec", "tagger", "parser", "ner"]
    assert len(encoder_nodes(trained_nlp)) == 1


def test_own_config_fills_and_debugs_in_process(tmp_path: Path) -> None:
    """E3: the per-component config also passes fill-config and debug config's checks."""
    from spacy.cli.debug_config import debug_config
    from spacy.cli.init_config import fill_config

    fill_config(tmp_path / "filled.cfg", CONFIGS / "encoders_own.cfg", silent=True)
    overrides = {"paths.train": str(tmp_path / "x.spacy"), "paths.dev": str(tmp_path / "x.spacy")}
    debug_config(tmp_path / "filled.cfg", overrides=overrides)


def test_update_drop_reaches_the_encoder_dropout(trained) -> None:
    """E4, D2, D6: nlp.update(drop=...) sets the rate of the torch encoder's own nn.Dropout
    in its training forward pass; prediction runs it in eval mode."""
    _, path = trained["encoders_shared.cfg"]
    nlp = spacy.load(path)
    (node,) = encoder_nodes(nlp)
    dropout = node.shims[0].module.dropout
    seen: List[Tuple[float, bool]] = []
    dropout.register_forward_pre_hook(lambda mod, args: seen.append((mod.p, mod.training)))
    nlp.update(corpus(nlp), sgd=Adam(0.001), drop=0.37)
    assert seen and all(seen_p == 0.37 and training for seen_p, training in seen)
    seen.clear()
    nlp("Alice lives in Paris")
    assert all(not training for _, training in seen)
