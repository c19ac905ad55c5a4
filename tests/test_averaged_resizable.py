"""averaged and resizable together (SPEC A5): resizing an averaged layer resizes its averages."""

from typing import Any, Dict, List, Tuple

import numpy
import pytest
import spacy
import torch
from numpy.testing import assert_allclose, assert_array_equal
from spacy.training import Example
from spacy.util import registry
from thinc.api import SGD, Adam, Linear, Model, chain, softmax_activation

from torchlayers.averaged import averaged, averages, settle, use_averages
from torchlayers.resizable import resizable, resize_input, resize_output
from torchlayers.with_torch import with_torch

from .helpers import bag_of_words

RTOL, ATOL = 1e-5, 1e-6  # outputs: float32 rounding (SPEC, note under R5)
X = numpy.random.default_rng(0).uniform(-1, 1, (6, 4)).astype("float32")
FILL = -2.0


def averaged_over_resizable(head: str = "torch") -> Model:
    """averaged(chain(encoder, resizable(head))): the resizable node under the averaged one."""
    torch.manual_seed(0)
    numpy.random.seed(0)  # Thinc initializes Linear with numpy's global generator
    encoder = with_torch(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh()))
    layer = with_torch(torch.nn.Linear(8, 3)) if head == "torch" else Linear(3, 8)
    model: Model = averaged(chain(encoder, resizable(layer, fill=FILL)))
    model.initialize(X=X)
    return model


def resizable_over_averaged() -> Model:
    """resizable(averaged(with_torch(Linear))): the averaged node under the resizable one."""
    torch.manual_seed(0)
    model: Model = resizable(averaged(with_torch(torch.nn.Linear(4, 3))), fill=FILL)
    model.initialize(X=X)
    return model


def step(model: Model, optimizer: Any, X: numpy.ndarray = X) -> None:
    Y, backprop = model(X, is_train=True)
    backprop(Y - 1)
    model.finish_update(optimizer)


def averaged_node(model: Model) -> Model:
    return next(node for node in model.walk() if node.name.startswith("averaged("))


def by_key(model: Model) -> Dict[Tuple[int, str], Tuple[Any, Any]]:
    """(average, live param) by walk index and name, for the averaged node in `model`."""
    node = averaged_node(model)
    settle(node)
    nodes = list(node.layers[0].walk())
    return {(nodes.index(n), name): (avg, n.get_param(name)) for n, name, avg in averages(node)}


def overlap(a: Any, b: Any) -> Tuple[slice, ...]:
    return tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape))


@pytest.mark.parametrize("head", ["torch", "thinc"])
def test_growing_the_output_keeps_averaged_outputs(head):
    """A5 (R3): resized right after an update (its step still pending), the averages keep the kept
    units' values (that step included) and start new units at their live value: use_averages
    gives the old averaged outputs and exactly `fill` for the new units; the step count stays."""
    model, twin = averaged_over_resizable(head), averaged_over_resizable(head)
    opt, twin_opt = Adam(0.1), Adam(0.1)
    for _ in range(3):
        step(model, opt)
        step(twin, twin_opt)
    with use_averages(twin):
        before = twin.predict(X)
    resize_output(model, 5)
    assert model.attrs["average_steps"] == 3
    old = by_key(twin)
    for key, (average, live) in by_key(model).items():
        keep = overlap(average, old[key][0])
        assert_array_equal(average[keep], old[key][0][keep])
        new = numpy.ones(average.shape, dtype=bool)
        new[keep] = False
        assert_array_equal(average[new], live[new])
    with use_averages(model):
        after = model.predict(X)
    assert_allclose(after[:, :3], before, rtol=RTOL, atol=ATOL)
    assert_array_equal(after[:, 3:], FILL)


def test_training_goes_on_from_the_resized_averages():
    """A5 (A1): the update after a resize folds into the resized averages (not started again from
    the live values): avg -= (1 - d_t) * (avg - w) on every unit, kept and new."""
    model = averaged_over_resizable()
    opt = SGD(0.1)
    for _ in range(3):
        step(model, opt)
    resize_output(model, 5)
    start = {key: average.copy() for key, (average, _) in by_key(model).items()}
    step(model, opt)
    decay = (1 + 4) / (10 + 4)
    for key, (average, live) in by_key(model).items():
        assert_allclose(average, start[key] - (1 - decay) * (start[key] - live), rtol=1e-6)


