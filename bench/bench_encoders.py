"""P7: torchlayers.TorchBiLSTMEncoder.v1 and .v2 against Thinc's PyTorchLSTM(nO, nI, bi=True).

32 docs of 5-40 tokens, width 96 in and out. A training step is forward, backward from fixed
dYs, an Adam update; a prediction goes from the list of arrays to the list of arrays.
PyTorchLSTM does not pack: its backward direction reads the padding, so its outputs depend on
the batch (tests/test_encoder_comparison.py); ours do not. "torch, packed" is the same
bidirectional `nn.LSTM` on a `PackedSequence` built once outside the clock, with
`torch.optim.Adam`: what packing costs in plain torch. The v2 adds its context norm and
residual to the same LSTMs, and reads the states around each token (assembled in one autograd
node, `AroundStates`). For information, what the v2 module adds to a prediction, piece by piece,
as shares of the v1 module's prediction on the same padded batch (`v2_pieces`).
"""

from typing import Callable, Dict, List, Tuple, cast

import numpy
import torch
from thinc.api import Model, PyTorchLSTM
from thinc.types import Floats2d

from torchlayers.spacy._bilstm import BiLSTM, Flips, states_around, states_at
from torchlayers.spacy.encoders import build_torch_bilstm_encoder, build_torch_bilstm_encoder_v2
from torchlayers.with_padding import pad

from ._timing import medians, report
from .bench_with_torch import thinc_adam, thinc_step

WIDTH, N_DOCS, SHORTEST, LONGEST = 96, 32, 5, 40


def docs_and_grads() -> Tuple[List[numpy.ndarray], List[numpy.ndarray]]:
    """N_DOCS arrays of SHORTEST-LONGEST rows, and a gradient of the same shape for each."""
    rng = numpy.random.default_rng(0)
    lengths = rng.integers(SHORTEST, LONGEST + 1, size=N_DOCS)
    Xs = [rng.standard_normal((n, WIDTH), dtype=numpy.float32) for n in lengths]
    return Xs, [rng.standard_normal(x.shape, dtype=numpy.float32) for x in Xs]


def models(Xs: List[numpy.ndarray]) -> Dict[str, object]:
    torch.manual_seed(0)
    sample = cast(List[Floats2d], Xs[:2])
    ours = build_torch_bilstm_encoder(WIDTH)
    ours.initialize(X=sample)
    ours_v2 = build_torch_bilstm_encoder_v2(WIDTH)
    ours_v2.initialize(X=sample)
    anchor: Model = PyTorchLSTM(WIDTH, WIDTH, bi=True)  # typed Padded; with_padded takes lists
    anchor.initialize(X=sample)
    return {"ours": ours, "ours v2": ours_v2, "PyTorchLSTM": anchor}


def padded(arrays: List[numpy.ndarray]) -> torch.Tensor:
    """`(batch, max_len, width)`: each array's rows first, zeros after."""
    return torch.nn.utils.rnn.pad_sequence([torch.from_numpy(a) for a in arrays], batch_first=True)


def training_steps(Xs: List[numpy.ndarray], dYs: List[numpy.ndarray]) -> Dict[str, Callable]:
    made = models(Xs)
    lstm = torch.nn.LSTM(WIDTH, WIDTH // 2, bidirectional=True, batch_first=True)
    torch_adam = torch.optim.Adam(lstm.parameters(), lr=1e-3)
    lengths = torch.tensor([len(x) for x in Xs])
    X_pad, dY_pad = padded(Xs), padded(dYs)

    def torch_packed() -> object:
        X = X_pad.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            X, lengths, batch_first=True, enforce_sorted=False
        )
        Y, _ = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True)
        Y.backward(dY_pad)
        torch_adam.step()
        torch_adam.zero_grad(set_to_none=True)
        return X.grad

    return {
        "ours": thinc_step(made["ours"], Xs, dYs, thinc_adam()),
        "ours v2": thinc_step(made["ours v2"], Xs, dYs, thinc_adam()),
        "PyTorchLSTM": thinc_step(made["PyTorchLSTM"], Xs, dYs, thinc_adam()),
        "torch, packed": torch_packed,
        "padding": padding(made["ours"], Xs, dYs),
    }


