"""resizable: examples for R1-R9, and a spaCy textcat that takes add_label after training."""

from collections import OrderedDict
from typing import Optional

import numpy
import pytest
import spacy
import torch
from numpy.testing import assert_allclose, assert_array_equal
from spacy.training import Example
from spacy.util import registry
from thinc.api import (
    Adam,
    Dropout,
    LayerNorm,
    Model,
    Softmax,
    chain,
    sigmoid_activation,
    softmax_activation,
)

from torchlayers.averaged import averaged
from torchlayers.resizable import resizable, resize_input, resize_output
from torchlayers.with_torch import with_torch

from .helpers import bag_of_words

RTOL, ATOL = 1e-5, 1e-6


def mlp(nI: int = 4, nH: int = 8, nO: int = 3) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(nI, nH), torch.nn.ReLU(), torch.nn.Linear(nH, nO))


def batch(n: int = 5, width: int = 4, seed: int = 0) -> numpy.ndarray:
    return numpy.random.default_rng(seed).uniform(-1, 1, (n, width)).astype("float32")


def train(model: Model, X: numpy.ndarray, optimizer, steps: int = 2) -> None:
    for _ in range(steps):
        Y, backprop = model(X, is_train=True)
        backprop(numpy.ones_like(Y) - Y)
        model.finish_update(optimizer)


def test_attrs_follow_spacys_convention():
    """R1: attrs['resize_output'] / ['resize_input'] are (model, n) -> model."""
    model = resizable(with_torch(mlp()))
    assert model.attrs["resize_output"](model, 5) is model
    assert model.attrs["resize_input"](model, 6) is model
    assert (model.get_dim("nI"), model.get_dim("nO")) == (6, 5)
    assert model.predict(batch(width=6)).shape == (5, 5)


def test_module_level_functions_find_the_node():
    """R1, R8: resize_output on a composed model finds the resizable node; dims follow up the
    chain while it is the last layer."""
    head = resizable(with_torch(mlp()))
    model = chain(with_torch(torch.nn.Linear(2, 4)), head)
    model.initialize(X=batch(width=2))
    assert resize_output(model, 7) is model
    assert head.get_dim("nO") == head.layers[0].get_dim("nO") == model.get_dim("nO") == 7
    assert model.predict(batch(width=2)).shape == (5, 7)


def test_no_or_several_resizable_layers_raise():
    """R1: a clear error when the model has no resizable node, or more than one."""
    with pytest.raises(ValueError, match="no resizable layer"):
        resize_output(chain(with_torch(mlp()), softmax_activation()), 4)
    two = chain(resizable(with_torch(mlp())), resizable(with_torch(mlp(3, 4, 2))))
    with pytest.raises(ValueError, match="2 resizable layers"):
        resize_output(two, 4)


def test_resize_before_initialize_sets_the_factorys_dim():
    """R1: before initialize (spaCy's add_label, once per label) a resize only sets nO."""
    built_with = []

    def factory(nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
        built_with.append((nI, nO))
        return torch.nn.Linear(nI, nO)

    model = resizable(with_torch(factory))
    for n in (1, 2, 3):
        resize_output(model, n)
    assert built_with == []
    model.initialize(X=batch())
    assert built_with == [(4, 3)]
    assert model.predict(batch()).shape == (5, 3)


def test_thinc_softmax_keeps_old_probabilities():
    """R2, R3: Thinc's Softmax (W/b) grows in place; fill -1e4 keeps old-class probabilities."""
    model = resizable(Softmax(3, 4), fill=-1e4)
    model.initialize()
    model.layers[0].set_param("W", batch(3, 4, seed=1))
    before = model.predict(batch())
    node_id = model.layers[0].id
    resize_output(model, 5)
    after = model.predict(batch())
    assert model.layers[0].id == node_id and model.layers[0].get_param("W").shape == (5, 4)
    assert_allclose(after[:, :3], before, rtol=RTOL, atol=ATOL)
    assert_array_equal(after[:, 3:], 0)


def test_dotted_paths_name_the_layers():
    """R2: input_layer/output_layer name submodules by dotted path."""
    module = torch.nn.Sequential(
        OrderedDict(
            encoder=torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh()),
            head=torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(8, 3))),
        )
    )
    model = resizable(with_torch(module), input_layer="encoder.0", output_layer="head.proj")
    X = batch()
    before = model.predict(X)
    resize_output(model, 6)
    resize_input(model, 5)
    assert (module.head.proj.out_features, module.encoder[0].in_features) == (6, 5)
    assert_allclose(model.predict(numpy.hstack([X, X[:, :1]]))[:, :3], before, rtol=RTOL)
    with pytest.raises(ValueError, match="no submodule 'head.nope'"):
        resize_output(resizable(with_torch(module), output_layer="head.nope"), 2)


