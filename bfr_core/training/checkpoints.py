"""Resumable training checkpoints: one file, ``last.pt`` in the run's folder, replaced atomically.

The file is written beside its final name and renamed over it only once complete and flushed to disk, so a crash,
an interruption or a full disk while writing leaves the previous checkpoint whole (and the half-written temporary
file is removed). It holds plain tensors and containers only and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import publish, temp_beside
from ..models.errors import CheckpointError

__all__ = ["CHECKPOINT_NAME", "read_training_state", "write_training_state"]

CHECKPOINT_NAME = "last.pt"


def write_training_state(folder: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``folder``/last.pt atomically; on failure the previous file is untouched and an OSError
    says what happened (a full disk is named as such)."""
    dest = Path(folder) / CHECKPOINT_NAME
    fd, tmp = temp_beside(dest)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, dest)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "the disk is full" if full else str(exc)
        raise OSError(exc.errno, f"could not write the training checkpoint {dest} ({why}); the previous checkpoint "
                                 f"is intact: free space and run the same command again to resume from it") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_training_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The state in ``folder``/last.pt, or None when there is none yet."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the training checkpoint {path} ({type(exc).__name__}: {exc}); it was "
                              f"not written by this version, or is damaged: delete it to start over") from exc
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of bfr_core (no step/model entries); delete it "
                              f"or choose another checkpoint folder")
    return state
