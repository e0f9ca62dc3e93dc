"""Pseudo-target files for backbone adaptation (DT-BFR): one PNG per aligned crop, written as made, resumable.

The targets themselves are `bfr_core.restoration.pseudo_targets.generate_pseudo_targets`; this module only feeds
it crops (files or a tensor) a chunk at a time and writes each chunk's results at once (`io.images.write_image`:
temp file + rename, so an interrupted run leaves only whole files), skipping faces whose target already exists.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..io.images import read_image, write_image
from ..restoration.estimate import Restorer
from ..restoration.pseudo_targets import DEFAULT_T_START, generate_pseudo_targets
from ..utils import ProgressCallback
from ..utils.sharding import Shard

__all__ = ["write_pseudo_targets"]


def _target_names(crops: Sequence[Any] | Tensor, names: Sequence[str] | None) -> list[str]:
    n = len(crops)
    if names is not None:
        names = [str(v) for v in names]
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries for {n} crops")
    elif isinstance(crops, Tensor):
        names = [f"{i:06d}.png" for i in range(n)]
    else:
        names = [Path(c).stem + ".png" for c in crops]
    if any(Path(v).name != v or not v for v in names):
        raise ValueError(f"target names must be plain file names, got {names}")
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise ValueError(f"two crops would write the same target file {dup[0]} (same file name in different "
                         f"folders?); rename them or pass names=")
    return names


def write_pseudo_targets(
    crops: Sequence[str | os.PathLike] | Tensor,
    out_dir: str | os.PathLike,
    prior: Any,
    restorer: Restorer | None = None,
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 4,
    bit_depth: int = 16,
    progress: ProgressCallback | None = None,
    device: torch.device | str | None = None,
    shard: Shard | None = None,
    **kwargs: Any,
) -> list[Path]:
    """Pseudo-targets of aligned crops written to ``out_dir``, one PNG per face, resumable.

    ``crops``: image files (already aligned crops) or a [B, C, H, W] tensor in [0, 1]. Target names: the files'
    stems + ".png" (tensors: 000000.png, …), or ``names``. Face i (of the whole list, skipped or not) is seeded
    ``seed + i``, so a resumed run makes the same targets as an uninterrupted one. Faces whose target exists are
    skipped (not read, not generated); the rest run ``batch_size`` at a time through `generate_pseudo_targets`
    (``kwargs``: its t_start, lowpass, constrain_until, respacing, dtype, …) and each chunk's targets are written
    at once (``bit_depth`` 16 or 8; atomic: temp file + rename, so an interrupted run leaves only whole files).
    Crops go to ``device`` (default: the tensor's device, CPU for files). ``progress(done, total)`` counts model
    evaluations over the faces still to do. ``shard``: make only this process's share of the faces (every N-th
    from the I-th; seeds stay those of the whole list, so N processes together write exactly the one-process
    files). Returns the target paths of all faces, in order.
    """
    if "seeds" in kwargs:
        raise ValueError("write_pseudo_targets seeds face i with seed + i; pass seed=")
    if int(bit_depth) not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if isinstance(crops, Tensor):
        if crops.ndim != 4:
            raise ValueError(f"crops must be a [B, C, H, W] tensor or a list of files, got {tuple(crops.shape)}")
    else:
        crops = [Path(c) for c in crops]
    names = _target_names(crops, names)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; name a folder for the pseudo-targets")
    targets = [out / v for v in names]
    if not isinstance(crops, Tensor):
        inputs = {c.resolve() for c in crops}
        clash = [t for t in targets if t.resolve() in inputs]
        if clash:
            raise ValueError(f"{clash[0]} would overwrite an input crop; choose another output folder")
    mine = (shard or Shard()).take(range(len(targets)), key=int)
    todo = [i for i in mine if not targets[i].exists()]
    if not todo:
        return targets
    out.mkdir(parents=True, exist_ok=True)
    t_start = int(kwargs.get("t_start", DEFAULT_T_START))
    chunks = [todo[k:k + int(batch_size)] for k in range(0, len(todo), int(batch_size))]
    total = t_start * len(chunks)

    def load(i: int) -> Tensor:
        if isinstance(crops, Tensor):
            x = crops[i]
        else:
            x = read_image(crops[i]).rgb
        return x.to(device) if device is not None else x

    for ci, chunk in enumerate(chunks):
        ys = [load(i) for i in chunk]
        same = len({tuple(y.shape) for y in ys}) == 1
        groups = [list(range(len(ys)))] if same else [[k] for k in range(len(ys))]  # mixed sizes: one at a time
        base, acc = ci * t_start, 0
        for g in groups:
            def report(d: int, tot: int, _acc=acc, _n=len(g), _all=len(ys)) -> None:
                if progress is not None:
                    progress(base + (t_start * (_acc * tot + d * _n)) // (_all * max(tot, 1)), total)

            res = generate_pseudo_targets(torch.stack([ys[k] for k in g]), prior, restorer,
                                          seeds=[int(seed) + chunk[k] for k in g], batch_size=len(g),
                                          progress=report, **kwargs)
            for k, r in zip(g, res):  # written as soon as made: a later failure keeps them
                img = r.float()
                write_image(targets[chunk[k]], img.repeat(3, 1, 1) if img.shape[0] == 1 else img,
                            gray=img.shape[0] == 1, bit_depth=int(bit_depth))
            acc += len(g)
    return targets
