"""torchlayers.interop: the torch modules of a model; weights out to plain PyTorch and back."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy
import pytest
import torch
from safetensors.torch import load_file, save_file
from thinc.api import Adam, Relu, chain, fix_random_seed

from torchlayers import averaged, resizable, use_averages, with_dropout, with_torch
from torchlayers.interop import load_safetensors, save_safetensors, torch_module, torch_modules
from torchlayers.spacy.export import main

from .helpers import batch, mlp, train_step

TIMEOUT = 120  # seconds for a child process: a hung one fails the test


def two_module_model():
    """averaged(with_torch(Linear) >> relu >> with_torch(Linear -> BatchNorm)), initialized."""
    fix_random_seed(0)  # torch's and Thinc's (numpy) initial weights
    first = torch.nn.Linear(6, 4)
    second = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3))
    model = averaged(chain(with_torch(first), Relu(5), with_torch(second)), max_decay=0.9)
    model.initialize(X=batch())
    return model, first, second


def trained(model, steps: int = 3):
    optimizer = Adam(0.05)
    X = batch(8)
    for _ in range(steps):
        Y, _ = train_step(model, X, numpy.ones((8, model.get_dim("nO")), "f"), optimizer)
    return optimizer


def snapshot(model) -> Dict[str, numpy.ndarray]:
    """Every Thinc param and every torch state_dict entry under `model`, copied."""
    found = {}
    for i, node in enumerate(model.walk()):
        for name in node.param_names:
            found[f"{i}:{name}"] = node.get_param(name).copy()
    for path, module in torch_modules(model).items():
        for key, value in module.state_dict().items():
            found[f"{path}.{key}"] = value.detach().clone().numpy()
    return found


def assert_same(before: Dict[str, numpy.ndarray], after: Dict[str, numpy.ndarray]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        numpy.testing.assert_array_equal(after[key], before[key], err_msg=key)


# -- finding the modules ------------------------------------------------------------------------


def test_torch_module_is_the_very_module_by_path_or_name():
    """W1: torch_module returns the module the layer runs, found by path, name or uniqueness."""
    model, first, second = two_module_model()
    assert torch_modules(model) == {"0/0": first, "0/2": second}
    assert torch_module(model, "0/2") is second
    assert torch_module(model, "with_torch(Linear)") is first
    assert torch_module(with_torch(first)) is first
    assert torch_module(model.layers[0].layers[0]) is first


def test_torch_module_lists_the_candidates_when_ambiguous():
    """W1: no unique match is a ValueError naming every with_torch layer by path and name."""
    model, _, _ = two_module_model()
    with pytest.raises(ValueError, match=r"found 2.*'0/0': with_torch\(Linear\).*'0/2'"):
        torch_module(model)
    with pytest.raises(ValueError, match="named 'nope', found 0"):
        torch_module(model, "nope")


def test_a_factory_layer_has_no_module_before_initialize():
    """W7: a factory is built at initialize; before it, asking for the module says so."""
    layer = with_torch(lambda nI, nO: torch.nn.Linear(nI, nO))
    assert torch_modules(layer) == {}
    with pytest.raises(ValueError, match="initialize"):
        torch_module(layer)
    with pytest.raises(ValueError, match="initialize"):
        load_safetensors(layer, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})
    layer.initialize(X=batch(width=3), Y=numpy.zeros((4, 2), "f"))
    assert isinstance(torch_module(layer), torch.nn.Linear)


def test_trained_weights_show_in_the_module():
    """W1, W4: the module's state_dict holds the weights Thinc's optimizer trained."""
    model, first, _ = two_module_model()
    trained(model)
    node = model.layers[0].layers[0]
    numpy.testing.assert_array_equal(first.weight.detach().numpy(), node.get_param("weight"))


# -- export -------------------------------------------------------------------------------------


def test_one_module_exports_exactly_its_state_dict_keys(tmp_path: Path):
    """W6: one with_torch layer: the file's keys are its state_dict's, values equal."""
    module = mlp()
    model = with_torch(module)
    trained(model)
    written = save_safetensors(model, tmp_path / "w.safetensors")
    state = load_file(tmp_path / "w.safetensors")
    assert written == list(module.state_dict())
    assert sorted(state) == sorted(written)  # safetensors stores keys sorted
    for key, value in module.state_dict().items():
        assert torch.equal(state[key], value)


def test_several_modules_export_with_path_prefixes(tmp_path: Path):
    """W6: several with_torch layers: keys are path + '.' + state_dict key, buffers included."""
    model, first, second = two_module_model()
    trained(model)
    save_safetensors(model, tmp_path / "w.safetensors")
    state = load_file(tmp_path / "w.safetensors")
    expected = {f"0/0.{k}": v for k, v in first.state_dict().items()}
    expected.update({f"0/2.{k}": v for k, v in second.state_dict().items()})
    assert state.keys() == expected.keys()
    assert "0/2.1.running_mean" in state
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    save_safetensors(model, tmp_path / "one.safetensors", name="0/2")
    assert sorted(load_file(tmp_path / "one.safetensors")) == sorted(second.state_dict())


def test_averaged_export_writes_the_moving_average(tmp_path: Path):
    """A2, W6: averaged=True writes what use_averages swaps in; the live weights stay live."""
    model, first, _ = two_module_model()
    trained(model, steps=4)
    save_safetensors(model, tmp_path / "avg.safetensors", name="0/0", averaged=True)
    save_safetensors(model, tmp_path / "live.safetensors", name="0/0")
    with use_averages(model):
        expected = {k: v.clone() for k, v in first.state_dict().items()}
    avg, live = load_file(tmp_path / "avg.safetensors"), load_file(tmp_path / "live.safetensors")
    assert all(torch.equal(avg[k], expected[k]) for k in expected)
    assert not torch.equal(avg["weight"], live["weight"])
    assert torch.equal(live["weight"], first.weight.detach())
    with pytest.raises(ValueError, match="no averaged"):
        save_safetensors(with_torch(mlp()), tmp_path / "x.safetensors", averaged=True)


def test_tied_weights_export_under_both_names(tmp_path: Path):
    """W6: a parameter under two names (tied weights) is written under both, as state_dict has."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    module[1].weight = module[0].weight
    model = with_torch(module)
    save_safetensors(model, tmp_path / "tied.safetensors")
    state = load_file(tmp_path / "tied.safetensors")
    assert torch.equal(state["0.weight"], state["1.weight"])
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    fresh.load_state_dict(state)
    assert torch.equal(fresh[0].weight, module[0].weight)


