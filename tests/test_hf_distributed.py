"""`python -m torchlayers train` on 2 gloo ranks with HFTransformer.v1 (T4, M1, M2).

A tiny random BERT (tests/helpers.py) is the tok2vec of spaCy's ner and of torch_ner. Each
rank reads its own shard (`torchlayers.ShardedCorpus.v1`); a logger registered from `--code`
writes every rank's live transformer weights when training ends, so the test compares the
ranks itself instead of trusting `--check-every`. The comparison with one process is exact by
the design of tests/test_spacy_train.py: a streamed corpus, 2 ranks in batches of 2 against
one process in batches of 4.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy  # noqa: E402
import pytest  # noqa: E402
import torch.distributed as dist  # noqa: E402
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402

spacy = pytest.importorskip("spacy")
transformers = pytest.importorskip("transformers")
from spacy.cli._util import import_code  # noqa: E402
from spacy.cli.init_config import fill_config  # noqa: E402
from spacy.tokens import DocBin  # noqa: E402

from tests.helpers import save_tiny_bert  # noqa: E402
from tests.processes import run_ranks  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="needs gloo")

TEXTS = [
    ("the dog walked to paris .", ["paris"]),
    ("a cat is in berlin", ["berlin"]),
    ("the biggest sun is in paris", ["paris"]),
    ("berlin is big", ["berlin"]),
    ("a dog runs to berlin , the cat sleeps", ["berlin"]),
    ("paris is the biggest", ["paris"]),
    ("the cat walked in paris", ["paris"]),
    ("a big dog is sleeping", []),
]
CONFIG = """
[paths]
train = null
dev = null
weights = null

[nlp]
lang = "en"
pipeline = ["ner", "torch_ner"]

[components]

[components.ner]
factory = "ner"

[components.ner.model]
@architectures = "spacy.TransitionBasedParser.v2"
state_type = "ner"
hidden_width = 16
maxout_pieces = 2

[components.ner.model.tok2vec]
@architectures = "torchlayers.HFTransformer.v1"
name = "{tiny}"
window = 16
stride = 8
dropout = 0.0
learn_rate_scale = 0.5

[components.torch_ner]
factory = "torch_ner"

[components.torch_ner.model]
@architectures = "torchlayers.TorchNER.v1"
hidden_width = 16

[components.torch_ner.model.tok2vec]
@architectures = "torchlayers.HFTransformer.v1"
name = "{tiny}"
window = 16
stride = 8
dropout = 0.0
learn_rate_scale = 0.5

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
max_steps = 3
eval_frequency = 2
patience = 0
train_corpus = "corpora.train"
dev_corpus = "corpora.dev"

[training.batcher]
@batchers = "spacy.batch_by_sequence.v1"
size = 2
get_length = null

[training.optimizer]
# SGD: Adam divides a step by the gradient's own size, so float32 rounding in a gradient
# that is zero in exact arithmetic (BERT's attention key biases) can become a visible step
@optimizers = "SGD.v1"
learn_rate = 0.1
use_averages = false

[training.logger]
@loggers = "tests.dump_transformer_weights.v1"
path = ${paths.weights}
"""
DUMP = """
import os
import numpy
from spacy.util import registry

@registry.loggers("tests.dump_transformer_weights.v1")
def dump_transformer_weights(path):
    def setup(nlp, stdout, stderr):
        def finalize():  # after the last step, on every rank
            weights = {}
            for pipe, proc in nlp.pipeline:
                hf = next(n for n in proc.model.walk() if n.name == "hf_transformer")
                node = hf.layers[0]
                weights.update({f"{pipe}/{p}": node.get_param(p) for p in node.param_names})
            numpy.savez(f"{path}.{os.environ.get('RANK', '0')}.npz", **weights)
        return lambda info: None, finalize
    return setup
"""


def params(nlp, pipe: str, transformer: bool) -> Dict[str, numpy.ndarray]:
    """The params of `pipe`'s transformer (or of its other layers), by name."""
    hf = next(n for n in nlp.get_pipe(pipe).model.walk() if n.name == "hf_transformer")
    inside = {id(n) for n in hf.walk()}
    return {
        f"{pipe}/{i}/{node.name}.{p}" if not transformer else f"{pipe}/{p}": node.get_param(p)
        for i, node in enumerate(nlp.get_pipe(pipe).model.walk())
        if (id(node) in inside) is transformer
        for p in node.param_names
        if node.has_param(p)
    }


