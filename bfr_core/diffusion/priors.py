"""What a diffusion prior is to the sampler: `DiffusionPrior` (a loaded network + its training schedule) and the
`DiffusersUNetAdapter` that gives diffusers' UNet2DModel the same call signature. Loading lives in `loading`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.holder import ModelHolder
from .sampler import DenoiserPrior

__all__ = ["PriorLike", "DiffusionPrior", "DiffusersUNetAdapter"]


# The interface the sampler needs from any prior; defined next to its one user.
PriorLike = DenoiserPrior


class DiffusersUNetAdapter(nn.Module):
    """`forward(x, t)` → `UNet2DModel(x, t).sample`, with dtype handling like `IDDPMUNet`."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x: Tensor, t: Tensor | int | float) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.unet(x.to(self.dtype), t).sample.to(x.dtype).contiguous()


@dataclass
class DiffusionPrior(ModelHolder):
    """A loaded prior (see `PriorLike`). `alphas_cumprod` stays float64 on the CPU."""

    model: nn.Module = field(repr=False)
    alphas_cumprod: Tensor = field(repr=False)
    sample_size: int
    in_channels: int
    out_channels: int
    learned_variance: bool
    prediction_type: str = "epsilon"
    kind: str = "iddpm"  # "iddpm" (DifFace layout) or "diffusers"
    source: str = ""
    config: Any = field(default=None, repr=False)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DiffusionPrior":
        nn.Module.to(self.model, device=device, dtype=dtype)
        return self


# --------------------------------------------------------------------------- iDDPM (DifFace) files


# --------------------------------------------------------------------------- diffusers folders


# --------------------------------------------------------------------------- entry point


