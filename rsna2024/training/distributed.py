"""DistributedDataParallel plumbing for ``torchrun``: the process group from RANK / WORLD_SIZE / LOCAL_RANK
(gloo on CPU, NCCL on CUDA), gathering Python objects, averaging numbers, and a sampler that splits an
evaluation set across ranks without padding (so every sample is predicted exactly once)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rsna2024.utils.logging import get_logger

log = get_logger(__name__)


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


def dist_from_env() -> DistInfo:
    """Rank, world size and local rank as ``torchrun`` sets them (a single process without them)."""
    env = os.environ
    return DistInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the process group when running under ``torchrun`` with several processes; returns whether this
    call created it (the caller then destroys it with :func:`cleanup`)."""
    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    log.info("process group: %s, rank %d of %d", backend, info.rank, info.world_size)
    return True


def cleanup(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without DDP)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_numbers(*values: float) -> list[float]:
    """Element-wise sums of ``values`` over all ranks."""
    if not is_distributed():
        return list(values)
    return [float(sum(v)) for v in zip(*gather_objects(list(values)))]


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...`` of a dataset of ``n``: disjoint shards covering it exactly once."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
