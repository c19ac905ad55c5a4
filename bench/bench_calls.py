"""P11 and P10: the fixed cost of a with_torch call, and predictions from two threads.

P11 runs `nn.Linear(4, 4)` at batch 1, where nearly all of a call is overhead, and prints the
median over rounds of the difference against plain torch doing the same work (array in, array
out; dX for a training call), each round timing both back to back; the ratio beside it is of
medians. Plain torch is written as a user writes it: `with torch.inference_mode():` for a
prediction, `Y.backward(dY)` for a training call; the budget is judged on that. Beside it, for
reference, the difference against torch taking the same shortcuts the layer takes (autograd
switched off by its C call rather than a context manager, the autograd engine called
directly): what the layer's own Python costs.
P10 predicts a 768->3072->768 MLP at batch 128 from one thread and from two, on one model,
and prints the throughput ratio (torch releases the GIL inside its kernels).
"""

import threading
import time
from typing import Callable, Dict

import numpy
import torch
from thinc.api import Model
from torch.autograd.variable import Variable

from torchlayers import with_torch

from ._timing import medians, report


def fixed_cost_cases() -> Dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    plain, wrapped = torch.nn.Linear(4, 4).eval(), torch.nn.Linear(4, 4)
    plain_train = torch.nn.Linear(4, 4)  # stays in train mode: torch flips nothing per call
    model: Model = with_torch(wrapped)
    X = numpy.ones((1, 4), dtype="float32")
    dY = numpy.ones((1, 4), dtype="float32")

    def torch_predict() -> object:
        with torch.inference_mode():
            return plain(torch.from_numpy(X)).numpy()

    def torch_train() -> object:
        X_leaf = torch.from_numpy(X).requires_grad_()
        Y = plain_train(X_leaf)
        Y.backward(torch.from_numpy(dY))
        assert X_leaf.grad is not None
        return Y.detach().numpy(), X_leaf.grad.numpy()

    def torch_predict_bare() -> object:
        set_grad_enabled(False)
        try:
            return plain(torch.from_numpy(X)).numpy()
        finally:
            set_grad_enabled(True)

    def torch_train_bare() -> object:
        X_leaf = torch.from_numpy(X).requires_grad_()
        Y = plain_train(X_leaf)
        ENGINE.run_backward((Y,), (torch.from_numpy(dY),), False, False, (), True, True)
        assert X_leaf.grad is not None
        return Y.detach().numpy(), X_leaf.grad.numpy()

    def ours_train() -> object:
        Y, backprop = model(X, is_train=True)
        return Y, backprop(dY)

    return {
        "torch predict": torch_predict,
        "bare torch predict": torch_predict_bare,
        "with_torch predict": lambda: model.predict(X),
        "torch train": torch_train,
        "bare torch train": torch_train_bare,
        "with_torch train": ours_train,
    }


set_grad_enabled = torch._C._set_grad_enabled
ENGINE = Variable._execution_engine


def threaded_ratio(calls: int = 12) -> float:
    """Throughput of two threads predicting one model over that of one thread."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(768, 3072), torch.nn.ReLU(), torch.nn.Linear(3072, 768)
    )
    model: Model = with_torch(module)
    X = numpy.random.default_rng(0).standard_normal((128, 768), dtype=numpy.float32)

    def run(threads: int) -> float:
        def work() -> None:
            for _ in range(calls):
                model.predict(X)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return threads * calls / (time.perf_counter() - start)

    run(1)  # warm up
    ratios = [run(2) / run(1) for _ in range(5)]
    return float(numpy.median(ratios))


def paired_extra(
    ours: Callable[[], object], theirs: Callable[[], object], rounds: int = 31, number: int = 1000
) -> float:
    """Median over rounds of (ours - theirs) seconds per call, each round timing both back to
    back (alternating which goes first): a fixed cost of microseconds drowns in the drift of a
    shared machine unless each round pairs the two."""
    for fn in (ours, theirs):
        for _ in range(number):
            fn()
    extras = []
    for round_ in range(rounds):
        pair = (ours, theirs) if round_ % 2 else (theirs, ours)
        spent = {}
        for fn in pair:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            spent[fn] = (time.perf_counter() - start) / number
        extras.append(spent[ours] - spent[theirs])
    return float(numpy.median(extras))


def main() -> bool:
    cases = fixed_cost_cases()
    times = medians(cases, rounds=15, number=2000)
    ok = True
    for what, budget in (("predict", 1.5), ("train", 5.0)):
        extra = paired_extra(cases[f"with_torch {what}"], cases[f"torch {what}"]) * 1e6
        bare = paired_extra(cases[f"with_torch {what}"], cases[f"bare torch {what}"]) * 1e6
        shown = round(extra, 1)
        ok &= shown <= budget
        print(
            f"P11 fixed cost per {'prediction' if what == 'predict' else 'forward+backprop'} "
            f"over torch (Linear(4, 4), batch 1): {extra:+.1f} us "
            f"({times[f'with_torch {what}'] / times[f'torch {what}']:.2f}x; budget <= +{budget} us)"
            f" {'ok' if shown <= budget else 'OVER'}; over torch taking the same shortcuts: "
            f"{bare:+.1f} us"
        )
    ok &= report(
        "P10 two threads predicting vs one (768->3072->768, batch 128)",
        threaded_ratio(),
        1.5,
        better="higher",
    )
    return ok
