"""One training run on several processes (DDP), launched by torchrun:

    torchrun --nproc_per_node 2 -m bdcli.cli.app attack finetune ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; every process runs the same command. Each batch the
engine draws (the same on every rank: same seed) is split across the ranks, gradients are averaged by
DistributedDataParallel, and only rank 0 writes checkpoints and the published output. gloo on CPU,
NCCL on CUDA (each process on GPU LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import UsageError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The process group torchrun asked for (a single process when not launched by torchrun)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise UsageError(f"RANK {rank} is not in a world of {size} processes")
    return World(rank, size, local)


def init(w: World, device: torch.device) -> None:
    """Join the process group once per process (every train() call of a command shares it)."""
    import torch.distributed as dist

    if not w.distributed or dist.is_initialized():
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=w.rank, world_size=w.size)


def shard(rows: list[int], w: World) -> tuple[list[int], float]:
    """This rank's share of a batch, and the factor that makes the averaged gradient of the ranks'
    mean losses equal the gradient of the whole batch's mean loss (shares differ by at most one row).
    A rank left without a row (a last batch smaller than the world) computes on one row at weight 0,
    because every rank must take part in each gradient all-reduce."""
    mine = rows[w.rank :: w.size]
    if not mine:
        return rows[:1], 0.0
    return mine, len(mine) * w.size / len(rows)


def sum_across(value: torch.Tensor, w: World) -> torch.Tensor:
    if not w.distributed:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value
