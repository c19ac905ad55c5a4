"""The demo's own registered function: the torch module that the config puts under `with_torch`.

spaCy and Thinc configs build a torch module from any function you register; here the hidden
layer of `torchlayers.TorchTextCat.v1` comes from `spacy_demo.TorchMLP.v1` (config.cfg):

    [components.textcat.model.hidden]
    @layers = "torchlayers.with_torch.v1"
    torch_dropout = true

    [components.textcat.model.hidden.module]
    @architectures = "spacy_demo.TorchMLP.v1"
    nI = 64

Import this module before building or loading the pipeline (`spacy train --code functions.py`,
or `import functions` before `spacy.load`).
"""

from typing import List

import torch
from spacy.util import registry

import torchlayers.spacy.architectures  # noqa: F401  registers torchlayers.TorchTextCat.v1

# The rates the module's own Dropout used in training forward passes: the demo reports them to
# show that `--training.dropout` (nlp.update(drop=...)) reaches inside the torch module.
DROPOUT_SEEN: List[float] = []


@registry.architectures("spacy_demo.TorchMLP.v1")
def torch_mlp(nI: int, width: int = 64, depth: int = 2) -> torch.nn.Module:
    """Linear -> ReLU -> Dropout, `depth` times: a plain torch module, nothing Thinc about it."""
    layers: List[torch.nn.Module] = []
    for i in range(depth):
        layers += [torch.nn.Linear(nI if i == 0 else width, width), torch.nn.ReLU()]
        layers.append(torch.nn.Dropout(0.0))  # the rate comes from the caller in training
    module = torch.nn.Sequential(*layers)
    dropout = layers[2]
    dropout.register_forward_hook(record_rate)
    return module


def record_rate(module: torch.nn.Module, inputs: object, output: object) -> None:
    if module.training:
        DROPOUT_SEEN.append(float(module.p))  # type: ignore[arg-type]
