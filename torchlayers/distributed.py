"""Data-parallel training over torch.distributed: sum every gradient before each step (M1, M3).

Thinc owns every parameter and gradient as an array (with_torch's torch tensors share them), so
one bucketed all-reduce over the arrays reaches Thinc's layers and torch's alike. Thinc calls
each shim's `finish_update` before the optimizer steps any parameter (root first): the
`data_parallel` node's shim sums there. spaCy steps each component separately, so
`torchlayers.spacy.loop` calls `sum_gradients` itself, once per step, over all components.

Every function here is collective: each rank of the group calls it, in the same order. Where
torch.distributed is not initialized they do nothing (one process: nothing to sum), so a model
with a `data_parallel` node also trains, and loads, in a plain single process. A rank
that died or hangs makes the others raise `RuntimeError` once the group's timeout
(`init_process_group(timeout=...)`) has passed, instead of waiting for ever.
"""

import hashlib
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import torch
import torch.distributed as dist
from thinc.api import Model, Optimizer, registry

from ._collectives import (
    ReduceStats,
    broadcast_arrays,
    digest,
    gather_bytes,
    group_device,
    param_slots,
)
from ._collectives import sum_gradients as sum_slots
from ._convert import to_array
from ._loading import Layer
from ._thinc import NodeShim, wrapper_forward, wrapper_init
from .averaged import use_averages

InT = TypeVar("InT")
OutT = TypeVar("OutT")
Models = Union[Model, Sequence[Model]]
FORMAT = b"torchlayers.data_parallel/1"
MB = 1 << 20

__all__ = [
    "data_parallel",
    "sum_gradients",
    "broadcast_weights",
    "check_weights_match",
    "check_same_setup",
    "rank_and_world_size",
    "all_ranks_agree",
    "ReduceStats",
]


@registry.layers("torchlayers.data_parallel.v1")
def data_parallel(
    layer: Model[InT, OutT], group: Optional[Any] = None, bucket_mb: float = 25.0
) -> Model[InT, OutT]:
    """Sum the gradients of every parameter under `layer` over a process group before each step.

    With the default group initialized (`torch.distributed.init_process_group`, gloo on CPU,
    NCCL on CUDA), `model.finish_update(optimizer)` on N ranks with batches b1..bN takes the
    step one process takes on b1..bN concatenated, if the loss is a sum over the batch (spaCy's
    are). Call `broadcast_weights(model)` once after `initialize`. Forward is `layer`'s.
    group: the process group (None: the default group). Not saved: a loaded model uses the
        default group.
    bucket_mb: gradients travel in flat buffers of about this many MiB (`attrs["bucket_mb"]`).
    The node adds nothing to `layer`'s saved bytes but a short header; the shim's `last`
    holds the `ReduceStats` of the latest step.
    """
    if not bucket_mb > 0:
        raise ValueError(f"data_parallel: expected bucket_mb > 0, got {bucket_mb!r}")
    shim = SumShim(group)
    model: Model[InT, OutT] = Layer(
        f"data_parallel({layer.name})",
        forward,
        init=init,
        layers=[layer],
        shims=[shim],
        dims={name: layer.maybe_get_dim(name) for name in layer.dim_names},
        attrs={"bucket_mb": bucket_mb},
    )
    shim.bind(model)
    return model


forward = wrapper_forward  # run the layer
init = wrapper_init


class SumShim(NodeShim):
    """The data_parallel node's hook into `finish_update`: the sum over the group."""

    def __init__(self, group: Optional[Any] = None) -> None:
        super().__init__(None)
        self.group = group
        self.last = ReduceStats()

    def finish_update(self, optimizer: Optimizer) -> None:
        node = self.node()
        if node is None:
            raise ValueError(
                "data_parallel: this copy has not run yet; call it (or initialize it) once "
                "before finish_update, on every rank"
            )
        mb = node.attrs["bucket_mb"]
        self.last = sum_gradients(node.layers[0], self.group, bucket_mb=mb)

    def to_device(self, device_type: str, device_id: int) -> None:
        pass  # the arrays live in the nodes under it

    def to_bytes(self) -> bytes:
        return FORMAT

    def from_bytes(self, data: bytes) -> "SumShim":
        if bytes(data) != FORMAT:
            raise ValueError(f"data_parallel: expected the header {FORMAT!r}, got {data[:40]!r}")
        return self

    def copy(self) -> "SumShim":
        return SumShim(self.group)  # a process group cannot be deep-copied


def sum_gradients(
    models: Models, group: Optional[Any] = None, bucket_mb: float = 25.0
) -> ReduceStats:
    """Sum, over `group`, the gradients of every parameter under `models`, in place.

    Call it on every rank after the backward passes and before the optimizer steps (what
    `data_parallel` does in `finish_update`). A param with a gradient on some ranks gets a
    zero gradient on the others first, so all ranks step the same params. Returns the calls
    and bytes it moved.
    """
    if not initialized():
        return ReduceStats()
    slots = param_slots(as_list(models))
    return sum_slots(slots, group, int(bucket_mb * MB), collective)


