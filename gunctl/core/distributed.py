"""torch.distributed, as torchrun sets it up: one process per device, rank 0 writes.

Outside torchrun (no WORLD_SIZE in the environment) everything here is a no-op, so the
same trainer runs in one process or many.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gunctl.config import check_device
from gunctl.errors import UsageError

# A hung collective (a rank that died without torchrun noticing) fails after this long instead
# of hanging forever; long enough for rank 0 to evaluate a large validation set on a CPU.
_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("GUNCTL_DIST_TIMEOUT_MIN", "30")))


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK (all 0/1/0 when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(requested: str, dist_info: DistInfo) -> torch.device:
    """auto: cuda:<local rank> when CUDA is there, else cpu. Explicit cuda needs CUDA."""
    check_device(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {requested}: CUDA is not available on this machine")
        if requested == "cuda":
            index = dist_info.local_rank if dist_info.enabled else torch.cuda.current_device()
            requested = f"cuda:{index}"
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) here")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_process_group(dist_info: DistInfo, device: torch.device) -> None:
    if dist_info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_TIMEOUT)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (e.g. a stop request)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def parameters_agree(model: torch.nn.Module, device: torch.device) -> tuple[bool, list[float]]:
    """Whether every rank holds the same parameters (compared by a float64 checksum each)."""
    with torch.no_grad():
        total = sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters()))
    if not (dist.is_available() and dist.is_initialized()):
        return True, [float(total)]
    sums = [
        torch.zeros((), dtype=torch.float64, device=device) for _ in range(dist.get_world_size())
    ]
    dist.all_gather(sums, total.to(device=device, dtype=torch.float64))
    values = [float(s) for s in sums]
    return all(v == values[0] for v in values), values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(value) -> list:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def scatter_objects(values: list | None, src: int = 0):
    """Rank ``r`` receives ``values[r]`` of rank ``src`` (the others pass None)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values[0]
    received = [None]
    dist.scatter_object_list(received, values if dist.get_rank() == src else None, src=src)
    return received[0]