def write_corpus(path: Path) -> None:
    nlp = spacy.blank("en")
    docs = []
    for text, places in TEXTS:
        doc, spans, start = nlp.make_doc(text), [], 0
        for place in places:
            start = text.index(place, start)
            spans.append(doc.char_span(start, start + len(place), label="GPE"))
        doc.ents = spans
        docs.append(doc)
    DocBin(docs=docs).to_disk(path)


def train_command(root: Path, output: Path, *extra: str) -> List[str]:
    data = str(root / "train.spacy")
    return ["-m", "torchlayers", "train", str(root / "config.cfg"), "--output", str(output),
            "--code", str(root / "dump.py"), "--check-every", "1", "--timeout", "60",
            "--paths.train", data, "--paths.dev", data, *extra]  # fmt: skip


def test_two_ranks_fine_tune_each_transformer_as_one_process_does(tmp_path: Path) -> None:
    """T4, M1, M2: spaCy's ner and torch_ner, each over its own HFTransformer.v1
    (learn_rate_scale 0.5), trained by `python -m torchlayers train` on 2 ranks, each on its
    shard in batches of 2: after training both ranks hold bit-identical transformer weights,
    moved from the pretrained ones; torch_ner's weights, transformer and head, are those one
    process takes on the union in batches of 4 (float32 rounding); rank 0 alone writes, and
    the saved pipeline loads with plain spacy.load holding the ranks' weights.

    spaCy's ner is left out of the one-process comparison: its model keeps the classes it has
    not yet seen in gold (attrs["unseen_classes"], a mask on its scores and gradients) per
    rank, outside the summed gradients, so it matches one process only once each rank has
    seen every class (measured here: weights up to 0.04 apart after 4 steps, also over its
    own CNN tok2vec).
    """
    import torchlayers.spacy.ner  # noqa: F401  registers torch_ner for fill_config

    tiny = save_tiny_bert(tmp_path / "tiny-bert")
    write_corpus(tmp_path / "train.spacy")
    (tmp_path / "dump.py").write_text(DUMP)
    import_code(tmp_path / "dump.py")
    (tmp_path / "base.cfg").write_text(CONFIG.replace("{tiny}", tiny))
    fill_config(tmp_path / "config.cfg", tmp_path / "base.cfg", silent=True)
    two, one = tmp_path / "two", tmp_path / "one"
    argv = train_command(tmp_path, two, "--paths.weights", str(two))
    ranks = run_ranks([argv, argv], timeout=150)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert "Training on 2 process(es)" in ranks[0].stdout and ranks[1].stdout == ""
    alone = subprocess.run(
        [sys.executable, *train_command(tmp_path, one, "--paths.weights", str(one),
                                        "--training.batcher.size", "4")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    rank_0, rank_1 = (dict(numpy.load(f"{two}.{r}.npz")) for r in (0, 1))
    assert rank_0.keys() == rank_1.keys()
    for name in rank_0:
        assert_array_equal(rank_1[name], rank_0[name], err_msg=name)
    pretrained = dict(transformers.AutoModel.from_pretrained(tiny).named_parameters())
    for pipe in ("ner", "torch_ner"):
        moved = [n for n, w in pretrained.items()
                 if not numpy.allclose(rank_0[f"{pipe}/{n}"], w.detach().numpy())]  # fmt: skip
        assert len(moved) > 30, (pipe, moved)  # every weight but the pooler's (no gradient)
    assert sorted(p.name for p in two.iterdir()) == ["model-best", "model-last"]
    nlp = spacy.load(two / "model-last")
    for pipe in ("ner", "torch_ner"):
        for name, saved in params(nlp, pipe, transformer=True).items():
            assert_array_equal(saved, rank_0[name], err_msg=name)
    single = spacy.load(one / "model-last")
    want = {**params(single, "torch_ner", True), **params(single, "torch_ner", False)}
    got = {**params(nlp, "torch_ner", True), **params(nlp, "torch_ner", False)}
    assert got.keys() == want.keys() and len(want) > 40
    for name in want:
        assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)
    doc = nlp("the dog walked to berlin")
    assert len(doc) == 5 and all(e.label_ == "GPE" for e in doc.ents)
