"""`LatentDiffusionPrior`: a Stable Diffusion 1.x / 2.x / SDXL text-to-image model as the face prior.

The DifFace recipe (`restore_faces`) runs unchanged on it: the backbone's estimate is VAE-encoded (`encode`), noised
to the start step, denoised in latent space by the UNet with classifier-free guidance (CFG) on a prompt
(`denoise`), and decoded (`decode`); the colour fix against the estimate is `restore_faces`' ``color_fix`` (the
prior's ``color_fix`` is the default).

Per model call (``denoise(z_t, t)``), with CFG scale s > 1 (diffusers' convention, s ≤ 1 = no CFG, one pass)::

    out_u, out_c = unet([z_t, z_t], t, encoder_hidden_states=[negative, positive], **added).chunk(2)
    prediction   = out_u + s · (out_c − out_u)           in the UNet's own prediction type (ε or v)

SDXL (``unet.config.addition_embed_type == "text_time"``) also gets ``added = {text_embeds: pooled text embeds,
time_ids: [orig_h, orig_w, crop_top, crop_left, target_h, target_w]}`` (refiner-style UNets whose add embedding
expects 5 numbers get ``[orig_h, orig_w, crop_top, crop_left, aesthetic score]``, negative aesthetic score for the
unconditional half). Defaults: original and target size = the restore size (``sample_size``), crop (0, 0) — the
"centred, full-resolution photo" conditioning. This is what diffusers' StableDiffusion(XL)Img2ImgPipeline computes;
tests/test_latent_diffusion.py checks equality to 1e-5 on tiny random models.

Prompts: `PromptEmbeddings` (precomputed, e.g. from ComfyUI or another encoder) or text encoded once with the
model's own text encoder(s) and tokenizer(s) (`encode_prompt`; SD: the last hidden state of one CLIP text encoder;
SDXL: the penultimate hidden states of both encoders concatenated, the pooled projection of the second). Defaults:
a neutral portrait prompt and a negative prompt against the usual restoration failures (`DEFAULT_PROMPT`,
`DEFAULT_NEGATIVE_PROMPT`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from ..utils import device_dtype_of
from ..utils.color_fix import check_color_fix
from .priors import LatentPrior

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "DEFAULT_PROMPT", "LatentDiffusionPrior", "PromptEmbeddings", "encode_prompt"]

DEFAULT_PROMPT = "a high-quality portrait photo of a face, natural skin texture, sharp focus, detailed eyes"
DEFAULT_NEGATIVE_PROMPT = ("blurry, low quality, jpeg artifacts, noise, distorted face, deformed eyes, cartoon, "
                           "painting, oversmoothed skin, makeup")
# Not AuthFace's: its release (EthanLiang99/AuthFace option/test/test_base.sh, test_face_xl.py) runs 50 DDPM steps
# from pure noise with a ControlNet on the LQ face and CFG 8 (argparse default 6.5); its --start_point/--start_steps
# are parsed but never reach the pipeline. Starting from the estimate at partial strength without a ControlNet,
# a milder scale keeps the estimate's colours and identity; 4 is our choice, not a measured optimum.
DEFAULT_CFG = 4.0


@dataclass
class PromptEmbeddings:
    """Text conditioning: ``positive``/``negative`` [1 or B, L, D] (cross-attention states); SDXL also
    ``pooled``/``negative_pooled`` [1 or B, P]. ``negative`` None = zeros (SDXL's "empty prompt" convention)."""

    positive: Tensor
    negative: Tensor | None = None
    pooled: Tensor | None = None
    negative_pooled: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.positive, Tensor) or self.positive.ndim != 3:
            raise ValueError(f"prompt embeddings must be [B, L, D], got {getattr(self.positive, 'shape', self.positive)}")
        if self.negative is not None and self.negative.shape[1:] != self.positive.shape[1:]:
            raise ValueError(f"negative prompt embeddings {tuple(self.negative.shape)} do not match the positive "
                             f"ones {tuple(self.positive.shape)} (same length and width needed)")
        if (self.pooled is None) != (self.negative_pooled is None) and self.negative_pooled is not None:
            raise ValueError("negative_pooled given without pooled")


