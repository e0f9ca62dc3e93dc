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
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..archs.iddpm_unet import IDDPMUNet, IDDPMUNetConfig
from ..models.checkpoint import CheckpointError, load_state_dict, load_strict, wrong_kind_error
from .priors import DiffusersUNetAdapter, DiffusionPrior
from .schedules import alphas_cumprod_from_scheduler_config, linear_alphas_cumprod

__all__ = ["PRIOR_HINT", "infer_iddpm_config", "is_iddpm_state_dict", "load_prior"]

PRIOR_HINT = (
    "DifFace's face prior is iddpm_ffhq512_ema500000.pth (~610 MiB, from the zsyOAOA/DifFace "
    "release): put it in ComfyUI/models/facerestore_models or pass --prior PATH. A diffusers "
    "UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors) is accepted too."
)


_IDDPM_MARKERS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight", "middle_block.1.qkv.weight")


def is_iddpm_state_dict(sd: Mapping[str, Tensor]) -> bool:
    return all(k in sd for k in _IDDPM_MARKERS)


def infer_iddpm_config(
    sd: Mapping[str, Tensor], image_size: int | None = None, num_head_channels: int = 64
) -> IDDPMUNetConfig:
    """Structure of an iDDPM UNet from its (prefix-free) state dict.

    The nominal image size is not in the weights; by default it is 8 px times 2^(levels-1) (512 for
    DifFace's 7 levels), which only names the attention resolutions — the network is the same.
    """
    mc = int(sd["time_embed.0.weight"].shape[1])
    in_ch = int(sd["input_blocks.0.0.weight"].shape[1])
    out_ch = int(sd["out.2.weight"].shape[0])
    n_inputs = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))

    levels: list[dict] = [{"mult": None, "blocks": 0, "attn": False}]
    conv_resample = True
    scale_shift = None
    for i in range(1, n_inputs):
        pre = f"input_blocks.{i}."
        if pre + "0.in_layers.2.weight" in sd:
            cout = int(sd[pre + "0.in_layers.2.weight"].shape[0])
            if cout % mc:
                raise ValueError(f"block {i} width {cout} is not a multiple of the base width {mc}")
            lv = levels[-1]
            if lv["mult"] not in (None, cout // mc):
                raise ValueError(f"block {i} changes width inside a level")
            lv["mult"] = cout // mc
            lv["blocks"] += 1
            lv["attn"] = lv["attn"] or (pre + "1.qkv.weight" in sd)
            ss = int(sd[pre + "0.emb_layers.1.weight"].shape[0]) == 2 * cout
            scale_shift = ss if scale_shift is None else scale_shift
        else:  # a downsample: strided conv (`.0.op`) or, with no weights, average pooling
            conv_resample = pre + "0.op.weight" in sd
            levels.append({"mult": None, "blocks": 0, "attn": False})
    if any(lv["blocks"] == 0 for lv in levels):
        raise ValueError("a level without residual blocks")
    n = len(levels)
    size = image_size or 8 * 2 ** (n - 1)
    return IDDPMUNetConfig(
        image_size=size,
        in_channels=in_ch,
        out_channels=out_ch,
        model_channels=mc,
        channel_mult=tuple(lv["mult"] for lv in levels),
        num_res_blocks=tuple(lv["blocks"] for lv in levels),
        attention_resolutions=tuple(size // 2**l for l, lv in enumerate(levels) if lv["attn"]),
        num_head_channels=num_head_channels,
        use_scale_shift_norm=bool(scale_shift),
        conv_resample=conv_resample,
    )


def _load_iddpm(
    sd: dict[str, Tensor], path: Path, device, dtype, config: IDDPMUNetConfig | None, sample_size: int | None
) -> DiffusionPrior:
    expected = "DifFace iDDPM UNet"
    if config is None:
        try:
            config = infer_iddpm_config(sd, image_size=sample_size)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} looks like a {expected} checkpoint but its layout is unusual ({exc}). {PRIOR_HINT}") from exc
    try:
        with torch.device("meta"):  # no allocation or random init: the file's tensors become the weights
            model = IDDPMUNet(config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build the UNet ({exc}); pass config= with the right head width") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_strict's final copy into meta tensors is a no-op
        load_strict(model, sd, path, expected)  # names the file and any key/shape mismatch
    for k in list(sd):
        v = sd[k].to(device=device, dtype=dtype)
        if v.device.type == "cpu" and v.data_ptr() % 64:
            v = v.clone()  # safetensors' CPU tensors are 16-byte aligned: realign for the conv kernels
        sd[k] = v
    model.load_state_dict(sd, strict=True, assign=True)
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
            f"{cfg_path} describes a {cls or 'unknown model'}; only an unconditional pixel-space "
            f"UNet2DModel can serve as the face prior here (latent SD/SDXL models belong in ComfyUI's "
            f"own sampler path). {PRIOR_HINT}"
        )
    weights = None
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"):
        if (unet_dir / name).is_file():
            weights = unet_dir / name
            break
    if weights is None:
        raise CheckpointError(f"{unet_dir} has config.json but no diffusion_pytorch_model.safetensors. {PRIOR_HINT}")

    from diffusers import UNet2DModel

    sd = load_state_dict(weights)
    unet = UNet2DModel.from_config({k: v for k, v in cfg.items()})
    load_strict(unet, sd, weights, "diffusers UNet2DModel (as described by its config.json)")
    del sd
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
    dtype: torch.dtype = torch.float32,
    *,
    config: IDDPMUNetConfig | None = None,
    sample_size: int | None = None,
    channels_last: bool = False,
) -> DiffusionPrior:
    """Load a diffusion prior from a DifFace-layout .pth/.safetensors file or a diffusers folder.

    `config` overrides the structure inferred from a DifFace-layout file; `sample_size` overrides
    the nominal training resolution; `channels_last` stores the conv weights channels-last (faster
    CPU convolutions; outputs stay NCHW). Raises `CheckpointError` (naming the file) for a
    missing, truncated or foreign file.
    """
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

    sd = load_state_dict(path)  # CheckpointError with the path for unreadable/truncated files
    if is_iddpm_state_dict(sd):
        return _load_iddpm(sd, path, device, dtype, config, sample_size)
    if "conv_in.weight" in sd and "time_embedding.linear_1.weight" in sd:
        raise CheckpointError(
            f"{path} holds diffusers UNet weights without their config.json: pass the folder "
            f"holding config.json and {path.name} instead of the file."
        )
    raise wrong_kind_error(path, "DifFace iDDPM UNet (diffusion prior)", sd, PRIOR_HINT)


