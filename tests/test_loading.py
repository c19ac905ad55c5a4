"""W6, W7, W3: loading refuses what is not the model's own and changes nothing; unbuilt layers
round-trip; predictions from many threads never see a training call's flags."""

import json
import pickle
import threading
from typing import Any, Callable, Dict, List

import numpy
import pytest
import srsly
import torch
from numpy.testing import assert_array_equal
from thinc.api import Adam, Linear, Relu, chain, fix_random_seed

from torchlayers import averaged, resizable, with_dropout, with_torch

from .helpers import NH, NI, NO, batch, mlp, refuse_unpickling, run_threads, train_step


def bn_net(nH: int = NH, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(NI, nH), torch.nn.BatchNorm1d(nH), torch.nn.Linear(nH, NO)
    )


def linear_factory(nI, nO):
    return torch.nn.Linear(nI, nO)


def nested(nH: int = NH, seed: int = 0):
    """All four combinators, Thinc layers between them."""
    output = with_torch(linear_factory)
    output.set_dim("nO", NO)
    return averaged(
        chain(with_dropout(with_torch(bn_net(nH, seed)), 0.1), Relu(NO), resizable(output))
    )


BUILDERS: Dict[str, Callable[..., Any]] = {
    "with_torch": lambda nH=NH, seed=0: with_torch(bn_net(nH, seed)),
    "with_dropout": lambda nH=NH, seed=0: with_dropout(with_torch(bn_net(nH, seed)), 0.2),
    "resizable": lambda nH=NH, seed=0: resizable(with_torch(mlp(nH=nH, seed=seed))),
    "averaged": nested,
}


def trained(kind: str, nH: int = NH, seed: int = 0):
    fix_random_seed(seed)
    model = BUILDERS[kind](nH, seed)
    model.initialize(X=batch(8))
    train_step(model, batch(8), batch(8, NO, seed=1), Adam(0.01))
    train_step(model, batch(8, seed=2), batch(8, NO, seed=3), Adam(0.01))
    return model


def state_of(model) -> List[Any]:
    """Everything a load may change: names, dims, param names and values, buffers, attrs."""
    state = []
    for node in model.walk():
        params = {n: node.get_param(n).copy() for n in node.param_names if node.has_param(n)}
        buffers = {}
        for shim in node.shims:
            module = getattr(shim, "module", None)
            if isinstance(module, torch.nn.Module):
                buffers = {n: b.clone() for n, b in module.named_buffers()}
        attrs = {
            k: v for k, v in node.attrs.items() if isinstance(v, (int, float, str, type(None)))
        }
        dims = {d: node.maybe_get_dim(d) for d in node.dim_names}
        state.append((node.name, dims, sorted(node.param_names), params, buffers, attrs))
    return state


def assert_same_state(before, after) -> None:
    assert len(before) == len(after)
    for (n1, d1, p1, v1, b1, a1), (n2, d2, p2, v2, b2, a2) in zip(before, after):
        assert (n1, d1, p1, a1) == (n2, d2, p2, a2)
        assert v1.keys() == v2.keys() and b1.keys() == b2.keys()
        for name in v1:
            assert_array_equal(v1[name], v2[name])
        for name in b1:
            assert torch.equal(b1[name], b2[name])


