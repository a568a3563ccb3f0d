"""Data-parallel training through ``torchrun``, with no change to the user's command line.

``torchrun --nproc-per-node N -m plaindet train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them and joins the process group (NCCL on GPUs, gloo on CPUs).
Multi-node runs use torchrun's rendezvous (``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint
HOST:PORT``); nothing here changes. A plain ``plaindet train`` is a world of one, and every helper
below is then a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> World:
    """Join the process group if launched by torchrun, and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.device(device or "cuda").index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Evaluation runs between steps on every rank; a generous timeout keeps a slow one from
        # being mistaken for a dead peer.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_true(flag: bool, world: World) -> bool:
    """``True`` on every rank if ``flag`` is true on any: ranks must agree to skip or stop together."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float], world: World) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return {k: v / world.world_size for k, v in zip(keys, t.tolist())}


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over ranks (itself when not distributed); used for loss normalizers."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_lists(items: list[Any], world: World) -> list[Any]:
    """Concatenate every rank's list (on every rank)."""
    if not world.distributed:
        return items
    parts: list[Any] = [None] * world.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
