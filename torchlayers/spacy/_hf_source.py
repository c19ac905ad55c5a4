"""HFSource: what an HFTransformer reads from `name` and carries in its saved bytes (T3).

At `initialize` it reads the model's config, its fast tokenizer and its pretrained weights from
`name` (a hub id or a local directory, through `transformers`' Auto classes). The config (JSON)
and the tokenizer's own files (as `save_pretrained` writes them) are the node's attr
`hf_source`, saved with the node (msgpack, no pickle); the weights are the with_torch node's
params. A loaded pipeline builds the architecture from the saved config and the tokenizer from
the saved files: `name` need not exist any more, and nothing reaches for a network.
"""

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import srsly
import torch
from thinc.api import Model
from thinc.model import deserialize_attr, serialize_attr

from .._shim import TorchShim
from ._hf_pieces import Specials


class HFSource:
    """The pretrained model's name, config and tokenizer files; the with_torch node's factory."""

    __name__ = "AutoModel"  # with_torch names its node after its factory: with_torch(AutoModel)

    def __init__(self, name: str, config: str = "", files: Optional[Dict[str, bytes]] = None):
        self.name = name
        self.config = config  # the model's config.json; "" until read
        self.files: Dict[str, bytes] = dict(files or {})  # the tokenizer's files, by name
        self._tokenizer: Any = None  # built from `files` on first use
        self._pretrained: Optional[torch.nn.Module] = None  # read at initialize, built once
        self._specials: Optional[Specials] = None
        self._config: Any = None  # the config object, built from `config` on first use

    def read(self, layer: str) -> None:
        """Read config, tokenizer and weights from `name` (initialize)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = load(layer, self.name, "config", AutoConfig.from_pretrained)
        tokenizer = load(layer, self.name, "tokenizer", AutoTokenizer.from_pretrained)
        check_fast(layer, self.name, tokenizer)
        if byte_level_without_prefix_space(tokenizer):
            # RoBERTa, GPT-2: each word of a split input needs the space it had in
            # pretraining; the saved files keep the setting
            tokenizer = load(layer, self.name, "tokenizer", AutoTokenizer.from_pretrained,
                             add_prefix_space=True)  # fmt: skip
        module = load(layer, self.name, "weights", AutoModel.from_pretrained, dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        self.config, self.files = config.to_json_string(), files
        self._tokenizer, self._pretrained, self._specials = tokenizer, module, None
        self._config = config

    def __call__(self, nI: Optional[int], nO: Optional[int]) -> torch.nn.Module:
        """The module: the pretrained one just read, or one built from the saved config (a
        load: Thinc then writes the saved weights into it)."""
        if self._pretrained is not None:
            module, self._pretrained = self._pretrained, None
            return module
        if not self.config:
            raise ValueError(f"HFTransformer: {self.name!r} was never read: initialize first")
        from transformers import AutoModel

        with tempfile.TemporaryDirectory() as tmp:
            config = self.saved_config(tmp)
            return AutoModel.from_config(config, dtype=torch.float32, trust_remote_code=False)

    def saved_config(self, directory: str) -> Any:
        from transformers import AutoConfig

        (Path(directory) / "config.json").write_text(self.config)
        return AutoConfig.from_pretrained(directory, trust_remote_code=False)

    def tokenizer(self, layer: str) -> Any:
        """The fast tokenizer, built from the saved files on first use."""
        if self._tokenizer is None:
            if not self.files:
                raise ValueError(f"{layer}: call initialize() first: no tokenizer was read")
            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory() as tmp:
                for name, data in self.files.items():
                    (Path(tmp) / Path(name).name).write_bytes(data)
                if self.config:
                    self.saved_config(tmp)
                self._tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
            check_fast(layer, self.name, self._tokenizer)
        return self._tokenizer

    def specials(self, layer: str) -> Specials:
        """The special pieces the tokenizer puts before and after a sequence."""
        if self._specials is None:
            tokenizer = self.tokenizer(layer)
            pad = 0 if tokenizer.pad_token_id is None else tokenizer.pad_token_id
            for probe in ("a", "the", "x", tokenizer.unk_token or "a"):
                encoding = tokenizer([probe], is_split_into_words=True)
                ids, owners = encoding["input_ids"], encoding.word_ids()
                inside = [i for i, owner in enumerate(owners) if owner is not None]
                if inside:
                    self._specials = Specials(ids[: inside[0]], ids[inside[-1] + 1 :], pad)
                    break
            else:
                raise ValueError(
                    f"{layer}: name={self.name!r}: the tokenizer gives no pieces for 'a', "
                    "'the', 'x' or its unknown token: cannot tell its special pieces"
                )
        return self._specials

    def setting(self, key: str) -> Any:
        """A config value by its common name (`hidden_size` is DistilBERT's `dim`, BART's
        `d_model`: transformers' attribute maps answer), None where the config has none."""
        if not self.config:
            return None
        if self._config is None:
            with tempfile.TemporaryDirectory() as tmp:
                self._config = self.saved_config(tmp)
        return getattr(self._config, key, None)

    def __deepcopy__(self, memo: Dict) -> "HFSource":
        # A copy builds its own tokenizer from the files: the two never share state.
        return HFSource(self.name, self.config, self.files)


def load(layer: str, name: str, what: str, reader: Any, **kwargs: Any) -> Any:
    """Call a `from_pretrained`; any failure becomes a ValueError that names the setting."""
    try:
        return reader(name, trust_remote_code=False, **kwargs)
    except Exception as err:
        raise ValueError(
            f"{layer}: name={name!r}: could not read the {what} (a Hugging Face hub id, or a "
            f"local directory as save_pretrained writes it): {type(err).__name__}: {err}"
        ) from err


def check_fast(layer: str, name: str, tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{layer}: name={name!r}: the tokenizer {type(tokenizer).__name__} is not a fast "
            "one; HFTransformer maps pieces to tokens with a fast tokenizer's word_ids() "
            "(save the model with a tokenizer.json)"
        )


def byte_level_without_prefix_space(tokenizer: Any) -> bool:
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    return type(pre).__name__ == "ByteLevel" and not getattr(pre, "add_prefix_space", True)


def read_width(name: str) -> Optional[int]:
    """The hidden size from `name`'s config, if it is at hand without a network; else None
    (a saved pipeline whose `name` is gone: its dims come from the data)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
        return int(config.hidden_size)
    except Exception:
        return None


@serialize_attr.register(HFSource)
def serialize_source(_: HFSource, value: HFSource, name: str, model: Model) -> bytes:
    return srsly.msgpack_dumps({"name": value.name, "config": value.config, "files": value.files})


@deserialize_attr.register(HFSource)
def deserialize_source(_: HFSource, data: bytes, name: str, model: Model) -> HFSource:
    msg = srsly.msgpack_loads(data)
    if not (
        isinstance(msg, dict)
        and isinstance(msg.get("name"), str)
        and isinstance(msg.get("config"), str)
        and isinstance(msg.get("files"), dict)
        and all(isinstance(k, str) and isinstance(v, bytes) for k, v in msg["files"].items())
    ):
        raise ValueError(f"{model.name}: attr {name!r} is not a saved HFSource")
    source = HFSource(msg["name"], msg["config"], msg["files"])
    # Thinc loads this node's attrs before the with_torch node's shim: an unbuilt module is
    # then built from the saved config, not from `name`.
    for shim in model.layers[0].shims if model.layers else []:
        if isinstance(shim, TorchShim) and shim.module is None:
            shim.factory = source
    return source
