"""Scale-out training under ``torchrun``: process group, device per rank, the rank's share of an epoch.

One code path: a plain ``python``/``signguard train`` run is world size 1 and
takes exactly the same shuffles and steps as before, so single-process
results do not change.  Under ``torchrun --nproc_per_node N`` the process
group uses gloo on CPU and NCCL on CUDA; every rank shuffles with the same
generator and takes every N-th sample of the padded permutation (the
algorithm of ``torch.utils.data.DistributedSampler``); gradients are
averaged by ``DistributedDataParallel``; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local), device


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` (a recipe's ``optim.device``) to a device; ``auto`` takes the GPU
    when there is one, so one recipe trains on a laptop and on a workstation."""
    from edge.errors import SignguardError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SignguardError(f"optim.device: {name!r} requested but CUDA is not available")
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def shard(perm: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's samples of an epoch permutation, padded by wrap-around so every rank has as many."""
    if not world.distributed:
        return perm
    total = -(-len(perm) // world.size) * world.size
    if total > len(perm):
        perm = torch.cat([perm, perm[: total - len(perm)]])
    return perm[world.rank :: world.size]


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (epoch statistics)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def close(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
