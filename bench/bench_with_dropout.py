"""with_dropout against chain(layer, thinc Dropout): forward+backward at rate 0.1 and 0.

Budget: no slower (<= 1.00x). At rate 0.1 with_dropout saves Thinc's float64 pass in making the
mask and chain's bookkeeping; at rate 0 both run just the layer, so expect about 1.00x.
"""

from typing import Callable, Dict

import numpy
import torch
from thinc.api import Dropout, Linear, Model, chain

from torchlayers.with_dropout import with_dropout
from torchlayers.with_torch import with_torch

from ._timing import medians, report

BATCH, NI, NH, NO = 64, 300, 128, 10
RATES = [0.1, 0.0]


def layers() -> Dict[str, Callable[[], Model]]:
    """Factories for identical fresh layers: one for each candidate, so neither shares state."""

    def linear() -> Model:
        return Linear(NH, NI).initialize()

    def mlp() -> Model:
        torch.manual_seed(0)
        return with_torch(
            torch.nn.Sequential(torch.nn.Linear(NI, NH), torch.nn.ReLU(), torch.nn.Linear(NH, NO))
        )

    return {f"Linear {NI}->{NH}": linear, f"with_torch MLP {NI}->{NH}->{NO}": mlp}


def steps(make: Callable[[], Model], rate: float) -> Dict[str, Callable[[], object]]:
    """One forward+backward each, from the same X and dY; no optimizer step."""
    ours = with_dropout(make(), rate)
    theirs: Model = chain(make(), Dropout(rate))
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((BATCH, NI), dtype=numpy.float32)
    dY = rng.standard_normal(ours.predict(X).shape, dtype=numpy.float32)

    def step(model: Model) -> Callable[[], object]:
        def run() -> object:
            _, backprop = model(X, is_train=True)
            return backprop(dY)

        return run

    return {"with_dropout": step(ours), "chain+Dropout": step(theirs)}


def main() -> bool:
    torch.set_num_threads(1)
    ok = True
    for label, make in layers().items():
        for rate in RATES:
            # many short rounds: the two differ by ~1%, less than a noise burst on a shared CPU
            times = medians(steps(make, rate), rounds=60, number=10)
            ratio = times["with_dropout"] / times["chain+Dropout"]
            ok &= report(f"with_dropout vs chain+Dropout, rate {rate} ({label})", ratio, 1.00)
    return ok


if __name__ == "__main__":
    main()
