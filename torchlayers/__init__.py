"""torchlayers: PyTorch modules as first-class Thinc layers.

Four combinators, each returning an ordinary `thinc.api.Model`: `with_torch`, `with_dropout`,
`resizable` and `averaged`; with `resize_output`, `resize_input` and `use_averages` to act on
them inside a composed model; `torch_module(s)`, `save_safetensors` and `load_safetensors` to
reach the torch modules and move their weights to plain PyTorch and back.
"""

from .averaged import averaged, use_averages
from .interop import load_safetensors, save_safetensors, torch_module, torch_modules
from .resizable import resizable, resize_input, resize_output
from .with_dropout import with_dropout
from .with_padding import with_padding
from .with_torch import with_torch

__version__ = "0.1.0"

__all__ = [
    "with_torch",
    "with_dropout",
    "resizable",
    "averaged",
    "with_padding",
    "resize_output",
    "resize_input",
    "use_averages",
    "torch_module",
    "torch_modules",
    "save_safetensors",
    "load_safetensors",
    "__version__",
]