def test_gradients_are_resized_with_the_params():
    """R2, R7: a pending gradient is resized too (new units 0), and torch's .grad keeps
    viewing the node's gradient at the next backward."""
    model = resizable(with_torch(mlp()))
    node = model.layers[0]
    X = batch()
    Y, backprop = model(X, is_train=True)
    backprop(numpy.ones_like(Y))
    kept = node.get_grad("2.weight").copy()
    resize_output(model, 5)
    grad = node.get_grad("2.weight")
    assert grad.shape == (5, 8)
    assert_array_equal(grad[:3], kept)
    assert_array_equal(grad[3:], 0)
    Y, backprop = model(X, is_train=True)
    backprop(numpy.ones_like(Y))
    assert_allclose(node.get_grad("2.weight")[:3], 2 * kept, rtol=RTOL)
    torch_grad = node.shims[0].params["2.weight"].grad
    assert numpy.shares_memory(torch_grad.numpy(), node.get_grad("2.weight"))
    model.finish_update(Adam(0.01))


def test_optimizer_state_moves_at_once():
    """R7: after a resize kept units keep moments and averages, new units start at zero
    moments and at their live value in the averages; use_params(averages) works at once."""
    model = resizable(with_torch(mlp()), fill=-1e4)
    opt = Adam(0.01)
    X = batch()
    train(model, X, opt)
    key = (model.layers[0].id, "2.bias")
    mom1, average = opt.mom1[key].copy(), opt.averages[key].copy()
    with model.use_params(opt.averages):
        averaged_before = model.predict(X)
    resize_output(model, 5)
    assert_array_equal(opt.mom1[key][:3], mom1)
    assert_array_equal(opt.mom1[key][3:], 0)
    assert_array_equal(opt.averages[key], numpy.concatenate([average, [-1e4, -1e4]]))
    with model.use_params(opt.averages):
        assert_allclose(model.predict(X)[:, :3], averaged_before, rtol=RTOL, atol=ATOL)
    train(model, X, opt)


def test_pending_state_moves_at_the_next_update():
    """R7: an optimizer the resizable node has not seen gets its state moved at the next
    finish_update (here the layer was trained on its own, around the resizable node)."""
    model = resizable(with_torch(mlp()))
    opt = Adam(0.01)
    X = batch()
    train(model.layers[0], X, opt)
    key = (model.layers[0].id, "2.weight")
    mom2 = opt.mom2[key].reshape(3, 8).copy()
    resize_output(model, 4)
    assert opt.mom2[key].size == 24  # not seen: nothing moved yet
    Y, backprop = model(X, is_train=True)
    backprop(numpy.zeros_like(Y))
    model.finish_update(opt)
    moved = opt.mom2[key].reshape(4, 8)
    assert_allclose(moved[:3], mom2 * opt.b2, rtol=1e-6)  # a zero gradient: decay only
    assert_array_equal(moved[3:], 0)


def test_embedding_rows_are_inputs():
    """R2, R4: nn.Embedding grows rows as inputs; old ids embed as before."""
    torch.manual_seed(0)
    model = resizable(with_torch(torch.nn.Embedding(5, 3, padding_idx=4)))
    ids = numpy.array([0, 4, 2], dtype="int64")
    before = model.predict(ids)
    resize_input(model, 8)
    assert model.get_dim("nI") == 8
    assert_array_equal(model.predict(ids), before)
    assert_array_equal(model.predict(numpy.array([7], dtype="int64")), 0)
    with pytest.raises(ValueError, match="padding_idx 4"):
        resize_input(model, 3)


@pytest.mark.parametrize(
    "module, path, which, culprit",
    [
        (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)), None, "nO", "'1'"),
        (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)), None, "nO", "'1'"),
        (torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 3)), None, "nI", "'0'"),
        (mlp(), "0", "nO", "'2' \\(Linear\\)"),
        (torch.nn.Sequential(torch.nn.Conv1d(4, 3, 1)), "0", "nO", "only Linear and Embedding"),
    ],
)
def test_unsafe_modules_raise_naming_the_submodule(module, path, which, culprit):
    """R9: a submodule whose size depends on the resized units -> ValueError naming it."""
    model = resizable(with_torch(module), input_layer=path, output_layer=path)
    with pytest.raises(ValueError, match=culprit):
        (resize_output if which == "nO" else resize_input)(model, 5)


def test_thinc_layer_after_the_output_raises():
    """R9: a parameterised Thinc layer after the resized one is named in the error."""
    model = resizable(chain(with_torch(mlp()), LayerNorm(3)))
    model.initialize(X=batch())
    with pytest.raises(ValueError, match="layernorm comes after the output layer"):
        resize_output(model, 5)
    assert model.get_dim("nO") == 3