# -- import -------------------------------------------------------------------------------------


def test_load_writes_into_the_thinc_arrays_and_training_goes_on(tmp_path: Path):
    """W4, W5, W6: loading copies into the node's arrays in place (torch still views them); the
    layer predicts with the loaded weights, the optimizer steps on, averages still swap."""
    source = mlp(seed=1)
    save_file(source.state_dict(), str(tmp_path / "pre.safetensors"))
    model = averaged(with_torch(mlp(seed=0)))
    X = batch(8)
    model.initialize(X=X)
    node = model.layers[0]
    arrays = {name: node.get_param(name) for name in node.param_names}
    load_safetensors(model, tmp_path / "pre.safetensors")
    assert all(node.get_param(name) is array for name, array in arrays.items())
    with torch.no_grad():
        expected = source(torch.from_numpy(X)).numpy()
    numpy.testing.assert_array_equal(model.predict(X), expected)
    trained(model, steps=2)
    live = model.predict(X)
    assert not numpy.array_equal(live, expected)
    with use_averages(model):
        assert not numpy.array_equal(model.predict(X), live)


def test_load_before_initialize_into_a_ready_module(tmp_path: Path):
    """W6, W7: a layer around a ready module takes weights before initialize; init keeps them."""
    source = mlp(seed=3)
    model = chain(with_torch(mlp(seed=0)), Relu(2))
    load_safetensors(model, dict(source.state_dict()), name="0")
    model.initialize(X=batch())
    X = batch(5)
    with torch.no_grad():
        expected = source(torch.from_numpy(X)).numpy()
    numpy.testing.assert_array_equal(model.layers[0].predict(X), expected)


