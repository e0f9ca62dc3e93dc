"""Load a Stable Diffusion 1.x / 2.x / SDXL model as a `LatentDiffusionPrior` (used by `load_prior`).

Accepted:

* a diffusers pipeline folder (``model_index.json`` with ``unet/`` = UNet2DConditionModel, ``vae/``,
  ``scheduler/`` and ``text_encoder/``+``tokenizer/`` (SDXL: also ``text_encoder_2/``+``tokenizer_2/``)), loaded with
  the components' own ``from_pretrained`` (local files only). Without text encoders the prior needs
  ``embeddings=`` (precomputed `PromptEmbeddings`).
* a single-file checkpoint (``.safetensors`` with ``model.diffusion_model.`` keys, or ``.ckpt``) through diffusers'
  ``from_single_file``. diffusers needs each family's configs and tokenizer files for that: a local folder given
  as ``config=`` (any diffusers folder of the same family,
  e.g. one saved with ``save_pretrained``; its weights are not read). ``config=`` is required: without it
  diffusers would look the configs up on the Hub, which this library never does; the CheckpointError says so.

``dtype`` applies to every part except a VAE whose config says ``force_upcast`` (the SD/SDXL VAEs overflow in
fp16), which stays float32 when fp16 is asked for. The schedule comes from the scheduler config (``scaled_linear`` 0.00085…0.012 for SD/SDXL), the prediction type
(``epsilon`` or ``v_prediction``) from it too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import torch

from ..models.checkpoint import CheckpointError
from .latent import LatentDiffusionPrior
from .schedules import alphas_cumprod_from_scheduler_config

__all__ = ["LATENT_HINT", "is_latent_checkpoint", "is_latent_folder", "load_latent_prior"]

LATENT_HINT = ("An SD 1.x/2.x/SDXL model works as the prior as a diffusers folder (model_index.json, unet/, vae/, "
               "scheduler/, text_encoder/, tokenizer/) or as a single .safetensors checkpoint together with config= "
               "a local diffusers folder of the same family (only its config and tokenizer files are read).")

_SINGLE_FILE_PREFIX = "model.diffusion_model."


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc})") from exc


def is_latent_folder(folder: Path) -> bool:
    """Whether ``folder`` is a diffusers folder whose UNet is a UNet2DConditionModel (a text-to-image model)."""
    cfg = folder / "unet" / "config.json"
    return cfg.is_file() and _json(cfg).get("_class_name") == "UNet2DConditionModel"


def is_latent_checkpoint(path: Path) -> bool:
    """Whether a single file is an original-layout SD/SDXL checkpoint (keys under ``model.diffusion_model.``)."""
    if path.suffix == ".ckpt":
        return True
    if path.suffix != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith(_SINGLE_FILE_PREFIX) for k in f.keys())
    except Exception:  # unreadable: let the general loader name the problem
        return False


def _scheduler_facts(folder: Path) -> tuple[torch.Tensor, str]:
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = _json(cfg_path) if cfg_path.is_file() else {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                      "beta_end": 0.012}
    try:
        return alphas_cumprod_from_scheduler_config(cfg), str(cfg.get("prediction_type", "epsilon"))
    except ValueError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from exc


def _from_folder(folder: Path, device, dtype, **kw) -> LatentDiffusionPrior:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def load(cls, sub):
        try:
            return cls.from_pretrained(str(folder), subfolder=sub, local_files_only=True)
        except Exception as exc:  # diffusers/transformers raise many kinds; the folder and part are what matter
            raise CheckpointError(f"cannot load {sub}/ of {folder} ({type(exc).__name__}: {exc})") from exc

    unet, vae = load(UNet2DConditionModel, "unet"), load(AutoencoderKL, "vae")
    encoders, tokenizers = [], []
    if "embeddings" not in kw:
        import transformers

        for enc_sub, tok_sub in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            if not (folder / enc_sub / "config.json").is_file():
                continue
            cls = _json(folder / enc_sub / "config.json").get("architectures", ["CLIPTextModel"])[0]
            encoders.append(load(getattr(transformers, cls, transformers.CLIPTextModel), enc_sub))
            tokenizers.append(load(transformers.CLIPTokenizer, tok_sub))
        if not encoders:
            raise CheckpointError(f"{folder} has no text_encoder/: pass embeddings=PromptEmbeddings(...)")
    acp, prediction_type = _scheduler_facts(folder)
    return _assemble(unet, vae, encoders, tokenizers, acp, prediction_type, device, dtype, str(folder), **kw)


def _assemble(unet, vae, encoders, tokenizers, acp, prediction_type, device, dtype, source, **kw):
    for m in (unet, vae, *encoders):
        # SD/SDXL VAEs that overflow in fp16 say so (force_upcast): those stay float32
        keep32 = m is vae and dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        torch.nn.Module.to(m, device=device, dtype=torch.float32 if keep32 else dtype)  # (diffusers' .to() warns)
        m.eval().requires_grad_(False)
    return LatentDiffusionPrior(unet, vae, acp, prediction_type=prediction_type, text_encoders=encoders,
                                tokenizers=tokenizers, source=source, **kw)


def _from_single_file(path: Path, device, dtype, config: str | os.PathLike | None, **kw) -> LatentDiffusionPrior:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            sdxl = any(k.startswith("conditioner.embedders.1.") for k in f.keys())
    except Exception:
        sdxl = False
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    family = "SDXL" if sdxl else "SD 1.x/2.x"
    if config is None:  # diffusers would look the family's configs up on the Hub: never from here
        raise CheckpointError(
            f"{path} is a single-file {family} checkpoint; loading it needs the family's config and tokenizer files, "
            f"which are not downloaded here: pass config= a local diffusers folder of the same family, or convert the "
            f"file to a diffusers folder once. {LATENT_HINT}")
    try:
        pipe = cls.from_single_file(str(path), config=str(config), local_files_only=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot load {path} as a single-file {family} checkpoint with config={config} "
                              f"({type(exc).__name__}: {detail}). {LATENT_HINT}") from exc
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
    acp = alphas_cumprod_from_scheduler_config(dict(pipe.scheduler.config))
    prediction_type = str(pipe.scheduler.config.get("prediction_type", "epsilon"))
    return _assemble(pipe.unet, pipe.vae, encoders, tokenizers, acp, prediction_type, device, dtype, str(path), **kw)


def load_latent_prior(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      *, config: str | os.PathLike | None = None, **prior_kwargs) -> LatentDiffusionPrior:
    """A `LatentDiffusionPrior` from a diffusers folder or a single-file checkpoint (module docstring).
    ``prior_kwargs`` go to `LatentDiffusionPrior` (prompt, negative_prompt, embeddings, guidance_scale,
    sample_size, color_fix, vae_batch_size, …)."""
    path = Path(path)
    if path.is_dir():
        if not is_latent_folder(path):
            raise CheckpointError(f"{path} is not a diffusers text-to-image folder (no unet/config.json of a "
                                  f"UNet2DConditionModel). {LATENT_HINT}")
        return _from_folder(path, device, dtype, **prior_kwargs)
    return _from_single_file(path, device, dtype, config, **prior_kwargs)
