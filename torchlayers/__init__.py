"""torchlayers: PyTorch modules as first-class Thinc layers."""

from .with_torch import with_torch

__version__ = "0.1.0"

__all__ = ["with_torch", "__version__"]