def test_load_restores_buffers_and_prefixed_modules(tmp_path: Path):
    """W6: a file of several modules loads by path prefix, BatchNorm statistics included."""
    model, first, second = two_module_model()
    trained(model)
    model.predict(batch())
    save_safetensors(model, tmp_path / "w.safetensors")
    before = snapshot(model)
    other, _, _ = two_module_model()
    with torch.no_grad():
        for module in torch_modules(other).values():
            for param in module.parameters():
                param.add_(1.0)
    load_safetensors(other, tmp_path / "w.safetensors")
    after = snapshot(other)
    torch_side = lambda found: {k: v for k, v in found.items() if k.startswith("0/")}  # noqa: E731
    assert_same(torch_side(before), torch_side(after))
    X = batch(width=5)  # the second torch layer, run through Thinc, predicts as the trained one
    numpy.testing.assert_array_equal(
        other.layers[0].layers[2].predict(X), model.layers[0].layers[2].predict(X)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("0/2.0.bias"), r"with_torch\(Sequential\).*missing \['0/2.0.bias'\]"),
        (lambda s: s.update({"0/2.0.extra": torch.zeros(1)}), r"unexpected \['0/2.0.extra'\]"),
        (lambda s: s.update({"0/9.weight": torch.zeros(1)}), r"unexpected keys \['0/9.weight'\]"),
        (
            lambda s: s.update({"0/2.0.weight": torch.zeros(3, 6)}),
            r"with_torch\(Sequential\): '0/2.0.weight' has shape \(3, 6\), the module's has "
            r"\(3, 5\)",
        ),
        (
            lambda s: s.update({"0/2.0.weight": torch.zeros(3, 5, dtype=torch.float64)}),
            r"'0/2.0.weight' is torch.float64, the module's is torch.float32",
        ),
        (
            lambda s: s.update({"0/2.1.running_var": torch.zeros(4)}),
            r"'0/2.1.running_var' has shape \(4,\)",
        ),
    ],
    ids=["missing", "extra-key", "unknown-module", "shape", "dtype", "buffer-shape"],
)
def test_a_bad_state_is_refused_and_nothing_changes(tmp_path: Path, change, message):
    """W6: a wrong key, shape or dtype is a ValueError naming the layer and the key with both
    shapes/dtypes, and nothing changed, also in the modules that were checked first."""
    model, _, _ = two_module_model()
    trained(model)
    donor, _, _ = two_module_model()
    with torch.no_grad():
        for module in torch_modules(donor).values():
            for param in module.parameters():
                param.add_(1.0)
    save_safetensors(donor, tmp_path / "w.safetensors")
    state = load_file(tmp_path / "w.safetensors")
    change(state)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        load_safetensors(model, state)
    assert_same(before, snapshot(model))


def test_not_strict_leaves_missing_keys_alone():
    """W6: strict=False loads the keys given, keeps the rest, still checks shapes."""
    module = mlp(seed=0)
    model = with_torch(module)
    bias = module[2].bias.detach().clone()
    load_safetensors(model, {"2.weight": torch.ones(3, 5), "other": torch.zeros(2)}, strict=False)
    assert torch.equal(module[2].weight, torch.ones(3, 5))
    assert torch.equal(module[2].bias, bias)
    with pytest.raises(ValueError, match="shape"):
        load_safetensors(model, {"2.weight": torch.ones(5, 3)}, strict=False)


def test_a_corrupt_file_is_a_value_error(tmp_path: Path):
    """W6: bytes that are not safetensors raise ValueError naming the file; nothing changes."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    model = with_torch(mlp())
    before = snapshot(model)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_safetensors(model, path)
    assert_same(before, snapshot(model))


def test_composed_layers_load_through_resizable_and_dropout():
    """R1, D1: modules under resizable and with_dropout are found and loaded like any other."""
    inner = torch.nn.Linear(6, 3)
    model = with_dropout(resizable(with_torch(inner)), 0.1)
    assert torch_modules(model) == {"0/0": inner}
    load_safetensors(model, {"weight": torch.ones(3, 6), "bias": torch.zeros(3)})
    assert torch.equal(inner.weight, torch.ones(3, 6))


# -- spaCy: train, export, plain PyTorch, back into a pipeline ---------------------------------

spacy = pytest.importorskip("spacy")

PLAIN = r"""
import json, sys
import safetensors.torch, torch
state = safetensors.torch.load_file(sys.argv[1])
spec = json.loads(sys.argv[2])
hidden = torch.nn.Sequential(
    torch.nn.Linear(spec["nI"], spec["width"]), torch.nn.ReLU(), torch.nn.Dropout(0.0),
    torch.nn.Linear(spec["width"], spec["width"]), torch.nn.ReLU(),
)
output = torch.nn.Linear(spec["width"], spec["nO"])
for module, prefix in ((hidden, spec["hidden"]), (output, spec["output"])):
    own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    module.load_state_dict(own)
X = torch.tensor(spec["X"], dtype=torch.float32)
with torch.no_grad():
    Y = output(hidden.eval()(X))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("thinc", "torchlayers", "spacy"))
