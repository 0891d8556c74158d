"""Data-parallel inference under `torchrun` / `accelerate launch`: who am I, and a barrier.

Both launchers export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Each rank
generates its share of the batches into its own partial file; rank 0 waits at a barrier and
then assembles all files in the original order. The process group is only used for that
barrier, so it is gloo on every machine (no NCCL device binding, works on CPU test runs).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

# Rank 0 may wait at the barrier for as long as the slowest rank generates; the default
# 30-minute gloo timeout would kill long GPU runs. torchrun still tears all ranks down at
# once if any of them crashes, so a long timeout does not mean a long hang.
BARRIER_TIMEOUT = dt.timedelta(hours=24)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read the launcher's environment (all defaults: a plain single process)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return DistInfo(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                    int(env.get("LOCAL_WORLD_SIZE", str(world))))


def init_process_group(info: DistInfo) -> None:
    """Join the launcher's process group (only when there is more than one process)."""
    if info.world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for_rank(device: str, info: DistInfo) -> str:
    """One GPU per local rank; CPU stays CPU."""
    return f"cuda:{info.local_rank}" if device == "cuda" and info.world_size > 1 else device


def share_cpu_threads(info: DistInfo) -> None:
    """Several CPU ranks on one machine would each start one thread per core and thrash."""
    if info.local_world_size > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
