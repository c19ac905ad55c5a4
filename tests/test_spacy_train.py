"""`python -m torchlayers train` on 2 gloo ranks (M2, M3): spaCy's loop, sharded, rank 0 saves.

The comparison with one process is exact by design: the training corpus is streamed in order
(`max_epochs = -1`, no shuffle), rank r reads examples r, r+2, r+4, ... in batches of 2
sequences, and the one process reads every example in batches of 4. So step k of the one
process trains on examples 4k..4k+3, the union of the two ranks' k-th batches; spaCy's tagger
and textcat losses are sums over the batch, so the summed gradients are the same (up to
float32 rounding from the order of the sum).
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy
import pytest
import torch.distributed as dist

spacy = pytest.importorskip("spacy")
from spacy.cli._util import import_code  # noqa: E402
from spacy.cli.init_config import fill_config  # noqa: E402
from spacy.tokens import Doc, DocBin  # noqa: E402

from tests.processes import run_ranks  # noqa: E402
from torchlayers.spacy.loop import replace_dir  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="needs gloo")

WORDS = {"the": "DET", "a": "DET", "dog": "NOUN", "cat": "NOUN", "sun": "NOUN", "rain": "NOUN",
         "runs": "VERB", "sleeps": "VERB", "shines": "VERB", "falls": "VERB", "big": "ADJ",
         "warm": "ADJ", "cold": "ADJ"}  # fmt: skip
SENTENCES = [
    "the dog runs", "a cat sleeps", "the sun shines", "cold rain falls", "the big dog sleeps",
    "a warm sun shines", "the cat runs", "rain falls", "a big cat runs", "the warm dog sleeps",
    "the cold sun shines", "a dog runs", "big rain falls", "the cat sleeps", "a sun shines",
    "the cold cat runs",
]  # fmt: skip
LABELS = {"sun": "WEATHER", "rain": "WEATHER"}  # any other sentence is ANIMAL
CONFIG = """
[paths]
train = null
dev = null

[nlp]
lang = "en"
pipeline = ["tok2vec", "tagger", "textcat"]
batch_size = 64

[components]

[components.tok2vec]
factory = "tok2vec"

[components.tok2vec.model]
@architectures = "spacy.Tok2Vec.v2"

