"""`python -m torchlayers train CONFIG --output DIR [--config.overrides]`: spacy train on N ranks.

Launch it with torchrun (`torchrun --nproc-per-node N -m torchlayers train ...`), which sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them it trains in one
process, as `spacy train` does. Every rank builds the pipeline from the same config and seed
before the process group starts (so a sharded corpus is whole there: every rank sees every
label), then the ranks check that their configs and parameter shapes agree, take rank 0's
initial weights, and train with `torchlayers.spacy.loop.train` (see there what differs
from spaCy's loop). Rank 0 alone prints, evaluates and writes the output directory.
"""

import argparse
import contextlib
import datetime
import io
import os
import sys
from pathlib import Path
from typing import List

import torch
import torch.distributed as dist
from spacy import util
from spacy.cli._util import import_code, parse_config_overrides, show_validation_error
from spacy.training.initialize import init_nlp
from thinc.api import require_gpu
from wasabi import msg

from ..distributed import broadcast_weights, check_same_setup, rank_and_world_size
from .loop import train, trainable_models

USAGE = "python -m torchlayers train CONFIG [--output DIR] [options] [--section.key value ...]"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchlayers train",
        usage=USAGE,
        description="spacy train on every rank of a torchrun launch; rank 0 saves.",
    )
    parser.add_argument("config", type=Path, help="the spaCy config (the same on every rank)")
    parser.add_argument("--output", "-o", type=Path, help="output directory (written by rank 0)")
    parser.add_argument("--code", "-c", type=Path, help="Python file with registered functions")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds a rank waits for the others in any collective call (default 600): a "
        "rank that died or hangs stops the rest after this long. Evaluation on rank 0 must "
        "take less.",
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=100,
        help="compare the weights of all ranks every this many steps (default 100)",
    )
    parser.add_argument(
        "--gpu", action="store_true", help="train on cuda:LOCAL_RANK with NCCL (untested here)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.timeout <= 0 or args.check_every < 1:
        parser.error("--timeout must be > 0 and --check-every >= 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    quiet = io.StringIO()
    with contextlib.redirect_stdout(sys.stdout if rank == 0 else quiet):
        try:
            return run(args, parse_config_overrides(rest), world)
        except (RuntimeError, ValueError) as err:
            print(f"torchlayers train: rank {rank}: {err}", file=sys.stderr)
            return 1


def run(args: argparse.Namespace, overrides: dict, world: int) -> int:
    import_code(args.code)
    use_gpu = -1
    if args.gpu:
        use_gpu = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(use_gpu)
        require_gpu(use_gpu)
    with show_validation_error(args.config):
        config = util.load_config(args.config, overrides=overrides, interpolate=False)
    with show_validation_error(args.config, hint_fill=False):
        nlp = init_nlp(config, use_gpu=use_gpu)
    if world > 1:
        timeout = datetime.timedelta(seconds=args.timeout)
        dist.init_process_group("nccl" if args.gpu else "gloo", timeout=timeout)
    try:
        rank, _ = rank_and_world_size()
        if world > 1:
            if not args.gpu:  # names a rank that joined but does not answer (gloo only)
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=args.timeout))
            models = trainable_models(nlp, nlp.config["training"]["frozen_components"])
            check_same_setup(models, config.to_str())
            broadcast_weights(models)
        output = args.output if rank == 0 else None
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
        msg.info(f"Training on {world} process(es); pipeline: {nlp.pipe_names}")
        saved = train(nlp, output, check_every=args.check_every, stdout=sys.stdout)
        if saved is not None:
            msg.good("Saved pipeline to output directory", saved)
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0
