"""`torchlayers.load_safetensors.v1`: pretrained torch weights into a component at initialize.

For `[initialize.after_init]` in a training config, so `spacy train` starts a component's
torch layers from a safetensors file (a plain torch `state_dict`, or one that
`python -m torchlayers export` wrote):

    [initialize.after_init]
    @callbacks = "torchlayers.load_safetensors.v1"
    component = "textcat"
    path = "pretrained.safetensors"

`after_init` runs once `nlp.initialize()` has built the layers (factories included), before the
first update.
"""

from typing import Any, Callable, Optional

from ..interop import load_safetensors
from ._registry import register


def make_loader(
    component: str, path: str, name: Optional[str] = None, strict: bool = True
) -> Callable[[Any], Any]:
    """Return an `after_init` callback that loads `path` into a component's torch layers.

    Registered as `torchlayers.load_safetensors.v1` (spaCy `callbacks`).

    Args:
        component: the component's name in the pipeline, e.g. `"textcat"`.
        path: the safetensors file.
        name: load only into this `with_torch` layer (a path such as `"0/3/0"` or a node
            name); default: every torch layer of the component, as `load_safetensors` does.
        strict: as for `torchlayers.interop.load_safetensors`.

    Returns:
        `nlp -> nlp`, which calls `load_safetensors(nlp.get_pipe(component), path, ...)`.

    Raises:
        ValueError: (when called) as `load_safetensors`: the file's keys, shapes or dtypes do
            not match the component's torch modules; nothing is loaded then.
    """

    def load(nlp: Any) -> Any:
        load_safetensors(nlp.get_pipe(component), path, name=name, strict=strict)
        return nlp

    return load


register(
    "callbacks",
    {
        "torchlayers.load_safetensors.v1": make_loader,
    },
)