[components.tok2vec.model.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 16
attrs = ["NORM", "SHAPE"]
rows = [200, 50]
include_static_vectors = false

[components.tok2vec.model.encode]
@architectures = "spacy.MaxoutWindowEncoder.v2"
width = 16
depth = 1
window_size = 1
maxout_pieces = 2

[components.tagger]
factory = "tagger"

[components.tagger.model]
@architectures = "spacy.Tagger.v2"
nO = null

[components.tagger.model.tok2vec]
@architectures = "spacy.Tok2VecListener.v1"
width = 16
upstream = "tok2vec"

[components.textcat]
factory = "textcat"

[components.textcat.model]
@architectures = "torchlayers.TorchTextCat.v1"
exclusive_classes = true
hidden_width = 16

[components.textcat.model.tok2vec]
@architectures = "spacy.Tok2Vec.v2"

[components.textcat.model.tok2vec.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 8
attrs = ["NORM"]
rows = [100]
include_static_vectors = false

[components.textcat.model.tok2vec.encode]
@architectures = "spacy.MaxoutWindowEncoder.v2"
width = 8
depth = 1
window_size = 1
maxout_pieces = 2

[corpora]

[corpora.train]
@readers = "torchlayers.ShardedCorpus.v1"
path = ${paths.train}

[corpora.dev]
@readers = "spacy.Corpus.v1"
path = ${paths.dev}

[training]
seed = 0
dropout = 0.0
max_epochs = -1
max_steps = 4
eval_frequency = 2
patience = 0
accumulate_gradient = 1
frozen_components = []
annotating_components = []
train_corpus = "corpora.train"
dev_corpus = "corpora.dev"

[training.batcher]
@batchers = "spacy.batch_by_sequence.v1"
size = 2
get_length = null

[training.optimizer]
@optimizers = "Adam.v1"
learn_rate = 0.01

[training.score_weights]
tag_acc = 0.5
cats_score = 0.5

[initialize]
"""
EXIT_RANK_1 = """
import os
from spacy.util import registry

@registry.callbacks("tests.exit_rank_1_at_step_3.v1")
def exit_rank_1_at_step_3():
    def before_update(nlp, info):
        if os.environ.get("RANK") == "1" and info["step"] == 3:
            os._exit(3)
    return before_update
"""
TRAIN = ["-m", "torchlayers", "train"]
PARAMS = """
import sys, numpy, spacy
for model_dir, out in zip(sys.argv[1::2], sys.argv[2::2]):
    nlp = spacy.load(model_dir)
    arrays = {f"{name}/{i}/{node.name}.{p}": node.get_param(p)
              for name, proc in nlp.pipeline for i, node in enumerate(proc.model.walk())
              for p in node.param_names if node.has_param(p)}
    numpy.savez(out, **arrays)
    print(nlp("the dog runs")[0].tag_, "torchlayers.distributed" in sys.modules)
"""


def write_corpus(path: Path) -> None:
    nlp = spacy.blank("en")
    bin = DocBin()
    for text in SENTENCES:
        words = text.split()
        doc = Doc(nlp.vocab, words=words, tags=[WORDS[w] for w in words])
        label = next((LABELS[w] for w in words if w in LABELS), "ANIMAL")
        doc.cats = {"WEATHER": float(label == "WEATHER"), "ANIMAL": float(label == "ANIMAL")}
        bin.add(doc)
    bin.to_disk(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("spacy_train")
    write_corpus(root / "train.spacy")
    (root / "base.cfg").write_text(CONFIG)
    fill_config(root / "config.cfg", root / "base.cfg", silent=True)  # spacy init fill-config
    (root / "exit.py").write_text(EXIT_RANK_1)
    import_code(root / "exit.py")
    dying = CONFIG + '[training.before_update]\n@callbacks = "tests.exit_rank_1_at_step_3.v1"\n'
    (root / "dying_base.cfg").write_text(dying)
    fill_config(root / "dying.cfg", root / "dying_base.cfg", silent=True)
    return {"root": root, "config": root / "config.cfg", "data": root / "train.spacy",
            "dying": root / "dying.cfg", "code": root / "exit.py"}  # fmt: skip


def command(setup: Dict[str, Path], output: Path, *extra: str, config: str = "config") -> List[str]:
    data = str(setup["data"])
    return [*TRAIN, str(setup[config]), "--output", str(output), "--check-every", "1",
            "--timeout", "60", "--paths.train", data, "--paths.dev", data, *extra]  # fmt: skip


def saved_params(*model_dirs: Path) -> List[Dict[str, numpy.ndarray]]:
    """Load saved pipelines with plain spacy.load in one fresh process; return their params."""
    outs = [d.parent.with_suffix(".npz") for d in model_dirs]
    done = subprocess.run(
        [sys.executable, "-c", PARAMS, *(str(p) for pair in zip(model_dirs, outs) for p in pair)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [tag in WORDS.values() for tag, _ in lines] == [True] * len(model_dirs)
    assert [imported for _, imported in lines] == ["False"] * len(model_dirs)  # not needed
    return [dict(numpy.load(out)) for out in outs]


def test_two_ranks_train_like_one_process_on_the_union_of_shards(setup) -> None:
    """M2: tagger on a spaCy tok2vec (listener) and textcat on TorchTextCat.v1, 2 ranks each
    on its shard in batches of 2 = one process on all the data in batches of 4: same weights
    after 5 steps (the last evaluated and saved by rank 0 alone); only rank 0 writes; the
    ranks compare weights after every step (--check-every 1) and at the end; the saved
    pipeline loads with plain spacy.load."""
    root = setup["root"]
    ranks = run_ranks([command(setup, root / "two")] * 2, timeout=80)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert "Saved pipeline" in ranks[0].stdout
    assert ranks[1].stdout == ""  # rank 1 prints nothing and writes nothing
    one = subprocess.run(
        [sys.executable, *command(setup, root / "one", "--training.batcher.size", "4")],
        capture_output=True, text=True, timeout=80,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    two_params, one_params = saved_params(root / "two" / "model-last", root / "one" / "model-last")
    assert two_params.keys() == one_params.keys()
    for name, want in one_params.items():
        numpy.testing.assert_allclose(two_params[name], want, rtol=0, atol=1e-6, err_msg=name)
    assert sorted(p.name for p in (root / "two").iterdir()) == ["model-best", "model-last"]


def test_mismatched_config_is_refused_at_start(setup) -> None:
    """M3: a rank started with other overrides is refused on every rank; nothing is saved."""
    output = setup["root"] / "mismatch"
    argv = [command(setup, output), command(setup, output, "--training.max_steps", "6")]
    ranks = run_ranks(argv, timeout=60)
    for r in ranks:
        assert r.returncode == 1, r.stderr
        assert "the config of rank(s) [1] differs from rank 0's" in r.stderr
    assert not (output / "model-last").exists()


def test_dead_rank_stops_the_command_with_a_clear_error(setup) -> None:
    """M3: rank 1 exits before step 3; rank 0 stops with an error naming the failed call (the
    test kills both at 50 s, before the group's 60 s timeout: only a prompt error passes),
    saves nothing after it, and model-last from the step-2 evaluation is whole, with no
    temp directory beside it."""
    output = setup["root"] / "dying"
    argv = command(setup, output, "--code", str(setup["code"]), config="dying")
    ranks = run_ranks([argv, argv], timeout=50)
    assert ranks[1].returncode == 3
    assert ranks[0].returncode == 1, ranks[0].stderr
    assert "torchlayers train: rank 0: data-parallel: rank 0 of 2 could not" in ranks[0].stderr
    assert sorted(p.name for p in output.iterdir()) == ["model-best", "model-last"]
    assert spacy.load(output / "model-last").pipe_names == ["tok2vec", "tagger", "textcat"]


def test_replace_dir_never_leaves_a_half_written_directory(tmp_path: Path) -> None:
    """M3: a save that fails midway leaves the earlier directory whole and no temp behind;
    one that succeeds replaces it."""
    target = tmp_path / "model-last"
    replace_dir(target, lambda tmp: (tmp / "meta.json").write_text("old"))

    def fail_midway(tmp: Path) -> None:
        (tmp / "meta.json").write_text("new")
        raise KeyboardInterrupt  # e.g. Ctrl-C while writing the weights

    with pytest.raises(KeyboardInterrupt):
        replace_dir(target, fail_midway)
    assert [p.name for p in tmp_path.iterdir()] == ["model-last"]
    assert json.dumps((target / "meta.json").read_text()) == '"old"'
    replace_dir(target, lambda tmp: (tmp / "meta.json").write_text("new"))
    assert (target / "meta.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model-last"]
