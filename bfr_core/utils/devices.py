"""Which device a process runs on: ``cuda`` under a multi-process launcher means this process's own GPU.

`torchrun` and `accelerate launch` start one process per GPU, give them all the same arguments and set
``LOCAL_RANK`` (the process's index on its machine) in each. A device name without an index (``cuda``) then
means ``cuda:$LOCAL_RANK``, so N processes on one machine use its N GPUs instead of all sharing the first. An
explicit index (``cuda:1``) is the user's choice and is kept, and so are devices that have no index (cpu, mps).
The name mapping is torch-free (the CLI resolves it before importing torch); `check_device` asks torch.
"""
from __future__ import annotations

import os
from typing import Mapping

ENV_LOCAL_RANK = "LOCAL_RANK"
UNINDEXED = ("cpu", "mps", "meta")  # device types with one device: a rank index would be wrong


def process_device(device: str, environ: Mapping[str, str] | None = None) -> str:
    """``device`` for this process: 'cuda' (or 'xpu', …) → 'cuda:$LOCAL_RANK' when LOCAL_RANK is set; otherwise
    (an index given, a device without indices, no launcher) ``device`` unchanged."""
    env = os.environ if environ is None else environ
    name = str(device).strip()
    local_rank = env.get(ENV_LOCAL_RANK, "").strip()
    if not local_rank or ":" in name or name.lower() in UNINDEXED:
        return name
    if not local_rank.isdigit():
        raise ValueError(f"${ENV_LOCAL_RANK}={local_rank!r} is not a process index (0, 1, …); it is set by torchrun / "
                         f"accelerate launch. Unset it, or name the device with its index (e.g. {name}:0)")
    return f"{name}:{int(local_rank)}"


def check_device(device: str):
    """``torch.device(device)`` after checking that this machine has it: a clear ValueError (what is there, what to
    do) instead of torch's assertion or an invalid-ordinal error midway through loading models."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device name (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type in ("cpu", "meta"):
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device mps: Apple's Metal backend is not available here; use cpu")
        return dev
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu, …
    count = backend.device_count() if backend is not None and hasattr(backend, "device_count") else None
    if count is None:
        return dev  # a backend torch does not describe here (e.g. an out-of-tree one): let it speak for itself
    if count == 0:
        raise ValueError(f"device {device}: this machine has no {dev.type.upper()} device that torch "
                         f"{torch.__version__} can use; use cpu (or install a torch build for your GPU)")
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {dev}: this machine has {count} {dev.type.upper()} device(s), {dev.type}:0 to "
                         f"{dev.type}:{count - 1}. Under torchrun / accelerate launch each process takes "
                         f"{dev.type}:$LOCAL_RANK, so start at most {count} process(es) per machine")
    return dev
