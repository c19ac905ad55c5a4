"""Data-parallel training over torch.distributed (M1, M3): 2 gloo ranks on 127.0.0.1."""

import numpy
import pytest
import torch.distributed as dist
from thinc.api import Adam

from tests.distributed_worker import STEPS, TIMEOUT_S, concatenated, mixed_model, params, step
from tests.processes import run_ranks
from torchlayers.distributed import (
    all_ranks_agree,
    broadcast_weights,
    check_same_setup,
    check_weights_match,
    data_parallel,
    sum_gradients,
)

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="needs gloo")
WORKER = ["-m", "tests.distributed_worker"]


def ranks(mode: str, out: str, timeout: float = 50, grace=None):
    return run_ranks([[*WORKER, mode, out]] * 2, timeout=timeout, grace=grace)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-rank run of `train` mode: its params and its refusal messages, per rank."""
    out = str(tmp_path_factory.mktemp("distributed") / "w")
    results = ranks("train", out)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr + results[1].stderr
    return [
        (numpy.load(f"{out}.{r}.npz"), open(f"{out}.{r}.txt").read().split("\n")) for r in (0, 1)
    ]


def test_two_ranks_take_the_concatenated_batch_step(trained):
    """M1: 2 ranks with different batches (one rank without any at a step) take the steps one
    process takes on both batches concatenated: Thinc's Relu/Linear and with_torch, Adam."""
    single = data_parallel(mixed_model(seed=0))  # no process group here: the sum does nothing
    opt = Adam(0.01)
    for i in range(STEPS):
        step(single, concatenated(i, world=2), opt)
    expected = params(single)
    for got, _ in trained:
        assert len(got.files) == len(expected)
        for i, want in enumerate(expected):
            numpy.testing.assert_allclose(got[f"arr_{i}"], want, rtol=0, atol=1e-6)
    initial = params(mixed_model(seed=0))
    assert any(not numpy.allclose(a, b) for a, b in zip(initial, expected))  # it trained


def test_mismatched_model_or_config_is_refused(trained):
    """M3: ranks whose parameter shapes or config differ are refused, naming the rank, on
    every rank."""
    for _, (model, config, _) in trained:
        assert "model (parameter names/shapes) of rank(s) [1] differs from rank 0's" in model
        assert "the config of rank(s) [1] differs from rank 0's" in config


def test_drifted_weights_are_reported(trained):
    """M1: check_weights_match fails on every rank, naming the rank and a parameter."""
    for _, (_, _, drift) in trained:
        assert "RuntimeError: data-parallel weights drifted: rank(s) [1] hold" in drift
        assert "linear.b" in drift


def test_dead_rank_stops_the_other_within_the_timeout(tmp_path):
    """M3: a rank that exits mid-training makes the other raise a clear error, not hang."""
    results = ranks("die", str(tmp_path / "w"))
    assert results[1].returncode == 3
    assert results[0].returncode not in (0, -999), results[0].stderr
    assert "rank 0 of 2 could not" in results[0].stderr


def test_hung_rank_stops_the_other_within_the_timeout(tmp_path):
    """M3: a rank that hangs makes the other raise within the group's timeout."""
    results = ranks("hang", str(tmp_path / "w"), grace=1)
    assert results[0].returncode not in (0, -999), results[0].stderr
    assert "did not answer within the process group's timeout" in results[0].stderr
    assert results[0].seconds < TIMEOUT_S + 30  # start-up (imports) + the timeout, not 60 s


def test_without_a_process_group_nothing_is_summed():
    """M1: with no process group a data_parallel model trains exactly as its layer alone, and
    the helpers do nothing (one process: nothing to sum or compare)."""
    assert not dist.is_initialized()
    wrapped, bare = data_parallel(mixed_model(seed=0)), mixed_model(seed=0)
    opt_wrapped, opt_bare = Adam(0.01), Adam(0.01)
    for i in range(2):
        step(wrapped, concatenated(i, world=2), opt_wrapped)
        step(bare, concatenated(i, world=2), opt_bare)
    for a, b in zip(params(wrapped), params(bare)):
        numpy.testing.assert_array_equal(a, b)
    assert sum_gradients(wrapped).calls == 0
    assert broadcast_weights(wrapped) is None and check_weights_match(wrapped) is None
    assert check_same_setup(wrapped, "any") is None and all_ranks_agree(False) is False


def test_data_parallel_saves_its_layer_and_copies():
    """M1, W6, W9: a data_parallel model round-trips through bytes into a fresh one and
    copies; bad bucket sizes and foreign shim bytes are refused."""
    model = data_parallel(mixed_model(seed=0), bucket_mb=1.0)
    loaded = data_parallel(mixed_model(seed=1), bucket_mb=1.0).from_bytes(model.to_bytes())
    for a, b in zip(params(loaded), params(model)):
        numpy.testing.assert_array_equal(a, b)
    copy = model.copy()
    step(copy, concatenated(0, world=2), Adam(0.01))
    assert copy.attrs["bucket_mb"] == 1.0
    assert any(not numpy.array_equal(a, b) for a, b in zip(params(copy), params(model)))
    with pytest.raises(ValueError, match="bucket_mb > 0"):
        data_parallel(mixed_model(seed=0), bucket_mb=0)
    with pytest.raises(ValueError, match="expected the header"):
        model.shims[0].from_bytes(b"not ours")
