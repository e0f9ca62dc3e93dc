"""Several processes (GPUs or machines) through Hugging Face accelerate, an optional extra imported only here.

`accelerate launch -m bfr_core adapt ...` (or torchrun) starts one process per device and sets RANK/WORLD_SIZE;
`make_accelerator` then returns an ``accelerate.Accelerator`` that has joined the process group (NCCL on GPUs, gloo
on CPUs), and `finetune_backbone` uses it for DDP. A single process gets None and needs no accelerate at all.
"""
from __future__ import annotations

from typing import Any

import torch

from ..utils.sharding import Shard, shard_from_env

__all__ = ["make_accelerator", "process_shard", "wait_for_everyone"]


def make_accelerator(device: str | torch.device = "cpu") -> Any:
    """An ``accelerate.Accelerator`` when this process is one of several (WORLD_SIZE > 1), else None.

    ``device`` "cpu" keeps every process on the CPU (gloo); any other value lets accelerate give each process its
    own GPU (LOCAL_RANK). ImportError with the install line when accelerate is missing.
    """
    if not shard_from_env().sharded:
        return None
    try:
        from accelerate import Accelerator
    except ImportError as exc:
        raise ImportError("this process was started as one of several (WORLD_SIZE > 1): training across processes "
                          "needs Hugging Face accelerate (`pip install accelerate`, the pack's 'dist' extra); or run "
                          "one process") from exc
    return Accelerator(cpu=torch.device(device).type == "cpu")


def process_shard(accelerator: Any) -> Shard:
    """This process's share of per-face work (pseudo-targets): Shard(rank, processes)."""
    if accelerator is None:
        return Shard()
    return Shard(int(accelerator.process_index), int(accelerator.num_processes))


def wait_for_everyone(accelerator: Any) -> None:
    """A barrier across the processes (nothing with one process)."""
    if accelerator is not None:
        accelerator.wait_for_everyone()