def broadcast_weights(
    models: Models, src: int = 0, group: Optional[Any] = None, bucket_mb: float = 25.0
) -> None:
    """Give every rank rank `src`'s parameters (call once after `initialize`, like torch DDP).

    Also the buffers of with_torch modules (e.g. BatchNorm statistics), which are not Thinc
    params. Afterwards they drift per rank (each sees its own batches): rank 0's are saved.
    """
    if not initialized():
        return
    arrays = [node.get_param(name) for node, name in param_slots(as_list(models))]
    broadcast_arrays(arrays, src, group, int(bucket_mb * MB), collective)
    buffers = [to_array(b) for m in torch_modules(as_list(models)) for b in m.buffers()]
    broadcast_arrays(buffers, src, group, MB, collective)


def check_weights_match(models: Models, group: Optional[Any] = None) -> None:
    """Raise RuntimeError naming the ranks and parameters that differ from rank 0's, bit for bit.

    One all-gather of 8 bytes per parameter: cheap enough to run every few hundred steps.
    `averaged` nodes fold in their pending step first (entering `use_averages` does; rank 0
    may have done so already, to save a checkpoint).
    """
    if not initialized():
        return
    for model in as_list(models):
        with use_averages(model):
            pass
    slots = param_slots(as_list(models))
    if not slots:
        return
    mine = b"".join(digest(node.get_param(name)) for node, name in slots)
    ranks = gather_bytes(mine, group, collective)
    differ = [r for r, theirs in enumerate(ranks) if theirs != ranks[0]]
    if not differ:
        return
    first = ranks[differ[0]]
    names = [
        f"{short(node.name)}.{name}"
        for i, (node, name) in enumerate(slots)
        if first[8 * i : 8 * i + 8] != ranks[0][8 * i : 8 * i + 8]
    ]
    raise RuntimeError(
        f"data-parallel weights drifted: rank(s) {differ} hold weights that differ from rank "
        f"0's in {len(names)} parameter(s), e.g. {names[:3]}; every rank must run the same "
        "steps with gradients summed by sum_gradients / data_parallel"
    )


def check_same_setup(models: Models, config: str = "", group: Optional[Any] = None) -> None:
    """Refuse to start unless every rank has rank 0's config text and parameter names/shapes.

    Raises ValueError (on every rank) naming the ranks that differ and what differs.
    """
    if not initialized():
        return
    layout = "\n".join(
        f"{node.name} {name} {tuple(node.get_param(name).shape)} {node.get_param(name).dtype}"
        for node, name in param_slots(as_list(models))
    )
    mine = sha(config) + sha(layout)
    ranks = gather_bytes(mine, group, collective)
    for what, part in (("config", slice(0, 16)), ("model (parameter names/shapes)", slice(16, 32))):
        differ = [r for r, theirs in enumerate(ranks) if theirs[part] != ranks[0][part]]
        if differ:
            raise ValueError(
                f"data-parallel start refused: the {what} of rank(s) {differ} differs from "
                "rank 0's; start every rank with the same config, overrides and code"
            )


def rank_and_world_size(group: Optional[Any] = None) -> Tuple[int, int]:
    """(rank, world size) in `group`; (0, 1) where torch.distributed is not initialized."""
    if not initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_ranks_agree(flag: bool, group: Optional[Any] = None) -> bool:
    """True if `flag` is true on every rank (one all-reduce of one byte)."""
    if not initialized():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int8, device=group_device(group))
    collective("agree to take another step", dist.all_reduce, value, dist.ReduceOp.MIN, group)
    return bool(value.item())


def collective(what: str, fn: Callable, *args: Any) -> Any:
    """Run one collective call; a peer that died or timed out becomes a clear RuntimeError."""
    try:
        return fn(*args)
    except RuntimeError as err:  # gloo/NCCL errors (DistBackendError is a RuntimeError)
        rank, world = rank_and_world_size()
        raise RuntimeError(
            f"data-parallel: rank {rank} of {world} could not {what}: another rank exited, "
            f"crashed or did not answer within the process group's timeout ({err})"
        ) from err


def as_list(models: Models) -> List[Model]:
    return [models] if isinstance(models, Model) else list(models)


def torch_modules(models: Sequence[Model]) -> List[Any]:
    """The torch modules of the with_torch nodes under `models`, each once."""
    found = {}
    for model in models:
        for node in model.walk():
            module = getattr(node.shims[0], "module", None) if node.shims else None
            if module is not None and "with_torch" in node.attrs:
                found[id(module)] = module
    return list(found.values())


def short(name: str, size: int = 48) -> str:
    """A node name cut to `size` characters: spaCy's are whole model descriptions."""
    return name if len(name) <= size else name[: size - 3] + "..."


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf8")).digest()[:16]