def test_resize_out_of_the_averaged_nodes_sight_keeps_kept_averages():
    """A5: a resize called on the resizable node itself cannot see the averaged node above it;
    the next update fits the averages then: kept units keep theirs, new units start live."""
    model = averaged_over_resizable()
    opt = SGD(0.1)
    for _ in range(2):
        step(model, opt)
    old = {key: average.copy() for key, (average, _) in by_key(model).items()}
    head = model.layers[0].layers[1]
    head.attrs["resize_output"](head, 5)
    with pytest.raises(ValueError, match="has shape"), use_averages(model):
        pass  # until the next update: the averages no longer fit
    nodes = list(model.layers[0].walk())
    start = {}
    for (index, name), average in old.items():
        start[index, name] = nodes[index].get_param(name).copy()
        keep = overlap(start[index, name], average)
        start[index, name][keep] = average[keep]
    step(model, opt)
    decay = (1 + 3) / (10 + 3)
    for key, (average, live) in by_key(model).items():
        assert_allclose(average, start[key] - (1 - decay) * (start[key] - live), rtol=1e-6)


@pytest.mark.parametrize("which", ["nO", "nI"])
def test_resizable_around_an_averaged_node(which):
    """A5 (R3, R4): resizable(averaged(...)) resizes the averages too, in both directions."""
    model = resizable_over_averaged()
    opt = Adam(0.1)
    for _ in range(3):
        step(model, opt)
    with use_averages(model):
        before = model.predict(X)
    if which == "nO":
        resize_output(model, 5)
        with use_averages(model):
            after = model.predict(X)
        assert_array_equal(after[:, 3:], FILL)
    else:
        resize_input(model, 6)
        Z = numpy.full((X.shape[0], 2), 7.0, dtype="float32")
        with use_averages(model):
            after = model.predict(numpy.hstack([X, Z]))
    assert_allclose(after[:, :3], before, rtol=RTOL, atol=ATOL)
    assert (
        model.get_dim(which) == averaged_node(model).get_dim(which) == (5 if which == "nO" else 6)
    )
    step(model, opt, X if which == "nO" else numpy.hstack([X, Z]))


def test_bytes_round_trip_after_a_resize():
    """A5 (A4, R8): after a resize and an update, to_bytes loads into a model resized the same way:
    same step count, live outputs and averaged outputs."""
    model = averaged_over_resizable()
    opt = Adam(0.1)
    for _ in range(2):
        step(model, opt)
    resize_output(model, 5)
    step(model, opt)
    loaded = resize_output(averaged_over_resizable(), 5).from_bytes(model.to_bytes())
    assert loaded.attrs["average_steps"] == 3
    assert_array_equal(loaded.predict(X), model.predict(X))
    with use_averages(model), use_averages(loaded):
        assert_array_equal(loaded.predict(X), model.predict(X))


# spaCy: an averaged textcat takes add_label after training


@registry.architectures("torchlayers_test.AveragedBowTextCat.v1")
def averaged_bow_textcat(n_features: int = 32, width: int = 8) -> Model:
    """averaged(hashed bag of words -> with_torch MLP -> resizable with_torch Linear -> softmax)."""
    encoder = with_torch(torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.ReLU()))
    head = resizable(with_torch(lambda nI, nO: torch.nn.Linear(nI, nO)), fill=-16.0)
    model = averaged(chain(bag_of_words(n_features), encoder, head, softmax_activation()))
    model.attrs["resize_output"] = resize_output  # what TrainablePipe.add_label calls
    return model


def test_spacy_add_label_keeps_averaged_scores():
    """A5 (R1, C2): add_label on a trained averaged textcat keeps the old labels' averaged
    scores; training and saving go on."""
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "textcat", config={"model": {"@architectures": "torchlayers_test.AveragedBowTextCat.v1"}}
    )
    texts = [("good great", "POS"), ("bad awful", "NEG"), ("meh so so", "MEH")]

    def examples(labels: List[str]) -> List[Example]:
        return [
            Example.from_dict(nlp.make_doc(t), {"cats": {lab: float(lab == y) for lab in labels}})
            for t, y in texts
            if y in labels
        ]

    optimizer = nlp.initialize(lambda: examples(["POS", "NEG"]))
    for _ in range(3):
        nlp.update(examples(["POS", "NEG"]), sgd=optimizer)
    model = nlp.get_pipe("textcat").model
    with use_averages(model):
        before = nlp("good but awful").cats
    nlp.get_pipe("textcat").add_label("MEH")
    with use_averages(model):
        after = nlp("good but awful").cats
    for label in ("POS", "NEG"):
        assert after[label] == pytest.approx(before[label], rel=RTOL, abs=ATOL)
    assert after["MEH"] < 1e-6
    for _ in range(2):
        nlp.update(examples(["POS", "NEG", "MEH"]), sgd=optimizer)
    assert model.attrs["average_steps"] == 5
    loaded = spacy.blank("en")
    loaded.add_pipe(
        "textcat", config={"model": {"@architectures": "torchlayers_test.AveragedBowTextCat.v1"}}
    )
    loaded.from_bytes(nlp.to_bytes())
    with use_averages(model), use_averages(loaded.get_pipe("textcat").model):
        assert loaded("good but awful").cats == nlp("good but awful").cats