def padding(model, Xs: List[numpy.ndarray], dYs: List[numpy.ndarray]) -> Callable[[], object]:
    """What with_padding adds to a step: pad X and dY, unpad Y and dX (the same sizes)."""
    lengths = [len(x) for x in Xs]
    X_rows, dY_rows = cast(List[Floats2d], Xs), cast(List[Floats2d], dYs)

    def run() -> object:
        X, _ = pad(model, X_rows, lengths)
        Y = [X[i, :n] for i, n in enumerate(lengths)]
        dY, _ = pad(model, dY_rows, lengths)
        return Y, [dY[i, :n] for i, n in enumerate(lengths)]

    return run


def predictions(Xs: List[numpy.ndarray]) -> Dict[str, Callable]:
    made = models(Xs)
    return {name: (lambda model=model: model.predict(Xs)) for name, model in made.items()}


def v2_pieces(Xs: List[numpy.ndarray]) -> Dict[str, Callable]:
    """The v1 and v2 modules' predictions on the padded batch, and the pieces where they differ:
    the v2's norm and residual, its `Flips` with the rows around each token against the v1's,
    and its assembly of those states against the v1's gather and `cat` of the directions."""
    lengths = torch.tensor([len(x) for x in Xs])
    X = padded(Xs)
    batch, max_len, _ = X.shape
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    torch.manual_seed(0)
    v1, v2 = BiLSTM(WIDTH, WIDTH), BiLSTM(WIDTH, WIDTH, residual=True)
    norm = cast(torch.nn.LayerNorm, v2.norm)
    flips = Flips(mask, inverse=False, around=True)
    ahead, back = torch.randn(max_len, batch, WIDTH // 2), torch.randn(max_len, batch, WIDTH // 2)
    context = states_around(ahead, back, flips)

    return {
        "v1": lambda: v1(X, mask),
        "v2": lambda: v2(X, mask),
        "norm": lambda: norm(context),
        "residual": lambda: context + X,
        "flips v1": lambda: Flips(mask, inverse=False),
        "flips v2": lambda: Flips(mask, inverse=False, around=True),
        "out v1": lambda: states_at(ahead, back, flips),
        "out v2": lambda: states_around(ahead, back, flips),
    }


def report_v2_pieces(Xs: List[numpy.ndarray]) -> None:
    with torch.no_grad():
        took = medians(v2_pieces(Xs), rounds=61, number=3)
    share = {name: seconds / took["v1"] for name, seconds in took.items()}
    print(
        f"   (v2 module's prediction: {share['v2']:.3f}x the v1's; of the v1's, the norm "
        f"{share['norm']:.3f}x, the residual {share['residual']:.3f}x, Flips "
        f"{share['flips v2'] - share['flips v1']:+.3f}x, the states' layout "
        f"{share['out v2'] - share['out v1']:+.3f}x)"
    )


def main() -> bool:
    Xs, dYs = docs_and_grads()
    label = f"{N_DOCS} docs of {SHORTEST}-{LONGEST} tokens, width {WIDTH}"
    # Short blocks, many rounds (as for P2): this VM's drift over longer blocks moved these
    # ratios by +-0.05 from run to run.
    step = medians(training_steps(Xs, dYs), rounds=61, number=2)
    ok = report(f"P7 step vs PyTorchLSTM ({label})", step["ours"] / step["PyTorchLSTM"], 1.00)
    v2 = step["ours v2"] / step["PyTorchLSTM"]
    ok &= report(f"P7 step vs PyTorchLSTM, the v2 ({label})", v2, 1.00)
    ok &= report("P7 padding + unpadding share of the step", step["padding"] / step["ours"], 0.10)
    print(
        f"   (vs torch on a ready PackedSequence: {step['ours'] / step['torch, packed']:.2f}x; "
        f"PyTorchLSTM vs that: {step['PyTorchLSTM'] / step['torch, packed']:.2f}x)"
    )
    pred = medians(predictions(Xs), rounds=61, number=3)
    ok &= report(f"P7 predict vs PyTorchLSTM ({label})", pred["ours"] / pred["PyTorchLSTM"], 1.00)
    v2 = pred["ours v2"] / pred["PyTorchLSTM"]
    ok &= report(f"P7 predict vs PyTorchLSTM, the v2 ({label})", v2, 1.00)
    report_v2_pieces(Xs)
    return ok


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
