"""P9: training words/s on 2 processes (one thread each) against 1 process; all-reduce traffic.

One launch of 2 gloo ranks on 127.0.0.1 measures both, interleaved round by round: in the
"1 process" rounds rank 0 trains a plain copy of the model while rank 1 waits in a barrier
(a blocking socket read: no CPU); in the "2 processes" rounds both train `data_parallel`
copies on their own batches. Words/s = words trained per step / seconds per step, so the
ratio of 2 to 1 process is 2 x (median step time alone / median step time together).
The model is a textcat-like one where compute dominates: hashed embeddings, mean over each
doc, a wide torch MLP (64 -> 1024 -> 1024 -> 8), Thinc Adam.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, cast

ROUNDS, STEPS = 7, 3
DOCS, MIN_LEN, MAX_LEN = 1024, 10, 30
WIDTH, HIDDEN, CLASSES = 64, 1024, 8


def main() -> bool:
    from ._timing import report

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.bench_distributed", "--rank"],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        out = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        print("P9: the 2-process run failed")
        return False
    found = json.loads(out[0].strip().splitlines()[-1])
    ratio = 2 * found["alone"] / found["together"]
    ok = report("P9 words/s, 2 processes vs 1 (one thread each)", ratio, 1.70, better="higher")
    grad, reduced = found["grad_bytes"], found["bucket_bytes"]
    print(
        f"P9 all-reduce per step: {reduced} bytes in buckets vs {grad} bytes of gradients "
        f"(budget: equal) {'ok' if reduced == grad else 'OVER'}; "
        f"+{found['mask_bytes']} bytes of presence mask; {found['calls']} collective calls"
    )
    return ok and reduced == grad


def rank_main() -> int:
    import datetime

    import numpy
    import torch
    import torch.distributed as dist
    from thinc.api import Adam, HashEmbed, Model, chain, list2ragged, reduce_mean, with_array
    from thinc.optimizers import Optimizer

    from torchlayers import with_torch
    from torchlayers.distributed import SumShim, broadcast_weights, data_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank = dist.get_rank()

    def build() -> Model:
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(
            torch.nn.Linear(WIDTH, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, CLASSES),
        )  # fmt: skip
        model: Model = chain(
            list2ragged(), with_array(HashEmbed(WIDTH, 2000)), reduce_mean(), with_torch(mlp)
        )
        model.initialize()
        return model

    rng = numpy.random.default_rng(rank)
    docs = [rng.integers(0, 10**6, rng.integers(MIN_LEN, MAX_LEN), dtype="uint64")
            for _ in range(DOCS)]  # fmt: skip
    target = numpy.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, DOCS)]
    alone, together = build(), data_parallel(build())
    broadcast_weights(together)
    opt_alone, opt_together = Adam(1e-3), Adam(1e-3)

    def steps(model: Model, opt: Optimizer) -> float:
        start = time.perf_counter()
        for _ in range(STEPS):
            Y, backprop = model(docs, is_train=True)
            backprop(Y - target)
            model.finish_update(opt)
        return (time.perf_counter() - start) / STEPS

    steps(alone, opt_alone)  # warm up
    dist.barrier()
    steps(together, opt_together)
    times: Dict[str, List[float]] = {"alone": [], "together": []}
    for _ in range(ROUNDS):
        if rank == 0:
            times["alone"].append(steps(alone, opt_alone))
        dist.barrier()
        times["together"].append(steps(together, opt_together))
        dist.barrier()
    stats = cast(SumShim, together.shims[0]).last
    result: Dict[str, object] = {k: statistics.median(v) for k, v in times.items() if v}
    result.update(stats.__dict__)
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(rank_main() if "--rank" in sys.argv else (0 if main() else 1))