def test_bad_sizes_and_fill_raise():
    """R9: sizes below 1 or not ints, and a non-number fill, raise ValueError."""
    model = resizable(with_torch(mlp()))
    for size in (0, -2, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            resize_output(model, size)
    with pytest.raises(ValueError, match="fill must be a number"):
        resizable(with_torch(mlp()), fill="-1e4")


def test_loading_into_an_unresized_model_raises():
    """R8: bytes of a resized layer load only into a layer resized the same way."""
    model = resizable(with_torch(mlp()))
    resize_output(model, 5)
    with pytest.raises(ValueError):
        resizable(with_torch(mlp())).from_bytes(model.to_bytes())
    twin = resize_output(resizable(with_torch(mlp())), 5)
    twin.from_bytes(model.to_bytes())
    assert_array_equal(twin.predict(batch()), model.predict(batch()))


# spaCy: a textcat component built from torchlayers takes add_label after training


@registry.architectures("torchlayers_test.BowTextCat.v1")
def bow_textcat(n_features: int = 32, width: int = 8, exclusive: bool = True) -> Model:
    """Hashed bag of words -> with_torch MLP -> resizable with_torch Linear -> softmax/sigmoid."""
    encoder = with_torch(torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.ReLU()))
    head = with_torch(lambda nI, nO: torch.nn.Linear(nI, nO))
    head.name = "head"
    activation = softmax_activation() if exclusive else sigmoid_activation()
    # exclusive: a new class starts at probability e^-16 (below float32 rounding of the old
    # ones); -1e4 would give exactly 0, and softmax's gradient p(1 - p) would stay 0 forever.
    fill = -16.0 if exclusive else 0.0
    model = chain(bag_of_words(n_features), encoder, resizable(head, fill=fill), activation)
    model.attrs["resize_output"] = resize_output  # what TrainablePipe.add_label calls
    return model


TEXTS = [("good great fine", "POS"), ("bad awful poor", "NEG"), ("great good", "POS")]


def make_nlp(component: str, exclusive: bool):
    nlp = spacy.blank("en")
    model = {"@architectures": "torchlayers_test.BowTextCat.v1", "exclusive": exclusive}
    nlp.add_pipe(component, config={"model": model})
    return nlp


def examples(nlp, texts, labels):
    return [
        Example.from_dict(nlp.make_doc(text), {"cats": {lab: float(lab == gold) for lab in labels}})
        for text, gold in texts
    ]


@pytest.mark.parametrize("component, exclusive", [("textcat", True), ("textcat_multilabel", False)])
def test_spacy_textcat_takes_a_label_after_training(component, exclusive):
    """R1, R3, R7, R8 (C2): train, add_label, old-label scores unchanged, train on, save/load."""
    nlp = make_nlp(component, exclusive)
    train_examples = examples(nlp, TEXTS, ["POS", "NEG"])
    optimizer = nlp.initialize(lambda: train_examples)
    for _ in range(3):
        nlp.update(train_examples, sgd=optimizer)
    text = "good but poor"
    before = nlp(text).cats
    with nlp.use_params(optimizer.averages):
        averaged_before = nlp(text).cats

    assert nlp.get_pipe(component).add_label("MEH") == 1
    after = nlp(text).cats
    for label in ("POS", "NEG"):
        assert after[label] == pytest.approx(before[label], rel=RTOL, abs=ATOL)
    assert after["MEH"] == pytest.approx(0.0 if exclusive else 0.5, abs=1e-6)
    with nlp.use_params(optimizer.averages):
        averaged_after = nlp(text).cats
    for label in ("POS", "NEG"):
        assert averaged_after[label] == pytest.approx(averaged_before[label], rel=RTOL, abs=ATOL)

    more = examples(nlp, TEXTS + [("so so meh", "MEH")], ["POS", "NEG", "MEH"])
    for _ in range(3):
        nlp.update(more, sgd=optimizer)
    head = next(node for node in nlp.get_pipe(component).model.walk() if node.name == "head")
    assert head.get_param("weight").shape == (3, 8)
    assert numpy.abs(head.get_param("weight")[2]).sum() > 0  # the new class learns
    loaded = make_nlp(component, exclusive).from_bytes(nlp.to_bytes())
    assert loaded(text).cats == nlp(text).cats


def test_dims_follow_past_a_dimensionless_activation():
    """R8: nO follows the resize up through a chain ending in softmax_activation."""
    model = averaged(chain(resizable(with_torch(torch.nn.Linear(3, 2))), softmax_activation()))
    model.initialize(X=numpy.zeros((1, 3), dtype="float32"))
    resize_output(model, 4)
    assert model.predict(numpy.zeros((1, 3), dtype="float32")).shape == (1, 4)
    assert model.get_dim("nO") == model.layers[0].get_dim("nO") == 4


def test_nothing_to_resize_is_refused_at_construction_or_initialize():
    """R9: a layer with nothing a resize can reach fails at resizable(...) or initialize, not
    at the first resize."""
    with pytest.raises(ValueError, match="no Linear or Embedding"):
        resizable(with_torch(torch.nn.ReLU()))
    with pytest.raises(ValueError, match="no with_torch or Thinc W/b layer"):
        resizable(chain(Dropout(0.1), Dropout(0.1)))
    model = resizable(with_torch(lambda nI, nO: torch.nn.Tanh()))
    with pytest.raises(ValueError, match="no Linear or Embedding"):
        model.initialize(X=numpy.zeros((2, 3), dtype="float32"))
