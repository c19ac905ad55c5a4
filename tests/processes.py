"""Start N ranks of a command on 127.0.0.1 and wait for them, bounded in time (M1-M3 tests)."""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


@dataclass
class Rank:
    rank: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # from the start of all ranks to this one's exit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(
    argv_of_rank: Sequence[Sequence[str]],
    timeout: float,
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None,
    grace: Optional[float] = None,
) -> List[Rank]:
    """Run `python argv...` once per rank with torchrun's variables; kill all after `timeout`.

    A rank still running at the timeout is killed and reported with returncode -999, so the
    caller's assert fails (a hung rank fails the test instead of hanging it).
    grace: once rank 0 has exited, kill the others after this many seconds (a rank that the
    test makes hang on purpose).
    """
    world = len(argv_of_rank)
    base = {
        **os.environ,
        **(env or {}),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r, argv in enumerate(argv_of_rank)
    ]
    results: List[Rank] = []
    try:
        for r, proc in enumerate(procs):
            left = max(0.1, timeout - (time.monotonic() - start))
            if r > 0 and grace is not None:
                left = min(left, grace)
            try:
                out, err = proc.communicate(timeout=left)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                code, err = -999, err + f"\n[test] rank {r} killed after {timeout} s"
            results.append(Rank(r, code, out, err, time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results
