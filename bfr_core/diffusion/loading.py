"""Load a pixel-space diffusion prior: DifFace's iDDPM UNet file or a diffusers UNet2DModel folder.

`load_prior(path)` returns a `DiffusionPrior`: the network (`prior.model(x_t, t)` → raw output in
the checkpoint's own channel layout) plus the float64 training schedule and the few facts a
sampler needs. Accepted:

* DifFace's `iddpm_ffhq512_ema500000.pth` (flat state dict, `module.` prefixes) or the same tensors
  as `.safetensors`; the UNet's structure (base width, multipliers, blocks per level, attention
  levels, scale-shift norm, resampling) is read off the key names and shapes, so smaller models
  saved in the same layout load too. Attention head width (64) and the nominal image size are
  not stored in the weights: pass `config=` / `sample_size=` for models that differ there.
* a diffusers `UNet2DModel` folder (`config.json` + `diffusion_pytorch_model.safetensors`), or a
  pipeline folder holding `unet/` and `scheduler/`; the schedule comes from a
  `scheduler_config.json` when one is found, else the DDPM linear default.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import torch
from torch import nn

from ..archs.iddpm_unet import IDDPMUNet, IDDPMUNetConfig, infer_iddpm_config, is_iddpm_state_dict
from ..archs.registry import load_architecture
from ..models.checkpoint import CheckpointError
from ..models.files import check_licence
from ..utils.precision import parse_dtype
from .latent import LatentDiffusionPrior
from .latent_loading import is_latent_checkpoint, is_latent_folder, load_latent_prior
from .priors import DiffusersUNetAdapter, DiffusionPrior
from .schedules import alphas_cumprod_from_scheduler_config, linear_alphas_cumprod

__all__ = ["PRIOR_HINT", "infer_iddpm_config", "is_iddpm_state_dict", "load_prior"]

PRIOR_HINT = (
    "DifFace's face prior is iddpm_ffhq512_ema500000.pth (~610 MiB, from the zsyOAOA/DifFace "
    "release): put it in ComfyUI/models/facerestore_models (outside ComfyUI: the "
    "facerestore_models folder of your models folder) or give its full path. A diffusers "
    "UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors) is accepted too."
)


def _iddpm_prior(model: IDDPMUNet, path: Path, sample_size: int | None) -> DiffusionPrior:
    config = model.config
    model.eval().requires_grad_(False)
    return DiffusionPrior(
        model=model,
        alphas_cumprod=linear_alphas_cumprod(1000, 1e-4, 0.02),
        sample_size=sample_size or config.image_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        learned_variance=config.out_channels == 2 * config.in_channels,
        prediction_type="epsilon",
        kind="iddpm",
        source=str(path),
        config=config,
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc})") from exc


def _load_diffusers(folder: Path, device, dtype, sample_size: int | None) -> DiffusionPrior:
    unet_dir = folder
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        unet_dir = folder / "unet"  # a pipeline folder
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{folder} is a folder without a diffusers config.json (expected a UNet2DModel folder "
            f"with config.json + diffusion_pytorch_model.safetensors). {PRIOR_HINT}"
        )
    cfg = _read_json(cfg_path)
    cls = cfg.get("_class_name")
    if cls != "UNet2DModel":
        raise CheckpointError(
            f"{cfg_path} describes a {cls or 'unknown model'}; a pixel prior must be an unconditional "
            f"UNet2DModel, and an SD/SDXL model must be given as its whole pipeline folder (model_index.json, "
            f"unet/, vae/, scheduler/, text encoders). {PRIOR_HINT}"
        )
    weights = None
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"):
        if (unet_dir / name).is_file():
            weights = unet_dir / name
            break
    if weights is None:
        raise CheckpointError(f"{unet_dir} has config.json but no diffusion_pytorch_model.safetensors. {PRIOR_HINT}")

    unet = load_architecture(weights, "prior", ids=("diffusers_unet2d",), unet_config=cfg,
                             expected="diffusers UNet2DModel weights", hint=PRIOR_HINT).module
    nn.Module.to(unet, device=device, dtype=dtype)  # diffusers' own .to() warns about dtype casts
    unet.eval().requires_grad_(False)

    sched_cfg: dict = {}
    for cand in (unet_dir / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                 unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            sched_cfg = _read_json(cand)
            break
    try:
        acp = alphas_cumprod_from_scheduler_config(sched_cfg) if sched_cfg else linear_alphas_cumprod()
    except ValueError as exc:
        raise CheckpointError(f"{folder}: {exc}") from exc

    in_ch = int(cfg.get("in_channels", 3))
    out_ch = int(cfg.get("out_channels", 3))
    size = cfg.get("sample_size") or 0
    if isinstance(size, (list, tuple)):
        size = size[0]
    learned = out_ch == 2 * in_ch or sched_cfg.get("variance_type") in ("learned", "learned_range")
    return DiffusionPrior(
        model=DiffusersUNetAdapter(unet),
        alphas_cumprod=acp,
        sample_size=int(sample_size or size),
        in_channels=in_ch,
        out_channels=out_ch,
        learned_variance=bool(learned),
        prediction_type=sched_cfg.get("prediction_type", "epsilon"),
        kind="diffusers",
        source=str(folder),
        config=cfg,
    )


def load_prior(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    *,
    config: IDDPMUNetConfig | str | os.PathLike | None = None,
    sample_size: int | None = None,
    channels_last: bool = False,
    **latent_options,
) -> DiffusionPrior | LatentDiffusionPrior:
    """Load a diffusion prior from a DifFace-layout .pth/.safetensors file or a diffusers folder.

    `config` overrides the structure inferred from a DifFace-layout file; `sample_size` overrides
    the nominal training resolution; `channels_last` stores the conv weights channels-last (faster
    CPU convolutions; outputs stay NCHW). `dtype` may be a name ("fp32", "bf16", "fp16", or "auto":
    the device's fastest correct precision, `bfr_core.utils.precision.preferred_dtype`). Raises
    `CheckpointError` (naming the file) for a missing, truncated or foreign file.

    SD 1.x/2.x/SDXL text-to-image models (a diffusers pipeline folder, or a single-file checkpoint with
    `config` = a local diffusers folder of the same family) load as a `LatentDiffusionPrior`
    (`latent_loading`); `latent_options` (prompt, negative_prompt, embeddings, guidance_scale, color_fix,
    vae_batch_size, vae_tiling, …) go to it, `sample_size` is its restore size (default 512).
    """
    check_licence(path)  # $BFR_COMMERCIAL_ONLY
    if isinstance(dtype, str):
        dtype = parse_dtype(dtype, device)
    p = Path(path)
    if p.name == "model_index.json" and p.is_file():
        p = p.parent
    if (p.is_dir() and is_latent_folder(p)) or (p.is_file() and is_latent_checkpoint(p)):
        if sample_size is not None:
            latent_options["sample_size"] = sample_size
        prior = load_latent_prior(p, device, dtype, config=None if isinstance(config, IDDPMUNetConfig) else config,
                                  **latent_options)
        if channels_last:
            nn.Module.to(prior.unet, memory_format=torch.channels_last)
        return prior
    if latent_options:
        raise ValueError(f"{sorted(latent_options)} apply to SD/SDXL (latent) priors only; {p} is a pixel prior")
    prior = _load_prior(path, device, dtype, config, sample_size)
    if channels_last:
        nn.Module.to(prior.model, memory_format=torch.channels_last)
    return prior


def _load_prior(path, device, dtype, config, sample_size) -> DiffusionPrior:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"prior model not found: {path}. {PRIOR_HINT}")
    if path.is_dir():
        return _load_diffusers(path, device, dtype, sample_size)
    if path.name in ("config.json", "model_index.json"):
        return _load_diffusers(path.parent, device, dtype, sample_size)

    # The registry reads the file (CheckpointError with the path when unreadable/truncated), recognises the
    # family (a diffusers UNet's weights without their config.json get their own explanation), and names what a
    # file of another kind is.
    loaded = load_architecture(path, "prior", expected="DifFace iDDPM UNet (diffusion prior)", hint=PRIOR_HINT,
                               config=config, sample_size=sample_size, device=device, dtype=dtype)
    return _iddpm_prior(loaded.module, path, sample_size)


