"""Multi-process data parallelism under torchrun, without DistributedDataParallel.

Why not wrap the supernet in DDP: one training step runs several widths (sandwich, CafeNet
min-min, BCNet's two sides), each using a different subset of the weights, and some
parameters get no gradient at all at a narrow width. DDP registers one reduction per
backward and expects every parameter marked ready exactly once per iteration; with several
backwards per step it either reduces too early or needs `find_unused_parameters` plus
`no_sync` juggling, and it errors when a parameter is reduced twice. Instead every rank
runs the whole step locally (the gradients of all its widths accumulate) and the trainer
then averages the accumulated gradients once with `average_gradients`: one all-reduce per
step, exactly the gradient DDP would produce, whatever the strategy does.

Every rank samples the same widths (the trainer seeds each step's generator with
(seed, step)), data-dependent decisions are taken on values averaged with
`all_reduce_mean`, BN running statistics are averaged with `average_buffers`, so all ranks
hold identical weights after every step. Only rank 0 writes files.

Launch: `torchrun --nproc_per_node N -m widthsearch train --config cfg.yaml`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import WidthSearchError

__all__ = [
    "DistInfo", "all_reduce_mean", "average_buffers", "average_gradients", "barrier",
    "broadcast_object",
    "broadcast_module", "cleanup", "init_distributed", "is_distributed", "is_main", "rank",
    "resolve_device", "world_size",
]

_BUCKET_BYTES = 32 * 2**20


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise WidthSearchError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK if CUDA is available else cpu; "cuda" -> cuda:LOCAL_RANK."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.startswith("cuda"):
        raise WidthSearchError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise WidthSearchError(f"device {spec!r} was asked for but CUDA is not available "
                               "(set train.device=cpu or auto)")
    index = local_rank if spec == "cuda" else int(spec.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise WidthSearchError(f"device cuda:{index} does not exist "
                               f"({torch.cuda.device_count()} CUDA devices visible)")
    return torch.device("cuda", index)


def init_distributed(device: str = "auto", *, timeout_minutes: float = 30.0) -> DistInfo:
    """Join the torchrun job described by RANK / WORLD_SIZE / LOCAL_RANK (if any).

    Without those variables (or with WORLD_SIZE=1) this is a single process and no process
    group is made. Otherwise the backend is nccl on CUDA and gloo on CPU, the CUDA device is
    cuda:LOCAL_RANK, and the process group is joined through MASTER_ADDR / MASTER_PORT.
    Calling it again in a process that already joined returns the same answer.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank_ = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank_)
    if world < 1 or not 0 <= rank_ < world:
        raise WidthSearchError(f"RANK={rank_} and WORLD_SIZE={world} do not make sense")
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return DistInfo(0, 1, 0, dev, None)
    if not dist.is_available():
        raise WidthSearchError("this PyTorch build has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise WidthSearchError(f"WORLD_SIZE={world} but {var} is not set; launch with "
                                       "torchrun --nproc_per_node N -m widthsearch ...")
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank_, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    else:
        backend = dist.get_backend()
    return DistInfo(rank_, world, local, dev, backend)


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the rank that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` across ranks in place and return it (identity in a single process).

    This is the `reduce_mean` strategies receive: CafeNet averages its candidates' losses
    with it so every rank backpropagates the same candidate.
    """
    if not is_distributed():
        return tensor
    if tensor.is_floating_point() or tensor.is_complex():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    else:  # integer counters: the floor of the mean
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.floor_divide_(dist.get_world_size())
    return tensor


def _reduce_in_buckets(tensors: list[torch.Tensor]) -> None:
    """Average same-dtype/device tensors across ranks with few large all-reduces."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in group:
            bucket.append(t)
            size += t.numel() * t.element_size()
            if size >= _BUCKET_BYTES:
                _reduce_flat(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_flat(bucket)


def _reduce_flat(bucket: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in bucket])
    all_reduce_mean(flat)
    offset = 0
    for t in bucket:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the accumulated `.grad` of `params` across ranks (no-op in one process).

    A parameter that got a gradient on some ranks but not others (possible when a strategy
    decides per rank) gets a zero gradient where it had none, so every rank runs the same
    collectives and ends with the same gradient; parameters no rank touched keep None, as
    they would in a single process (the optimizer then skips them).
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads = []
    for p, any_rank in zip(params, has.tolist(), strict=True):
        if not any_rank:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    _reduce_in_buckets(grads)


def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) across ranks.

    Each rank's BN statistics follow its own shard of the data; averaging them every step
    keeps the ranks' state identical (as DDP's buffer broadcast does) and approximates the
    statistics of the global batch. Integer buffers (batch counters) agree already.
    """
    if not is_distributed():
        return
    _reduce_in_buckets([b for b in module.buffers() if b.is_floating_point()])


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy `src`'s parameters and buffers to every rank (DDP does this at construction)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: object, src: int = 0) -> object:
    """`src`'s value of a small picklable object on every rank (e.g. a run directory name)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
