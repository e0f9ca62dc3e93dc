"""DT-BFR adaptation end to end, from aligned crop files: pseudo-targets (made or reused), a held-out split,
fine-tuning. Every stage resumes: targets already written are skipped, training continues from its checkpoint.

Work folder layout (``work_dir``): ``targets/<crop stem>.png`` (16-bit pseudo-targets of the backbone as loaded,
before any fine-tuning) and ``checkpoints/last.pt``. With several processes (an ``accelerator``) each makes its
share of the targets (seeds of the whole list, so the files equal a one-process run), all wait for the rest, then
train together with DDP.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..utils import ProgressCallback
from .data import FilePairs, check_same_size, split_holdout
from .distributed import process_shard, wait_for_everyone
from .finetune import FinetuneConfig, FinetuneResult, check_face_count, finetune_backbone
from .pseudo_targets import write_pseudo_targets

__all__ = ["adapt_backbone"]


def adapt_backbone(
    crops: Sequence[str | os.PathLike],
    work_dir: str | os.PathLike,
    prior: Any,
    backbone: torch.nn.Module,
    config: FinetuneConfig | None = None,
    *,
    holdout: float = 0.125,
    pseudo_target_options: dict[str, Any] | None = None,
    perceptual: Callable | None = None,
    accelerator: Any = None,
    target_progress: ProgressCallback | None = None,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Adapt ``backbone`` (from `load_restorer`, frozen) to aligned ``crops`` (files of one size) in place.

    ``pseudo_target_options``: `write_pseudo_targets` options (t_start, lowpass, constrain_until, seed, batch_size,
    dtype, …). ``holdout``: the fraction of faces kept for validation (at least one). ``config``: the training
    settings; ``target_progress`` / ``progress``: the two stages' ``(done, total)`` callbacks. Too few faces and
    mixed sizes are refused before any pseudo-target is made. Returns `finetune_backbone`'s result; the caller
    saves the backbone (`save_backbone`, main process only).
    """
    config = config or FinetuneConfig()
    config.check()
    crops = [Path(c) for c in crops]
    check_face_count(len(crops), config.min_faces)
    check_same_size(crops, "face crops")
    work = Path(work_dir)
    options = dict(pseudo_target_options or {})
    device = options.pop("device", None)
    targets = write_pseudo_targets(crops, work / "targets", prior, backbone, shard=process_shard(accelerator),
                                   progress=target_progress, device=device, **options)
    wait_for_everyone(accelerator)  # every process's targets are on disk
    if log is not None:
        log(f"{len(targets)} pseudo-target(s) in {work / 'targets'}")
    train_idx, val_idx = split_holdout(len(crops), holdout, config.seed)
    train = FilePairs([crops[i] for i in train_idx], [targets[i] for i in train_idx])
    val = FilePairs([crops[i] for i in val_idx], [targets[i] for i in val_idx]) if val_idx else None
    return finetune_backbone(backbone, train, val, config, perceptual=perceptual, checkpoint_dir=work / "checkpoints",
                             progress=progress, log=log, accelerator=accelerator)
