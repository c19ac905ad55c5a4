"""Validators shared by the combinators: each names the layer and what it expected."""

import numbers
from typing import Any


def check_rate(layer: str, rate: Any) -> None:
    """A dropout rate: a real number in [0, 1) (the drop rate, not the keep rate)."""
    # Checked on every forward pass: a plain float skips the (slower) abstract-class test.
    is_number = type(rate) is float or (
        not isinstance(rate, bool) and isinstance(rate, numbers.Real)
    )
    if not is_number or not 0 <= float(rate) < 1:
        raise ValueError(f"{layer}: dropout rate must be a number in [0, 1), got {rate!r}")


def check_size(layer: str, what: str, size: Any) -> None:
    """A new number of units: an int of at least 1."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or int(size) < 1:
        raise ValueError(f"{layer}: {what} must be an int >= 1, got {size!r}")


def check_decay(layer: str, max_decay: Any) -> None:
    """An EMA's max_decay: a real number in [0, 1]."""
    is_number = not isinstance(max_decay, bool) and isinstance(max_decay, numbers.Real)
    if not is_number or not 0 <= float(max_decay) <= 1:
        raise ValueError(f"{layer}: max_decay must be a number in [0, 1], got {max_decay!r}")
