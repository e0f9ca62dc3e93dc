"""Training pairs for backbone adaptation: (degraded crop, pseudo-target) pairs held in memory or read from files.

Both kinds answer ``len(pairs)``, ``pairs.size`` (H, W) and ``pairs.load(indices) → (lq, target)`` float32 batches
[n, C, H, W] in [0, 1] on the CPU. Every pair has one size (a batch is one tensor): mixed sizes are refused up front
with the sizes found, never half-way through a run. `split_holdout` picks the validation faces deterministically.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Protocol, Sequence

import torch
from torch import Tensor

from ..io.images import read_image
from ..utils.layout import check_images

__all__ = ["FilePairs", "Pairs", "TensorPairs", "check_same_size", "split_holdout"]


class Pairs(Protocol):
    size: tuple[int, int]

    def __len__(self) -> int: ...

    def load(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]: ...


class TensorPairs:
    """Pairs from two [N, C, H, W] tensors in [0, 1] (C 1 or 3; a gray side is repeated to RGB)."""

    def __init__(self, lq: Tensor, targets: Tensor):
        check_images(lq, "lq crops", channels=(1, 3), allow_empty=True)
        check_images(targets, "targets", channels=(1, 3), allow_empty=True)
        if lq.shape[0] != targets.shape[0]:
            raise ValueError(f"{lq.shape[0]} lq crops but {targets.shape[0]} targets: give one target per crop")
        if lq.shape[-2:] != targets.shape[-2:]:
            raise ValueError(f"lq crops are {tuple(lq.shape[-2:])} and targets {tuple(targets.shape[-2:])}: each "
                             f"target must have its crop's size")
        self.lq, self.targets = lq, targets
        self.size = (int(lq.shape[-2]), int(lq.shape[-1]))

    def __len__(self) -> int:
        return int(self.lq.shape[0])

    def load(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return _rgb(self.lq[idx.to(self.lq.device)]), _rgb(self.targets[idx.to(self.targets.device)])


def _rgb(x: Tensor) -> Tensor:
    x = x.detach().to("cpu", torch.float32)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header when Pillow can read it (cheap), else by decoding it."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except Exception:  # not Pillow-readable (or no Pillow): decode it the way training will
        rgb = read_image(path).rgb
        return int(rgb.shape[-2]), int(rgb.shape[-1])


def check_same_size(paths: Sequence[Path], what: str) -> tuple[int, int]:
    """The one (H, W) of ``paths``; ValueError listing the sizes found (and an example of each) otherwise."""
    sizes = {p: _image_size(p) for p in paths}
    counts = Counter(sizes.values())
    if len(counts) > 1:
        example = {s: next(p.name for p, v in sizes.items() if v == s) for s in counts}
        found = ", ".join(f"{h}x{w}: {n} (e.g. {example[(h, w)]})" for (h, w), n in counts.most_common())
        raise ValueError(f"the {what} have mixed sizes ({found}); fine-tuning batches need one size: align them "
                         f"again at one --crop-size (python -m bfr_core align ... --crop-size 512)")
    return next(iter(counts))


class FilePairs:
    """Pairs from image files (crop i ↔ target i), read when a batch needs them (a large album need not fit in
    memory). Sizes are checked from the files' headers at construction."""

    def __init__(self, lq: Sequence[str | os.PathLike], targets: Sequence[str | os.PathLike]):
        self.lq, self.targets = [Path(p) for p in lq], [Path(p) for p in targets]
        if len(self.lq) != len(self.targets):
            raise ValueError(f"{len(self.lq)} crops but {len(self.targets)} targets: give one target per crop")
        missing = [str(p) for p in self.lq + self.targets if not p.is_file()]
        if missing:
            raise ValueError(f"{len(missing)} crop/target file(s) not found, e.g. {missing[0]}")
        self.size = check_same_size(self.lq + self.targets, "crops and their targets") if self.lq else (0, 0)

    def __len__(self) -> int:
        return len(self.lq)

    def load(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        lq = torch.stack([read_image(self.lq[i]).rgb for i in indices])
        tg = torch.stack([read_image(self.targets[i]).rgb for i in indices])
        return _rgb(lq), _rgb(tg)


def split_holdout(n: int, fraction: float = 0.125, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) indices of n faces: round(n·fraction) faces (at least one when fraction > 0 and n ≥ 2)
    chosen by a seeded permutation, both lists sorted."""
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    k = 0 if fraction == 0 or n < 2 else max(1, round(n * float(fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[k:]), sorted(perm[:k])
