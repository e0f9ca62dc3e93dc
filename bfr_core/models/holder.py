"""`ModelHolder`: the device/dtype of a wrapper object that keeps its network in `.model`."""
from __future__ import annotations

import torch


class ModelHolder:
    """Mixin for wrappers (detector, prior, recognizer) around a `torch.nn.Module` stored as `model`."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype
