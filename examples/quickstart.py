"""Quickstart: a torch MLP inside a Thinc model, trained with Thinc's optimizer.

The data set is made here: three interleaved spirals in the plane (600 points), a classic
problem that a linear model cannot solve. The model chains a torch encoder (with dropout whose
rate the training loop sets) into Thinc's Softmax, and keeps an average of the weights for
evaluation. Runs on the CPU in a few seconds.
"""

import numpy
import torch
from thinc.api import Adam, Softmax, chain, fix_random_seed, set_dropout_rate

from torchlayers import averaged, use_averages, with_dropout, with_torch

N_CLASSES, N_PER_CLASS = 3, 200


def spirals(seed: int = 0):
    """Three noisy spirals: X is (600, 2) float32, Y one-hot (600, 3)."""
    rng = numpy.random.default_rng(seed)
    radius = numpy.tile(numpy.linspace(0.05, 1.0, N_PER_CLASS), N_CLASSES)
    labels = numpy.repeat(numpy.arange(N_CLASSES), N_PER_CLASS)
    angle = labels * 2 * numpy.pi / N_CLASSES + radius * 4 + rng.normal(0, 0.15, radius.shape)
    X = numpy.stack([radius * numpy.sin(angle), radius * numpy.cos(angle)], axis=1)
    return X.astype("float32"), numpy.eye(N_CLASSES, dtype="float32")[labels]


def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU()
    )


def accuracy(model, X, Y) -> float:
    return float((model.predict(X).argmax(axis=1) == Y.argmax(axis=1)).mean())


def main(epochs: int = 12, batch_size: int = 32) -> float:
    fix_random_seed(0)
    X, Y = spirals()
    order = numpy.random.default_rng(1).permutation(len(X))
    train, dev = order[:480], order[480:]
    model = averaged(chain(with_dropout(with_torch(encoder()), 0.1), Softmax()))
    model.initialize(X=X[:5], Y=Y[:5])
    optimizer = Adam(0.01)
    for epoch in range(epochs):
        set_dropout_rate(model, 0.1 if epoch < epochs // 2 else 0.0)  # the loop decides
        for start in range(0, len(train), batch_size):
            rows = train[start : start + batch_size]
            probs, backprop = model(X[rows], is_train=True)
            backprop((probs - Y[rows]) / len(rows))
            model.finish_update(optimizer)
        live = accuracy(model, X[dev], Y[dev])
        with use_averages(model):
            smoothed = accuracy(model, X[dev], Y[dev])
        print(f"epoch {epoch + 1:2d}: dev accuracy {live:.3f} (averaged weights {smoothed:.3f})")
    return live


if __name__ == "__main__":
    main()
