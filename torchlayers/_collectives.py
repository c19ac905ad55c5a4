"""Thinc arrays over a torch.distributed group: bucketed all-reduce and broadcast, digests.

Every function here is a collective: each rank of the group must call it, in the same order,
on models with the same parameter names and shapes (`distributed.check_same_setup` checks that
at the start). Arrays travel in a few flat buffers per dtype and device, not one call each: a
collective call has a fixed cost (a round trip per ring step), so 200 small tensors summed one
by one cost far more than one buffer of the same bytes.
"""

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy
import torch
import torch.distributed as dist
from thinc.api import Model

from ._convert import to_tensor

Slot = Tuple[Model, str]  # (node, param name)


@dataclass
class ReduceStats:
    """What one gradient sum moved: collective calls, bytes all-reduced, bytes of gradients."""

    calls: int = 0
    bucket_bytes: int = 0  # bytes all-reduced in the gradient buckets
    grad_bytes: int = 0  # bytes of the gradients summed (what the optimizer reads)
    mask_bytes: int = 0  # bytes of the presence mask (one int8 per parameter)


def param_slots(models: Sequence[Model]) -> List[Slot]:
    """Every (node, param) that holds an array under `models`, in walk order, each node once."""
    seen = set()
    slots: List[Slot] = []
    for model in models:
        for node in model.walk():
            if node.id in seen:
                continue
            seen.add(node.id)
            slots.extend((node, name) for name in node.param_names if node.has_param(name))
    return slots


def group_device(group: Optional[Any]) -> torch.device:
    """Where the group's collectives want their tensors: NCCL takes CUDA tensors only."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_gradients(
    slots: Sequence[Slot], group: Optional[Any], bucket_bytes: int, run: Callable
) -> ReduceStats:
    """Sum the gradients of `slots` over `group`, in place; zero grads where a rank had none.

    First a tiny all-reduce (MAX) of which params have a gradient on this rank: a param with a
    gradient on any rank gets one on every rank (zeros where there was none), so every rank
    steps the same params; a param with a gradient on no rank is left alone (Thinc skips it).
    run: calls a collective, rewording its failure (`distributed.collective`).
    """
    stats = ReduceStats()
    if not slots:
        return stats
    mask = torch.tensor([n.has_grad(name) for n, name in slots], dtype=torch.int8)
    mask = mask.to(group_device(group))
    run("agree on the parameters with gradients", dist.all_reduce, mask, dist.ReduceOp.MAX, group)
    stats.calls, stats.mask_bytes = 1, mask.numel()
    grads = []
    for (node, name), present in zip(slots, mask.tolist()):
        if not present:
            continue
        if not node.has_grad(name):
            param = node.get_param(name)
            node.set_grad(name, node.ops.alloc(param.shape, dtype=param.dtype))
        grads.append(node.get_grad(name))
    for bucket in buckets(grads, bucket_bytes):
        flat = to_tensor(flatten(bucket))
        run("sum the gradients", dist.all_reduce, flat, dist.ReduceOp.SUM, group)
        unflatten(flat, bucket)
        stats.calls += 1
        stats.bucket_bytes += flat.numel() * flat.element_size()
    stats.grad_bytes = sum(int(g.nbytes) for g in grads)
    return stats


def broadcast_arrays(
    arrays: Sequence[Any], src: int, group: Optional[Any], bucket_bytes: int, run: Callable
) -> int:
    """Overwrite `arrays` in place with rank `src`'s values; return the collective calls made."""
    calls = 0
    for bucket in buckets(arrays, bucket_bytes):
        flat = to_tensor(flatten(bucket))
        run("broadcast the weights", dist.broadcast, flat, src, group)
        unflatten(flat, bucket)
        calls += 1
    return calls


def buckets(arrays: Iterable[Any], bucket_bytes: int) -> List[List[Any]]:
    """Split `arrays` into runs of one dtype and device of about `bucket_bytes` each."""
    done: List[List[Any]] = []
    open_: dict = {}  # (dtype, device) -> (arrays, bytes)
    for array in arrays:
        key = (str(array.dtype), str(getattr(array, "device", "cpu")))
        bucket, size = open_.get(key, ([], 0))
        bucket.append(array)
        size += int(array.nbytes)
        if size >= bucket_bytes:
            done.append(bucket)
            bucket, size = [], 0
        open_[key] = (bucket, size)
    done.extend(bucket for bucket, _ in open_.values() if bucket)
    return done


def flatten(arrays: Sequence[Any]) -> Any:
    """One new contiguous 1-d array holding `arrays` end to end (numpy or cupy)."""
    xp = numpy if isinstance(arrays[0], numpy.ndarray) else _cupy()
    return xp.concatenate([a.reshape(-1) for a in arrays])


def unflatten(flat: torch.Tensor, arrays: Sequence[Any]) -> None:
    """Copy the summed buffer back into the very arrays Thinc holds (views stay valid)."""
    xp = numpy if isinstance(arrays[0], numpy.ndarray) else _cupy()
    values = flat.numpy() if xp is numpy else xp.asarray(flat)
    start = 0
    for array in arrays:
        end = start + array.size
        array[...] = values[start:end].reshape(array.shape)
        start = end


def digest(array: Any) -> bytes:
    """An 8-byte fingerprint of an array's exact bytes (a GPU array is copied to the host)."""
    host = array if isinstance(array, numpy.ndarray) else array.get()
    data = numpy.ascontiguousarray(host)
    return hashlib.blake2b(data.tobytes(), digest_size=8).digest()


def gather_bytes(data: bytes, group: Optional[Any], run: Callable) -> List[bytes]:
    """Every rank's `data` (the same length on every rank), in rank order."""
    mine = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(group_device(group))
    found = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    run("compare the ranks", dist.all_gather, found, mine, group)
    return [bytes(t.cpu().numpy().tobytes()) for t in found]


def _cupy() -> Any:
    import cupy

    return cupy
