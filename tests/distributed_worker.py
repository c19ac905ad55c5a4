"""One rank of the data-parallel tests: `python -m tests.distributed_worker MODE OUT`.

Reads RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT like torchrun's workers. MODE:
  train  5 Adam steps of `mixed_model` on this rank's batches; the params to OUT.RANK.npz;
         then the errors of three checks meant to fail, to OUT.RANK.txt: rank 1 with a wider
         model, with another config, and with a changed weight
  die    rank 1 exits at step 2 (rank 0 must fail within the timeout)
  hang   rank 1 sleeps at step 2 (rank 0 must fail within the timeout)
(One run covers several checks: each run costs two interpreter start-ups.)
"""

import datetime
import os
import sys
import time
from typing import List, Optional, Tuple

import numpy
import torch
import torch.distributed as dist
from thinc.api import Adam, Linear, Model, Relu, chain, fix_random_seed

from torchlayers import with_torch
from torchlayers.distributed import (
    broadcast_weights,
    check_same_setup,
    check_weights_match,
    data_parallel,
)

NI, NH, NO = 6, 8, 3
STEPS = 5
TIMEOUT_S = 3.0  # the process group's timeout in the fault modes


def mixed_model(seed: int, width: int = NH) -> Model:
    """Thinc's Relu and Linear around a with_torch block, initialized from `seed`."""
    fix_random_seed(seed)
    torch.manual_seed(seed)
    block = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh())
    model = chain(Relu(nO=width, nI=NI), with_torch(block), Linear(nO=NO, nI=width))
    model.initialize()
    return model


def batch(rank: int, step: int) -> Optional[Tuple[numpy.ndarray, numpy.ndarray]]:
    """Rank `rank`'s batch at `step`: 3 rows on rank 0, 5 on rank 1; none on rank 1 at step 3
    (its params get no gradient there: the sum must still step them like rank 0's)."""
    if rank == 1 and step == 3:
        return None
    rng = numpy.random.default_rng(100 * step + rank)
    n = 3 if rank == 0 else 5
    X = rng.uniform(-1, 1, (n, NI)).astype("float32")
    return X, rng.uniform(-1, 1, (n, NO)).astype("float32")


def concatenated(step: int, world: int) -> Optional[Tuple[numpy.ndarray, numpy.ndarray]]:
    """All ranks' batches at `step`, end to end: what one process trains on."""
    parts = [b for b in (batch(r, step) for r in range(world)) if b is not None]
    if not parts:
        return None
    return numpy.concatenate([X for X, _ in parts]), numpy.concatenate([T for _, T in parts])


def step(model: Model, data: Optional[Tuple[numpy.ndarray, numpy.ndarray]], opt: Adam) -> None:
    """One update with a summed squared-error loss (its gradient is Y - T, not divided by n)."""
    if data is not None:
        X, T = data
        Y, backprop = model(X, is_train=True)
        backprop(Y - T)
    model.finish_update(opt)


def params(model: Model) -> List[numpy.ndarray]:
    return [n.get_param(p).copy() for n in model.walk() for p in n.param_names if n.has_param(p)]


def main(mode: str, out: str) -> int:
    rank = int(os.environ["RANK"])
    timeout = datetime.timedelta(seconds=TIMEOUT_S if mode != "train" else 60)
    dist.init_process_group("gloo", timeout=timeout)
    torch.set_num_threads(1)
    try:
        model = data_parallel(mixed_model(seed=rank))
        check_same_setup(model, CONFIG)
        broadcast_weights(model)  # each rank built other initial weights: rank 0's win
        opt = Adam(0.01)
        for i in range(STEPS):
            if rank == 1 and i == 2 and mode == "die":
                os._exit(3)
            if rank == 1 and i == 2 and mode == "hang":
                time.sleep(60)
            step(model, batch(rank, i), opt)
        check_weights_match(model)
        numpy.savez(f"{out}.{rank}.npz", *params(model))
        with open(f"{out}.{rank}.txt", "w") as file:
            file.write("\n".join(refusals(model, rank)))
    finally:
        dist.destroy_process_group()
    return 0


CONFIG = "[training]\nseed = 0\n"


def refusals(model: Model, rank: int) -> List[str]:
    """The errors of three checks that must fail on every rank: rank 1 differs each time."""
    found = []
    wide = mixed_model(seed=0, width=NH + 1 if rank == 1 else NH)
    checks = [
        lambda: check_same_setup(wide, CONFIG),
        lambda: check_same_setup(model, CONFIG.replace("0", str(rank))),
        lambda: check_weights_match(model),
    ]
    for i, check in enumerate(checks):
        if i == 2 and rank == 1:
            model.layers[0].layers[2].get_param("b")[0] += 1e-3
        try:
            check()
            found.append("no error")
        except (ValueError, RuntimeError) as err:
            found.append(f"{type(err).__name__}: {err}")
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
