"""spaCy's training loop on every rank of a process group (M2), around `train_while_improving`.

What differs from `spacy.training.loop.train`, and why:
- The gradients of all trainable components are summed over the ranks once per step, before
  the first component steps: `train_while_improving` sees the pipeline with one more
  "component" in front whose `finish_update` calls `sum_gradients` (spaCy steps each component
  in turn, and Thinc gives no hook after the backward passes).
- Ranks step in lockstep: before each step the ranks agree that each has a batch (one tiny
  all-reduce); the first rank whose shard runs out (`max_epochs`) stops them all.
- Rank 0 evaluates and shares its scores (a broadcast), so patience and `max_steps` stop every
  rank at the same step; the other ranks wait during the evaluation.
- Every `check_every` steps and at the end, the ranks compare their weights bit for bit.
- The seed is `training.seed + rank` once the pipeline is built: dropout masks differ per rank.
- Checkpoints are written to a temporary directory beside the target, then renamed into place;
  after an error nothing is saved (the last complete checkpoint stays).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, List, Optional

import torch.distributed as dist
from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training.loop import (
    DIR_MODEL_BEST,
    DIR_MODEL_LAST,
    clean_output_dir,
    create_before_to_disk_callback,
    create_evaluation_callback,
    create_train_batches,
    train_while_improving,
    update_meta,
)
from spacy.util import registry, resolve_dot_names
from thinc.api import Model, Optimizer, fix_random_seed

from ..distributed import (
    all_ranks_agree,
    check_weights_match,
    collective,
    rank_and_world_size,
    sum_gradients,
)
from .corpus import ShardedCorpus

SUM_NAME = "torchlayers_sum_gradients"


def train(
    nlp: Language,
    output_path: Optional[Path] = None,
    *,
    check_every: int = 100,
    stdout: IO = sys.stdout,
    stderr: IO = sys.stderr,
) -> Optional[Path]:
    """Train `nlp` (built by `init_nlp`, the same on every rank) on this rank's shard.

    output_path: where rank 0 saves model-last and model-best (pass None on the other ranks).
    Returns the path of model-last, or None.
    """
    rank, world = rank_and_world_size()
    config = nlp.config.interpolate()
    if config["training"]["seed"] is not None:
        fix_random_seed(config["training"]["seed"] + rank)
    T = registry.resolve(config["training"], schema=ConfigSchemaTraining)
    train_corpus, dev_corpus = resolve_dot_names(config, [T["train_corpus"], T["dev_corpus"]])
    if world > 1 and rank == 0 and not isinstance(train_corpus, ShardedCorpus):
        print(
            f"torchlayers train: warning: [{T['train_corpus']}] is not a "
            "torchlayers.ShardedCorpus.v1 reader: every rank reads the whole corpus",
            file=stderr,
        )
    optimizer: Optimizer = T["optimizer"]
    before_to_disk = create_before_to_disk_callback(T["before_to_disk"])
    frozen = T["frozen_components"]
    models = trainable_models(nlp, frozen)
    evaluate = create_evaluation_callback(nlp, dev_corpus, T["score_weights"])
    batches = create_train_batches(nlp, train_corpus, T["batcher"], T["max_epochs"])
    steps = train_while_improving(
        SummingPipeline(nlp, models) if world > 1 else nlp,  # type: ignore[arg-type]
        optimizer,
        in_lockstep(batches) if world > 1 else batches,
        shared_scores(evaluate) if world > 1 else evaluate,
        dropout=T["dropout"],
        accumulate_gradient=T["accumulate_gradient"],
        patience=T["patience"],
        max_steps=T["max_steps"],
        eval_frequency=T["eval_frequency"],
        exclude=frozen,
        annotating_components=T["annotating_components"],
        before_update=T["before_update"],
    )

    def save(is_best: bool) -> None:
        if output_path is None:
            return
        with nlp.use_params(optimizer.averages):
            replace_dir(output_path / DIR_MODEL_LAST, before_to_disk(nlp).to_disk)
        if is_best:
            last = output_path / DIR_MODEL_LAST
            replace_dir(output_path / DIR_MODEL_BEST, lambda tmp: copy_dir(last, tmp))

    if output_path is not None:
        clean_output_dir(output_path)
    with nlp.select_pipes(disable=frozen):
        log_step, finalize_logger = T["logger"](nlp, stdout, stderr)
    try:
        for _, info, is_best in steps:
            if world > 1 and info["step"] % check_every == 0:
                check_weights_match(models)
            if is_best is not None:
                with nlp.select_pipes(disable=frozen):
                    update_meta(T, nlp, info)
                save(is_best)
                if output_path is not None:
                    info["output_path"] = str(output_path / DIR_MODEL_LAST)
            log_step(info if is_best is not None else None)
    finally:
        finalize_logger()
    if world > 1:
        check_weights_match(models)
    save(False)
    return None if output_path is None else output_path / DIR_MODEL_LAST


def trainable_models(nlp: Language, frozen: Iterable[str]) -> List[Model]:
    """The models that `train_while_improving` steps, in pipeline order."""
    return [
        proc.model  # type: ignore[attr-defined]
        for name, proc in nlp.pipeline
        if name not in frozen
        and getattr(proc, "is_trainable", False)
        and proc.model not in (True, False, None)  # type: ignore[attr-defined]
    ]


class SummingPipeline:
    """`nlp` as `train_while_improving` sees it: its pipeline after a first "component" whose
    `finish_update` sums every trainable component's gradients over the ranks."""

    def __init__(self, nlp: Language, models: List[Model]) -> None:
        self._nlp = nlp
        self._sum = SumStep(models)

    @property
    def pipeline(self) -> List[Any]:
        return [(SUM_NAME, self._sum), *self._nlp.pipeline]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nlp, name)


class SumStep:
    """Looks trainable to spaCy's loop; its update is the sum (never saved: not in `nlp`)."""

    is_trainable = True

    def __init__(self, models: List[Model]) -> None:
        self.model = models

    def finish_update(self, optimizer: Optimizer) -> None:
        sum_gradients(self.model)


def in_lockstep(batches: Iterable[Any]) -> Iterator[Any]:
    """`batches` while every rank still has one: ranks must run the same number of steps."""
    for item in batches:
        if not all_ranks_agree(True):
            return
        yield item
    all_ranks_agree(False)


def shared_scores(evaluate: Callable[[], Any]) -> Callable[[], Any]:
    """Evaluate on rank 0 only; every rank gets rank 0's (score, scores)."""

    def evaluate_on_rank_0() -> Any:
        rank, _ = rank_and_world_size()
        result = [evaluate() if rank == 0 else None]
        collective("share rank 0's dev scores", dist.broadcast_object_list, result, 0)
        return result[0]

    return evaluate_on_rank_0


def replace_dir(target: Path, write: Callable[[Path], Any]) -> None:
    """Write a directory beside `target`, then rename it into place: never a half-written one.

    An earlier `target` is moved aside first and deleted after; an error removes the new one.
    """
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = tmp.with_name(tmp.name + "-old")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def copy_dir(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)
