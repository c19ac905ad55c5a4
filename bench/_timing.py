"""Interleaved timing: every candidate runs in turn, round after round, in one process.

Noise on a shared machine drifts over seconds; interleaving puts each round's candidates under
the same conditions, and the median over rounds drops the outliers. Only ratios are reported.
"""

import statistics
import time
from typing import Callable, Dict, Optional


def medians(
    cases: Dict[str, Callable[[], object]],
    rounds: int,
    number: int,
    sync: Optional[Callable[[], None]] = None,
) -> Dict[str, float]:
    """Median seconds per call of each case, from `rounds` interleaved blocks of `number` calls.

    sync: called before a block's clock starts and stops (torch.cuda.synchronize on a GPU, where
    calls return before the work is done).
    """
    wait = sync or (lambda: None)
    for fn in cases.values():  # warm up: allocator, kernels, lazily built state
        for _ in range(max(3, number // 4)):
            fn()
    samples: Dict[str, list] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            wait()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            wait()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(times) for name, times in samples.items()}


def report(label: str, ratio: float, budget: float, better: str = "lower") -> bool:
    """Print `label: 0.93x (budget <= 1.00x) ok` and say whether the budget holds."""
    shown = round(ratio, 2)  # budgets have two decimals: judge the figure that is printed
    ok = shown <= budget if better == "lower" else shown >= budget
    sign = "<=" if better == "lower" else ">="
    print(f"{label}: {ratio:.2f}x (budget {sign} {budget:.2f}x) {'ok' if ok else 'OVER'}")
    return ok
