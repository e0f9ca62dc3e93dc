"""Write a diffusers SD 1.x / SDXL pipeline as an original (LDM/CompVis, "single-file") checkpoint, for tests.

The inverse of what ``from_single_file`` reads, written from the layouts themselves (not from diffusers' converter):

* UNet under ``model.diffusion_model.``: ``input_blocks.0.0`` = conv_in; down block b, layer j =
  ``input_blocks.{1 + b(L+1) + j}`` (``.0`` resnet, ``.1`` transformer), its downsampler ``input_blocks.{1 + b(L+1) +
  L}.0.op``; ``middle_block.0/1/2`` = resnet, transformer, resnet; up block b, layer j (L+1 layers) =
  ``output_blocks.{b(L+1) + j}``, its upsampler ``.1.conv`` (``.2.conv`` after a transformer); ``time_embed.0/2``,
  ``label_emb.0.0/0.2`` (SDXL's add embedding), ``out.0/2``; resnets ``in_layers.0/2``, ``emb_layers.1``,
  ``out_layers.0/3``, ``skip_connection``.
* VAE under ``first_stage_model.``: ``encoder.down.{i}.block.{j}`` / ``.downsample``, ``decoder.up.{n-1-i}`` (LDM
  counts the decoder's levels from the bottom), ``mid.block_1/2``, ``mid.attn_1`` (``norm``, ``q/k/v``,
  ``proj_out`` as 1x1 convs), ``norm_out``, ``nin_shortcut``.
* Text: SD ``cond_stage_model.transformer.`` + the transformers CLIP names; SDXL ``conditioner.embedders.0.transformer.``
  (CLIP-L, transformers names) and ``conditioner.embedders.1.model.`` (OpenCLIP names: ``resblocks``, fused
  ``in_proj``, ``text_projection`` as [width, projection]).
"""
from __future__ import annotations

import re

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    L = int(unet.config.layers_per_block)
    with_attn = {i for i, b in enumerate(unet.up_blocks) if getattr(b, "attentions", None)}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in unet.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        if module in fixed:
            new = f"{fixed[module]}.{leaf}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"input_blocks.{1 + b * (L + 1) + j}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * (L + 1) + L}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"output_blocks.{b * (L + 1) + j}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            new = f"output_blocks.{b * (L + 1) + L}.{2 if b in with_attn else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n_up = len(vae.config.up_block_types)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", new):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if value.ndim == 2:  # LDM keeps the attention projections as 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def _clip_state(encoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under the transformers checkpoint names (``text_model.…``; transformers 5's
    CLIPTextModel drops that prefix in ``state_dict()``)."""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in encoder.state_dict().items()}


def open_clip_to_ldm(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's names (SDXL's second text encoder)."""
    sd, out = _clip_state(encoder), {}
    out[prefix + "positional_embedding"] = sd.pop("text_model.embeddings.position_embedding.weight")
    out[prefix + "token_embedding.weight"] = sd.pop("text_model.embeddings.token_embedding.weight")
    out[prefix + "text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    for leaf in ("weight", "bias"):
        out[f"{prefix}ln_final.{leaf}"] = sd.pop(f"text_model.final_layer_norm.{leaf}")
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat([sd.pop(f"{src}self_attn.{p}_proj.{leaf}") for p in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{b}.{leaf}"] = sd.pop(f"{src}{a}.{leaf}")
    sd.pop("text_model.embeddings.position_ids", None)
    if sd:
        raise KeyError(f"no OpenCLIP name for {sorted(sd)}")
    return out


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The single-file state dict of a StableDiffusion(XL)Pipeline (contiguous tensors, ready for save_file)."""
    out = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is None:
        out.update({"cond_stage_model.transformer." + k: v for k, v in _clip_state(pipe.text_encoder).items()})
    else:
        out.update({"conditioner.embedders.0.transformer." + k: v for k, v in _clip_state(pipe.text_encoder).items()})
        out.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