def _tokenize(tokenizer: Any, texts: list[str]) -> Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompt(text_encoders: Sequence[Any], tokenizers: Sequence[Any], prompt: str,
                  negative_prompt: str | None, *, sdxl: bool) -> PromptEmbeddings:
    """`PromptEmbeddings` of one prompt pair with the model's own encoder(s) (module docstring); float32, CPU.

    SD (one encoder): last hidden state. SDXL (``sdxl``; one or two encoders): penultimate hidden states
    concatenated along the width, pooled = the last encoder's projected output (CLIPTextModelWithProjection's
    ``text_embeds``). ``negative_prompt`` None with SDXL = zero embeddings (SDXL's convention for "no negative")."""
    if len(text_encoders) != len(tokenizers) or not text_encoders:
        raise ValueError(f"need one tokenizer per text encoder, got {len(tokenizers)} for {len(text_encoders)}")

    def run(texts: list[str]) -> tuple[Tensor, Tensor | None]:
        states, pooled = [], None
        for enc, tok in zip(text_encoders, tokenizers):
            dev = device_dtype_of(enc)[0] or torch.device("cpu")
            ids = _tokenize(tok, texts).to(dev)
            if not sdxl:
                mask = None
                if getattr(getattr(enc, "config", None), "use_attention_mask", False):
                    mask = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                               return_tensors="pt").attention_mask.to(dev)
                states.append(enc(ids, attention_mask=mask)[0])
                continue
            out = enc(ids, output_hidden_states=True)
            if out[0].ndim == 2:
                pooled = out[0]
            states.append(out.hidden_states[-2])
        return torch.cat([s.float().cpu() for s in states], dim=-1), None if pooled is None else pooled.float().cpu()

    pos, pooled = run([prompt])
    if negative_prompt is None and sdxl:
        return PromptEmbeddings(pos, torch.zeros_like(pos), pooled, None if pooled is None else torch.zeros_like(pooled))
    neg, neg_pooled = run([negative_prompt or ""])
    return PromptEmbeddings(pos, neg, pooled, neg_pooled)


