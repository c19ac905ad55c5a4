"""An HFTransformer's weights back out as a `save_pretrained` directory (T3).

`AutoModel.from_pretrained` and `AutoTokenizer.from_pretrained` read what this writes: the
weights as `model.safetensors` (torch's own `save_pretrained`, on the module whose parameters
view the node's current Thinc arrays), the model's `config.json` and the tokenizer's files.
"""

from pathlib import Path
from typing import Union, cast

from thinc.api import Model

from .._shim import TorchShim
from ._hf_source import HFSource

NODE = "hf_transformer"


def save_pretrained(model: Model, directory: Union[str, Path]) -> Path:
    """Write the transformer of the first `hf_transformer` node under `model` (a spaCy
    component's model, the tok2vec itself) to `directory`; returns it. The weights are the
    ones the model runs now: inside `use_averages(model)` or `model.use_params(...)`, those."""
    node = next((n for n in model.walk() if n.name == NODE), None)
    if node is None:
        raise ValueError(f"{model.name}: no {NODE} node to export")
    transformer = node.layers[0]
    shim = cast(TorchShim, transformer.shims[0])
    module = shim.module
    if module is None:
        raise ValueError(f"{node.name}: nothing to export: call initialize() or load it first")
    shim.sync(transformer)  # torch views the node's current arrays (a swap, a load)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(out)  # type: ignore[operator]  # a transformers PreTrainedModel
    source: HFSource = node.attrs["hf_source"]
    for name, data in source.files.items():
        (out / Path(name).name).write_bytes(data)
    return out