def flip_inside(data: bytes, array: numpy.ndarray) -> bytes:
    """Flip one bit inside the saved bytes of `array` (found by its raw bytes)."""
    raw = array.tobytes()
    start = data.find(raw)
    assert start >= 0, "the array's bytes are not in the data"
    spoiled = bytearray(data)
    spoiled[start + len(raw) // 2] ^= 0x10
    return bytes(spoiled)


def bad_bytes(kind: str) -> Dict[str, bytes]:
    model = trained(kind)
    good = model.to_bytes()
    torch_node = next(n for n in model.walk() if n.name == "with_torch(Sequential)")
    weight = torch_node.get_param(next(iter(torch_node.param_names)))
    buffers = dict(torch_node.shims[0].module.named_buffers())
    running = next((b for name, b in buffers.items() if name.endswith("running_var")), None)
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "truncated-by-one": good[:-1],
        "random": numpy.random.default_rng(0).bytes(400),
        "json": json.dumps({"nodes": [], "attrs": []}).encode(),
        "msgpack-int-nodes": srsly.msgpack_dumps({"nodes": 3}),
        "msgpack-list": srsly.msgpack_dumps([1, 2, 3]),
        "msgpack-int": srsly.msgpack_dumps(7),
        "pickle": pickle.dumps({"0.weight": numpy.zeros((NH, NI))}),
        "thinc-linear": Linear(NO, NI).initialize().to_bytes(),
        "thinc-chain": chain(Linear(NH, NI), Linear(NO, NH)).initialize().to_bytes(),
        "other-with_torch": with_torch(torch.nn.Linear(NI, NO)).to_bytes(),
        "other-size": trained(kind, nH=NH + 2).to_bytes(),
        "flipped-param": flip_inside(good, weight),
        "flipped-buffer": flip_inside(good, running.numpy()) if running is not None else b"",
        "spliced": good[: len(good) // 3] + trained(kind, seed=5).to_bytes()[len(good) // 3 :],
    }


@pytest.mark.parametrize("kind", BUILDERS)
def test_bad_bytes_raise_value_error_and_change_nothing(kind):
    """W6: empty, truncated, corrupted and foreign bytes raise ValueError naming the layer; the
    model keeps its name, dims, param names and values, buffers and attrs."""
    for case, data in bad_bytes(kind).items():
        model = trained(kind, seed=9)
        before, X = state_of(model), batch()
        expected = model.predict(X)
        with pytest.raises(ValueError, match=r"^" + model.name.replace("(", r"\(")[:12]) as info:
            model.from_bytes(data)
        assert info.type is ValueError, case
        assert_same_state(before, state_of(model))
        assert_array_equal(model.predict(X), expected)


def test_flipped_byte_in_a_torch_tensor_is_detected():
    """W6: a flipped byte inside a saved torch parameter or buffer fails its checksum."""
    model = trained("with_torch")
    data = model.to_bytes()
    weight = model.get_param("0.weight")
    with pytest.raises(ValueError, match="corrupt.*0.weight|0.weight.*checksum"):
        trained("with_torch", seed=3).from_bytes(flip_inside(data, weight))
    running = model.shims[0].module[1].running_var.numpy()
    with pytest.raises(ValueError, match="corrupt"):
        trained("with_torch", seed=3).from_bytes(flip_inside(data, running))


def test_flipped_tensor_detected_under_a_thinc_root():
    """W6: nested in a Thinc chain, the with_torch node's own header checksums catch a flip,
    and the node is put back."""
    model = chain(with_torch(bn_net()), Linear(NO, NO)).initialize(X=batch())
    data = model.to_bytes()
    torch_node = model.layers[0]
    fresh = chain(with_torch(bn_net(seed=4)), Linear(NO, NO)).initialize(X=batch())
    before = state_of(fresh.layers[0])
    with pytest.raises(ValueError, match="corrupt"):
        fresh.from_bytes(flip_inside(data, torch_node.get_param("2.weight")))
    assert_same_state(before, state_of(fresh.layers[0]))


def test_msgpack_without_nodes_is_a_value_error():
    """W6: the broken case of issue 9: any msgpack gets a ValueError, not a TypeError."""
    model = with_torch(torch.nn.Linear(3, 4)).initialize()
    with pytest.raises(ValueError, match=r"with_torch\(Linear\): the data is not a saved"):
        model.from_bytes(srsly.msgpack_dumps({"nodes": 3}))


def test_thinc_linear_bytes_are_refused():
    """W6: a Thinc Linear's bytes no longer load into with_torch(nn.Linear) under its name."""
    model = with_torch(torch.nn.Linear(3, 4))
    before = state_of(model)
    with pytest.raises(ValueError, match="another architecture.*'linear'"):
        model.from_bytes(Linear(4, 3).initialize().to_bytes())
    assert model.name == "with_torch(Linear)" and set(model.param_names) == {"weight", "bias"}
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("kind", BUILDERS)
def test_files_refused_alike(kind, tmp_path):
    """W6: from_disk refuses a foreign file the same way and changes nothing."""
    path = tmp_path / "model"
    Linear(2, 2).initialize().to_disk(path)
    model = trained(kind)
    before = state_of(model)
    with pytest.raises(ValueError):
        model.from_disk(path)
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("kind", BUILDERS)
def test_round_trip_and_copy_keep_checking(kind):
    """W6, W9: good bytes load (also into a copy), and a copy still refuses bad ones."""
    model = trained(kind)
    fresh = trained(kind, seed=7).copy()
    fresh.from_bytes(model.to_bytes())
    assert_array_equal(fresh.predict(batch()), model.predict(batch()))
    with pytest.raises(ValueError):
        fresh.copy().from_bytes(b"\x80")


# -- unbuilt layers (W7) --------------------------------------------------------------------


def test_unbuilt_bytes_load_into_an_unbuilt_layer_that_then_initializes_as_new():
    """W6, W7: bytes saved before initialize load into an unbuilt layer, which then builds
    from what initialize sees, as a new one would."""
    data = with_torch(linear_factory).to_bytes()
    fresh = with_torch(linear_factory)
    fresh.from_bytes(data)
    assert fresh.shims[0].module is None and fresh.param_names == ()
    fresh.initialize(X=batch(), Y=batch(4, 2))
    assert fresh.predict(batch()).shape == (4, 2)


def test_unbuilt_bytes_keep_the_dims_that_were_set():
    """W7: an unbuilt layer with nO set (spaCy's add_label before initialize) saves nO, and the
    loaded layer builds with it."""
    model = with_torch(linear_factory)
    model.set_dim("nO", 5)
    fresh = with_torch(linear_factory)
    fresh.from_bytes(model.to_bytes())
    assert fresh.get_dim("nO") == 5 and fresh.shims[0].module is None
    fresh.initialize(X=batch())
    assert fresh.predict(batch()).shape == (4, 5)


def test_unbuilt_bytes_refused_by_a_built_layer():
    """W6: bytes saved before initialize would wipe a built layer's weights: refused."""
    model = with_torch(linear_factory).initialize(X=batch(), Y=batch(4, 2))
    before = state_of(model)
    with pytest.raises(ValueError, match="before initialize"):
        model.from_bytes(with_torch(linear_factory).to_bytes())
    assert_same_state(before, state_of(model))


def test_nested_unbuilt_model_round_trips():
    """W7: all four combinators, never initialized, round-trip and then initialize."""
    fresh = nested(seed=3)
    fresh.from_bytes(nested().to_bytes())
    fresh.initialize(X=batch(8))
    assert fresh.predict(batch()).shape == (4, NO)


# -- no pickle (W6) -------------------------------------------------------------------------


@pytest.fixture
def no_pickle(monkeypatch):
    refuse_unpickling(monkeypatch)


@pytest.mark.parametrize("kind", BUILDERS)
def test_no_load_path_unpickles(kind, tmp_path, no_pickle):
    """W6: bytes and files of every combinator load without pickle or torch.load."""
    model = trained(kind)
    data = model.to_bytes()
    model.to_disk(tmp_path / "model")
    trained(kind, seed=2).from_bytes(data)
    trained(kind, seed=2).from_disk(tmp_path / "model")
    with pytest.raises(ValueError):
        trained(kind, seed=2).from_bytes(pickle.dumps(data))


# -- predictions from many threads (W3, P10) ------------------------------------------------


def test_threads_predicting_never_see_train_mode():
    """W3: eight threads predicting one model whose module holds Dropout(0.5) and was handed
    over in train mode: every prediction is the eval-mode one (no dropout), no lock needed."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Dropout(0.5))
    module.train()
    model = with_torch(module)
    X = numpy.random.default_rng(0).normal(size=(16, 64)).astype("float32")
    expected = model.predict(X)
    wrong = []

    def work() -> None:
        for _ in range(300):
            if not numpy.array_equal(model.predict(X), expected):
                wrong.append(1)

    assert run_threads(work, 8) and not wrong


def test_threads_predicting_with_torch_dropout_see_no_rate():
    """W3, D6: torch_dropout=True: a rate set for training never reaches a prediction."""
    module = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Dropout(0.0))
    model = with_dropout(with_torch(module, torch_dropout=True), 0.5)
    model.layers[0].attrs["dropout_rate"] = 0.5
    X = numpy.ones((8, 32), dtype="float32")
    expected = model.predict(X)
    results = []

    def work() -> None:
        results.extend(numpy.array_equal(model.predict(X), expected) for _ in range(200))

    assert run_threads(work, 4)
    assert len(results) == 800 and all(results)


def test_prediction_overlapping_a_training_call_is_refused():
    """W3: a prediction that overlaps a training call on another thread raises a clear error
    (it might have seen train-mode flags); it never returns a wrong result silently."""
    started, release = threading.Event(), threading.Event()

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(NI, NO)

        def forward(self, X):
            if self.training:
                started.set()
                release.wait(timeout=30)
            return self.linear(X)

    model = with_torch(Slow())
    trainer = threading.Thread(target=lambda: model(batch(), is_train=True))
    trainer.start()
    assert started.wait(timeout=30)
    with pytest.raises(RuntimeError, match="training call ran on this layer"):
        model.predict(batch())
    release.set()
    trainer.join(timeout=30)
    assert model.predict(batch()).shape == (4, NO)  # fine again once training is done


def test_a_copy_keeps_its_refs_to_nodes_below_it() -> None:
    """W9: a Layer's copy points its refs at the copies of the nodes they named (Thinc's own
    copy drops refs); a ref to a node outside the copied tree is not carried over."""
    from thinc.api import Linear, chain

    from torchlayers._loading import Layer

    inner, outside = Linear(2, 2), Linear(2, 2)
    node = Layer(
        "node",
        lambda model, X, is_train: model.layers[0](X, is_train),
        layers=[chain(inner, Linear(2, 2))],
        refs={"inner": inner, "outside": outside},
    )
    copied = node.copy()
    copied_inner = copied.get_ref("inner")
    assert copied_inner is copied.layers[0].layers[0] and copied_inner is not inner
    assert not copied.has_ref("outside")
