"""R2/R7 cost: a resize costs what the resized layer holds, whatever else the model holds.

Each case grows a trained 768->10 output layer by one unit and shrinks it back (params, grads
and Adam state move), once with nothing else in the model and once behind a frozen-size
768->3072->768 encoder (2.4M parameters, also trained, so the optimizer holds its state too):
as its own with_torch node, and inside the same torch module as the head. Budget: <= 1.5x.
"""

from typing import Callable, Dict

import numpy
import torch
from thinc.api import Adam, Model, chain

from torchlayers.resizable import resizable, resize_output
from torchlayers.with_torch import with_torch

from ._timing import medians, report

WIDTH, HIDDEN, CLASSES = 768, 3072, 10


def encoder() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(WIDTH, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, WIDTH)
    )


def trained(model: Model) -> Model:
    """One Adam step, so params have gradients and the optimizer has state to move."""
    X = numpy.random.default_rng(0).standard_normal((4, WIDTH), dtype=numpy.float32)
    Y, backprop = model(X, is_train=True)
    backprop(numpy.ones_like(Y))
    model.finish_update(Adam(1e-3))
    Y, backprop = model(X, is_train=True)
    backprop(numpy.ones_like(Y))  # a pending gradient, resized with the params
    return model


def grow_and_shrink(model: Model) -> Callable[[], object]:
    return lambda: resize_output(resize_output(model, CLASSES + 1), CLASSES)


def cases() -> Dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    head_only: Model = resizable(with_torch(torch.nn.Linear(WIDTH, CLASSES)))
    behind_node: Model = chain(
        with_torch(encoder()), resizable(with_torch(torch.nn.Linear(WIDTH, CLASSES)))
    )
    same_module: Model = resizable(
        with_torch(torch.nn.Sequential(encoder(), torch.nn.Linear(WIDTH, CLASSES)))
    )
    return {
        "head only": grow_and_shrink(trained(head_only)),
        "behind encoder node": grow_and_shrink(trained(behind_node)),
        "in encoder module": grow_and_shrink(trained(same_module)),
    }


def main() -> bool:
    times = medians(cases(), rounds=15, number=50)
    ok = report(
        "R2 resize behind a 2.4M-param encoder node vs head only",
        times["behind encoder node"] / times["head only"],
        1.5,
    )
    ok &= report(
        "R2 resize inside a 2.4M-param torch module vs head only",
        times["in encoder module"] / times["head only"],
        1.5,
    )
    return ok


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
