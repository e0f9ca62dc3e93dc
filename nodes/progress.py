"""Progress of a restore in ComfyUI: the backbone pass block by block, then the sampling steps, on one bar.

The library reports through one callback, `progress(done, total)`: first per backbone chunk (the last report of
that phase has done == total), then per denoising step. A backbone chunk can take a minute on a CPU, so forward
hooks on the backbone's blocks (its longest ModuleList: SwinIR's 8 residual groups) move the bar within a chunk and
let Cancel stop it there.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

from .comfy_glue import check_interrupted, log
from .memory import networks_of


def backbone_blocks(backbone: object) -> list[torch.nn.Module]:
    """The blocks a backbone runs in sequence: the longest ModuleList of its networks (none: no block progress)."""
    lists = [m for net in networks_of(backbone) for m in net.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


class RestoreProgress:
    """The progress callback of a FaceRestorer call on `faces` crops, `batch_size` at a time."""

    def __init__(self, faces: int, batch_size: int, backbone: object = None) -> None:
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(1)
        except ImportError:
            self._bar = None
        self.blocks = backbone_blocks(backbone) if backbone is not None else []
        self.has_backbone = bool(networks_of(backbone)) if backbone is not None else False
        self.in_backbone = self.has_backbone
        self.batch_size = max(1, batch_size)
        self.chunks_done, self.chunks_total = 0, max(1, math.ceil(faces / self.batch_size))
        self.block = 0
        self.faces = faces
        self.done_before, self.part_faces = 0, 0  # faces of the earlier calls, of this call (0: one call)

    def next_call(self, faces: int) -> None:
        """The restorer is called again, on the next `faces` of the faces (a batch restored in chunks): its
        backbone pass and steps fill that call's share of the one bar."""
        self.done_before += self.part_faces
        self.part_faces = faces
        self.in_backbone = self.has_backbone
        self.chunks_done, self.chunks_total, self.block = 0, max(1, math.ceil(faces / self.batch_size)), 0

    def __call__(self, done: int, total: int) -> None:
        check_interrupted()
        if self.in_backbone:
            self.chunks_done, self.chunks_total, self.block = done, total, 0
            self._show_backbone()
            if done >= total:
                self.in_backbone = False
                log.info("BFR: backbone estimate of %d face(s) done; sampling", self.part_faces or self.faces)
            return
        self._show(done, total)

    def _on_block(self, *_args) -> None:
        if not self.in_backbone:
            return
        check_interrupted()
        self.block += 1
        self._show_backbone()

    def _show_backbone(self) -> None:
        n = max(len(self.blocks), 1)
        self._show(self.chunks_done * n + min(self.block, n), self.chunks_total * n)

    def _show(self, value: int, total: int) -> None:
        if self.part_faces:  # one of several calls: its share of the bar, backbone in its first half
            start, weight = (0.0, 0.5) if self.in_backbone else (0.5, 0.5) if self.has_backbone else (0.0, 1.0)
            share = self.done_before + self.part_faces * (start + weight * value / max(1, total))
            value, total = round(1000 * share), 1000 * max(1, self.faces)
        if self._bar is not None:
            self._bar.update_absolute(value, total)

    @contextlib.contextmanager
    def watching_backbone(self) -> Iterator["RestoreProgress"]:
        """Block hooks on the backbone for the body (removed afterwards: the backbone is shared)."""
        if self.in_backbone:
            log.info("BFR: backbone estimate of %d face(s), then sampling", self.faces)
        handles = [b.register_forward_hook(self._on_block) for b in self.blocks] if self.has_backbone else []
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