class LatentDiffusionPrior(LatentPrior):
    """A `Prior` around diffusers' UNet2DConditionModel and an AutoencoderKL-like VAE (module docstring).

    Args:
        unet: UNet2DConditionModel (or any module with its call signature and ``config``).
        vae: any object with AutoencoderKL's ``encode(x).latent_dist`` / ``decode(z).sample`` (and ``config``).
        alphas_cumprod: the training schedule (float64 [T]), e.g. from the scheduler config.
        prediction_type: "epsilon" (SD 1.x, SDXL) or "v_prediction" (SD 2.x 768).
        scaling_factor / shift_factor: the VAE's latent scaling (default: ``vae.config``'s, else 0.18215 / 0).
        embeddings: `PromptEmbeddings`; else ``prompt``/``negative_prompt`` are encoded with ``text_encoders`` and
            ``tokenizers`` (`set_prompt` re-encodes).
        guidance_scale: CFG scale s (≤ 1: one unconditional-free pass on the positive prompt).
        sample_size: the side the faces are restored at (default 512: aligned crops, as AuthFace; must be a multiple
            of the VAE's factor 8).
        original_size, target_size, crops_coords_top_left, aesthetic_score, negative_aesthetic_score: SDXL's
            micro-conditioning (default: sample_size, sample_size, (0, 0), 6.0, 2.5).
        color_fix: "wavelet" (default), "adain" or "none": `restore_faces`' default colour fix for this prior.
        vae_batch_size: images per VAE call; vae_tiling: switch the VAE's own tiling on (``vae.enable_tiling()``).
    """

    def __init__(self, unet: Any, vae: Any, alphas_cumprod: Tensor, *, prediction_type: str = "epsilon",
                 scaling_factor: float | None = None, shift_factor: float | None = None,
                 text_encoders: Sequence[Any] = (), tokenizers: Sequence[Any] = (),
                 prompt: str = DEFAULT_PROMPT, negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT,
                 embeddings: PromptEmbeddings | None = None, guidance_scale: float = DEFAULT_CFG,
                 sample_size: int = 512, original_size: tuple[int, int] | None = None,
                 target_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                 aesthetic_score: float = 6.0, negative_aesthetic_score: float = 2.5, color_fix: str = "wavelet",
                 vae_batch_size: int | None = 4, vae_tiling: bool = False, source: str = ""):
        vcfg = getattr(vae, "config", None)
        factor = 2 ** (len(vcfg.block_out_channels) - 1) if getattr(vcfg, "block_out_channels", None) else 8
        if int(sample_size) % factor:
            raise ValueError(f"sample_size must be a multiple of the VAE's downscale factor {factor}, got {sample_size}")
        if scaling_factor is None:
            scaling_factor = float(getattr(vcfg, "scaling_factor", None) or 0.18215)
        if shift_factor is None:
            shift_factor = float(getattr(vcfg, "shift_factor", None) or 0.0)
        ucfg = unet.config
        super().__init__(unet, vae, alphas_cumprod, int(sample_size) // factor, int(ucfg.in_channels), scaling_factor,
                         prediction_type, shift_factor=shift_factor, sample_size=int(sample_size),
                         vae_batch_size=vae_batch_size)
        self.color_fix = check_color_fix(color_fix)
        self.unet = unet
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.guidance_scale = float(guidance_scale)
        self.sdxl = getattr(ucfg, "addition_embed_type", None) == "text_time"
        s = int(sample_size)
        self.original_size = tuple(original_size or (s, s))
        self.target_size = tuple(target_size or (s, s))
        self.crops_coords_top_left = tuple(crops_coords_top_left)
        self.aesthetic_score, self.negative_aesthetic_score = float(aesthetic_score), float(negative_aesthetic_score)
        self.source = source
        if vae_tiling and callable(getattr(vae, "enable_tiling", None)):
            vae.enable_tiling()
        if embeddings is None:
            if not self.text_encoders:
                raise ValueError("LatentDiffusionPrior needs embeddings=PromptEmbeddings(...) or the model's "
                                 "text_encoders and tokenizers to encode a prompt")
            self.set_prompt(prompt, negative_prompt)
        else:
            self.set_embeddings(embeddings)

    # --------------------------------------------------------------------------------------------- prompt
    def set_prompt(self, prompt: str, negative_prompt: str | None = DEFAULT_NEGATIVE_PROMPT) -> None:
        """Encode a new prompt pair with the model's own text encoder(s)."""
        self.set_embeddings(encode_prompt(self.text_encoders, self.tokenizers, prompt, negative_prompt,
                                          sdxl=self.sdxl))

    def set_embeddings(self, embeddings: PromptEmbeddings) -> None:
        if not isinstance(embeddings, PromptEmbeddings):
            raise ValueError(f"embeddings must be PromptEmbeddings, got {type(embeddings).__name__}")
        width = getattr(self.unet.config, "cross_attention_dim", None)
        if isinstance(width, int) and embeddings.positive.shape[-1] != width:
            raise ValueError(f"prompt embeddings have width {embeddings.positive.shape[-1]} but the UNet's cross "
                             f"attention takes {width} (embeddings from another model family?)")
        if self.sdxl and embeddings.pooled is None:
            raise ValueError("an SDXL UNet needs pooled prompt embeddings (PromptEmbeddings.pooled)")
        neg = embeddings.negative if embeddings.negative is not None else torch.zeros_like(embeddings.positive)
        neg_pooled = embeddings.negative_pooled
        if embeddings.pooled is not None and neg_pooled is None:
            neg_pooled = torch.zeros_like(embeddings.pooled)
        self.embeddings = replace(embeddings, negative=neg, negative_pooled=neg_pooled)

    # --------------------------------------------------------------------------------------------- UNet call
    def _time_ids(self, n: int, negative: bool, like: Tensor) -> Tensor:
        add = self.unet.add_embedding.linear_1.in_features if hasattr(self.unet, "add_embedding") else None
        per = int(self.unet.config.addition_time_embed_dim)
        pooled = int(self.embeddings.pooled.shape[-1])
        if add is not None and add == per * 5 + pooled:  # refiner-style: aesthetic score instead of target size
            score = self.negative_aesthetic_score if negative else self.aesthetic_score
            ids = [*self.original_size, *self.crops_coords_top_left, score]
        else:
            ids = [*self.original_size, *self.crops_coords_top_left, *self.target_size]
        return torch.tensor([ids], dtype=like.dtype, device=like.device).expand(n, -1)

    @staticmethod
    def _rows(x: Tensor, n: int, like: Tensor) -> Tensor:
        """One row for all faces, or one row per face of this call (per-face prompts)."""
        if x.shape[0] not in (1, n):
            raise ValueError(f"prompt embeddings have {x.shape[0]} rows for {n} faces in this call: give one row, or "
                             f"one per face through restore_faces(cond=PromptEmbeddings(...)), which splits them "
                             f"with the faces")
        x = x.to(device=like.device, dtype=like.dtype)
        return x.expand(n, *x.shape[1:]) if x.shape[0] == 1 else x

    def denoise(self, latents_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The UNet's prediction with CFG (module docstring). ``cond``: None = the prior's prompt; a
        `PromptEmbeddings` for this call (one row for all faces or one per face: per-face prompts, which
        `restore_faces(cond=...)` splits with the faces); a dict = raw UNet keyword arguments (no CFG)."""
        if isinstance(cond, dict):
            return super().denoise(latents_t, t, cond)
        emb = self.embeddings if cond is None else cond
        if not isinstance(emb, PromptEmbeddings):
            raise ValueError(f"cond must be None, PromptEmbeddings or a dict of UNet arguments, got {type(cond).__name__}")
        n = latents_t.shape[0]
        dev, dt = device_dtype_of(self.unet)
        like = latents_t.new_empty(0, device=dev or latents_t.device, dtype=dt or latents_t.dtype)
        cfg = self.guidance_scale > 1.0
        states = [self._rows(emb.positive, n, like)]
        pooled = [self._rows(emb.pooled, n, like)] if self.sdxl else []
        times = [self._time_ids(n, False, like)] if self.sdxl else []
        if cfg:  # unconditional half first, as diffusers
            neg = emb.negative if emb.negative is not None else torch.zeros_like(emb.positive)
            states.insert(0, self._rows(neg, n, like))
            if self.sdxl:
                neg_pooled = emb.negative_pooled if emb.negative_pooled is not None else torch.zeros_like(emb.pooled)
                pooled.insert(0, self._rows(neg_pooled, n, like))
                times.insert(0, self._time_ids(n, True, like))
        k = len(states)
        kwargs: dict[str, Any] = {"encoder_hidden_states": torch.cat(states)}
        if self.sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.cat(pooled), "time_ids": torch.cat(times)}
        x = latents_t.to(like).repeat(k, 1, 1, 1)
        out = self.unet(x, t.to(like.device).repeat(k), **kwargs)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out
        if not cfg:
            return out
        uncond, text = out.chunk(2)
        return uncond + self.guidance_scale * (text - uncond)
