"""`python -m torchlayers export`: a saved pipeline component's torch weights as safetensors,
or (`--transformer`) its pretrained transformer as a `save_pretrained` directory."""

import argparse
from pathlib import Path
from typing import Any, List, cast

from .._torch_nodes import built_module, chosen_nodes, prefixed
from ..interop import save_safetensors


def main(argv: List[str]) -> int:
    """`python -m torchlayers export PIPELINE_DIR COMPONENT OUT [--averaged] [--name NAME]`."""
    parser = argparse.ArgumentParser(
        prog="python -m torchlayers export",
        description="Write the torch weights of a saved spaCy pipeline's component as a "
        "safetensors file that plain PyTorch loads with module.load_state_dict.",
    )
    parser.add_argument("pipeline", type=Path, help="a directory saved by nlp.to_disk")
    parser.add_argument("component", help="the component's name in the pipeline, e.g. textcat")
    parser.add_argument(
        "out", type=Path, help="the .safetensors file to write (--transformer: a directory)"
    )
    parser.add_argument(
        "--transformer",
        action="store_true",
        help="write the component's HFTransformer as a directory that transformers' "
        "AutoModel.from_pretrained and AutoTokenizer.from_pretrained read",
    )
    parser.add_argument("--name", help="only this torch layer (a path or a node name)")
    parser.add_argument(
        "--averaged", action="store_true", help="the averaged (use_averages) weights"
    )
    parser.add_argument("--code", type=Path, help="a Python file to import first (your functions)")
    args = parser.parse_args(argv)
    import spacy

    if args.code is not None:
        spacy.util.import_file("functions", args.code)
    nlp = spacy.load(args.pipeline)
    model = cast(Any, nlp.get_pipe(args.component)).model
    if args.transformer:
        return export_transformer(model, args.out, args.averaged)
    keys = save_safetensors(model, args.out, name=args.name, averaged=args.averaged)
    nodes = chosen_nodes(model, args.name)
    for (prefix, node), path in zip(prefixed(nodes), nodes):
        module = type(built_module(node)).__name__
        keys_are = f"'{prefix}' + its state_dict keys" if prefix else "its state_dict keys"
        print(f"{path or '(root)'}: {node.name}, a {module}; keys: {keys_are}")
    print(f"wrote {len(keys)} tensors to {args.out}")
    return 0


def export_transformer(model: Any, out: Path, averaged: bool) -> int:
    from ..averaged import use_averages
    from ._hf_export import save_pretrained

    if averaged:
        with use_averages(model):
            save_pretrained(model, out)
    else:
        save_pretrained(model, out)
    print(f"wrote the transformer to {out} (AutoModel.from_pretrained reads it)")
    return 0
