"""DistributedDataParallel plumbing for ``torchrun``: set-up, rank checks and gathering predictions.

``torchrun --nproc_per_node=N -m agegender train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
everything here degrades to a single process. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun described, if any; returns this process's rank info and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_predictions(out: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """Concatenate every rank's predictions so that each rank computes the same metrics.

    A DistributedSampler pads the last shard by repeating items; duplicates (same ``index``) are dropped.
    The result is sorted by ``index``, so it does not depend on the number of processes.
    """
    if info.enabled:
        parts: list = [None] * info.world_size
        dist.all_gather_object(parts, out)
        out = {k: np.concatenate([p[k] for p in parts]) for k in out}
    _, first = np.unique(out["index"], return_index=True)
    return {k: v[first] for k, v in out.items()}
