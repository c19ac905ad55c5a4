"""`python -m torchlayers COMMAND ...`: the package's command line.

Each command lives in the module that owns it and is imported only when asked for, so the
command line costs nothing to the library and `--help` works without spaCy.
"""

import importlib
import sys
from typing import Dict, List, Optional, Tuple

# command -> (module with a `main(argv) -> int`, one line of help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "export": (
        "torchlayers.spacy.export",
        "write a pipeline component's torch weights as safetensors",
    ),
    "train": ("torchlayers.spacy.train", "spacy train on N processes (launch with torchrun)"),
}


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = [f"  {name:<10} {text}" for name, (_, text) in sorted(COMMANDS.items())]
        print("usage: python -m torchlayers COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