print(json.dumps({"Y": Y.tolist(), "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A textcat on TorchTextCat.v1 trained a few steps, saved, and exported by the command."""
    from spacy.training import Example

    import torchlayers.spacy.architectures  # noqa: F401  registers TorchTextCat.v1

    fix_random_seed(0)
    nlp = spacy.blank("en")
    tok2vec = {
        "@architectures": "spacy.HashEmbedCNN.v2", "width": 16, "depth": 1, "embed_size": 300,
        "window_size": 1, "maxout_pieces": 2, "subword_features": False,
        "pretrained_vectors": None,
    }  # fmt: skip
    model = {"@architectures": "torchlayers.TorchTextCat.v1", "tok2vec": tok2vec,
             "exclusive_classes": True, "hidden_width": 8, "max_decay": 0.9}  # fmt: skip
    nlp.add_pipe("textcat", config={"model": model})
    data = [("rain and wind", "WEATHER"), ("a late goal", "SPORTS"), ("snow all day", "WEATHER"),
            ("the team won", "SPORTS")]  # fmt: skip
    train = [
        Example.from_dict(nlp.make_doc(t), {"cats": {lab: float(lab == g) for lab in
                                                     ("WEATHER", "SPORTS")}})
        for t, g in data
    ]  # fmt: skip
    nlp.initialize(lambda: train)
    optimizer = Adam(0.01)
    for _ in range(4):
        nlp.update(train, sgd=optimizer, drop=0.1)
    root = tmp_path_factory.mktemp("interop")
    nlp.to_disk(root / "pipeline")
    assert main([str(root / "pipeline"), "textcat", str(root / "textcat.safetensors")]) == 0
    return nlp, train, root


def test_pipeline_weights_run_in_plain_pytorch(pipeline):
    """W1, W6: weights exported from a spaCy textcat by the command load with
    load_state_dict in a process that never imports Thinc, torchlayers or spaCy, and give the
    pipeline's outputs to float32 rounding."""
    nlp, _, root = pipeline
    modules = torch_modules(nlp.get_pipe("textcat"))
    (hidden_path, hidden), (output_path, output) = modules.items()
    X = numpy.random.default_rng(0).normal(size=(5, hidden[0].in_features)).astype("f")
    with torch.no_grad():
        expected = output(hidden.eval()(torch.from_numpy(X))).numpy()
    spec = {"nI": hidden[0].in_features, "width": output.in_features, "nO": output.out_features,
            "hidden": hidden_path, "output": output_path, "X": X.tolist()}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", PLAIN, str(root / "textcat.safetensors"), json.dumps(spec)],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result["loaded"] == []
    numpy.testing.assert_allclose(numpy.array(result["Y"], "f"), expected, rtol=1e-5, atol=1e-6)


def test_pipeline_weights_load_back_into_a_pipeline(pipeline):
    """C2, W6: the exported file loads into the saved pipeline whose torch weights were reset
    (its other weights are the trained ones): doc.cats identical to the trained pipeline's."""
    nlp, _, root = pipeline
    texts = ["rain at the match", "the team won in the snow", "wind"]
    expected = [doc.cats for doc in nlp.pipe(texts)]
    fresh = spacy.load(root / "pipeline")
    textcat = fresh.get_pipe("textcat")
    torch.manual_seed(1)
    with torch.no_grad():
        for module in torch_modules(textcat).values():
            for sub in module.modules():
                if isinstance(sub, torch.nn.Linear):
                    sub.reset_parameters()
    assert [doc.cats for doc in fresh.pipe(texts)] != expected
    load_safetensors(textcat, root / "textcat.safetensors")
    assert [doc.cats for doc in fresh.pipe(texts)] == expected


def test_pretrained_weights_start_a_new_component(pipeline):
    """C1, C2, W4, W6: a new pipeline from the config with [initialize.after_init] =
    torchlayers.load_safetensors.v1 starts from the file's torch weights and trains on."""
    import torchlayers.spacy.callbacks  # noqa: F401  (the spacy_callbacks entry point, installed)

    nlp, train, root = pipeline
    config = nlp.config.copy()
    config["initialize"]["after_init"] = {
        "@callbacks": "torchlayers.load_safetensors.v1",
        "component": "textcat",
        "path": str(root / "textcat.safetensors"),
    }
    fresh = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    fresh.initialize(lambda: train)
    textcat = fresh.get_pipe("textcat")
    for path, module in torch_modules(nlp.get_pipe("textcat")).items():
        mine = torch_module(textcat, path).state_dict()
        assert all(torch.equal(mine[k], v) for k, v in module.state_dict().items()), path
    fresh.update(train, sgd=Adam(0.01))
    output = torch_module(textcat, path)
    assert not torch.equal(output.weight, module.state_dict()["weight"])  # trained on from it


def test_the_export_command_exports_one_layer_averaged(pipeline, capsys):
    """A2, W6: `export ... --name PATH --averaged` writes that layer's moving average with its
    own state_dict keys; `python -m torchlayers` dispatches `export` to this command."""
    from torchlayers.__main__ import COMMANDS

    assert COMMANDS["export"][0] == "torchlayers.spacy.export"
    nlp, _, root = pipeline
    out = root / "output_avg.safetensors"
    assert main([str(root / "pipeline"), "textcat", str(out), "--name", "0/4/0", "--averaged"]) == 0
    assert "wrote 2 tensors" in capsys.readouterr().out
    loaded = spacy.load(root / "pipeline").get_pipe("textcat")
    with use_averages(loaded.model):
        expected = {k: v.clone() for k, v in torch_module(loaded, "0/4/0").state_dict().items()}
    state = load_file(out)
    assert state.keys() == expected.keys() == {"weight", "bias"}
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert not torch.equal(state["weight"], torch_module(loaded, "0/4/0").weight)
