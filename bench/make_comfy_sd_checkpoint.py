"""Write a small random-weight single-file SD checkpoint that ComfyUI's CheckpointLoaderSimple accepts.

For wiring checks of workflows (BFR Restore Crops with SD/SDXL Model, BFR Identity Guider) without downloading a
real checkpoint: the output is noise-like, but every tensor has the name and shape a real checkpoint of the family
has where ComfyUI's model detection or its fixed configs need them, so the file loads as that family and runs
through CLIPTextEncode, KSampler / SamplerCustomAdvanced, VAEEncode / VAEDecode.

* ``--family sd15``: ComfyUI detects SD1.5 from model_channels 320, context_dim 768 and conv (not linear)
  transformer projections; the UNet here is shrunk (channel_mult [1, 2], one res block per level, transformer depth 1:
  108M parameters instead of 860M). The VAE (84M) and the CLIP-L text encoder (123M) keep their real sizes: ComfyUI
  builds them from fixed configs, and weights a file lacks would stay uninitialised. 315M parameters, 630 MB in fp16;
  ComfyUI v0.3.64 loads it as SD15 (EPS) with no missing or unexpected keys.
* ``--family sdxl`` is refused: ComfyUI recognises SDXL only with its full transformer depth [0, 0, 2, 2, 10, 10]
  (a 2.6B-parameter UNet) and the 695M-parameter OpenCLIP-bigG text encoder; no small file can pass as SDXL.

Only torch and safetensors are needed (run it with ComfyUI's own venv). Weights: N(0, 1/fan_in) per layer from a
seeded generator, norms at 1/0, the layers that write into residual streams scaled down so activations stay
finite; deterministic for a seed.

    python bench/make_comfy_sd_checkpoint.py --family sd15 --out ComfyUI/models/checkpoints/tiny_sd15.safetensors
"""
from __future__ import annotations

import argparse
import sys

import torch

CLIP_L = dict(width=768, layers=12, vocab=49408, positions=77, mlp=3072)
VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), res_blocks=2, z=4)
SD15_UNET = dict(model_channels=320, channel_mult=(1, 2), res_blocks=1, depth=1, context=768, in_ch=4)


class Writer:
    """Collects tensors by name; ``w``/``b``/``norm`` make seeded weights (fp16 on the CPU)."""

    def __init__(self, seed: int, dtype: torch.dtype = torch.float16):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}
        self.dtype = dtype

    def w(self, name: str, *shape: int, gain: float = 1.0, bias: bool = True) -> None:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        t = torch.randn(shape, generator=self.g) * (gain / fan_in ** 0.5)
        self.sd[name + ".weight"] = t.to(self.dtype)
        if bias:
            self.sd[name + ".bias"] = torch.zeros(shape[0], dtype=self.dtype)

    def norm(self, name: str, ch: int) -> None:
        self.sd[name + ".weight"] = torch.ones(ch, dtype=self.dtype)
        self.sd[name + ".bias"] = torch.zeros(ch, dtype=self.dtype)

    def embedding(self, name: str, n: int, dim: int) -> None:
        self.sd[name + ".weight"] = (torch.randn(n, dim, generator=self.g) * 0.02).to(self.dtype)


# ------------------------------------------------------------------------------------------ UNet (LDM layout)
def _resblock(wr: Writer, p: str, cin: int, cout: int, emb: int) -> None:
    wr.norm(p + "in_layers.0", cin)
    wr.w(p + "in_layers.2", cout, cin, 3, 3)
    wr.w(p + "emb_layers.1", cout, emb)
    wr.norm(p + "out_layers.0", cout)
    wr.w(p + "out_layers.3", cout, cout, 3, 3, gain=0.2)
    if cin != cout:
        wr.w(p + "skip_connection", cout, cin, 1, 1)


def _transformer(wr: Writer, p: str, ch: int, depth: int, context: int, linear: bool) -> None:
    wr.norm(p + "norm", ch)
    proj = (ch, ch) if linear else (ch, ch, 1, 1)
    wr.w(p + "proj_in", *proj)
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        for attn, kv in (("attn1", ch), ("attn2", context)):
            wr.w(f"{b}{attn}.to_q", ch, ch, bias=False)
            wr.w(f"{b}{attn}.to_k", ch, kv, bias=False)
            wr.w(f"{b}{attn}.to_v", ch, kv, bias=False)
            wr.w(f"{b}{attn}.to_out.0", ch, ch, gain=0.2)
        wr.w(b + "ff.net.0.proj", ch * 8, ch)  # GEGLU: 2 × (4 · ch)
        wr.w(b + "ff.net.2", ch, ch * 4, gain=0.2)
        for n in ("norm1", "norm2", "norm3"):
            wr.norm(b + n, ch)
    wr.w(p + "proj_out", *proj, gain=0.2)


def write_unet(wr: Writer, cfg: dict, prefix: str = "model.diffusion_model.", linear: bool = False) -> None:
    """openaimodel.UNetModel's state-dict names for ``cfg`` (attention at every level, as SD1.5's first three)."""
    mc, emb = cfg["model_channels"], cfg["model_channels"] * 4
    wr.w(prefix + "time_embed.0", emb, mc)
    wr.w(prefix + "time_embed.2", emb, emb)
    wr.w(prefix + "input_blocks.0.0", mc, cfg["in_ch"], 3, 3)
    chans, ch, k = [mc], mc, 1
    for level, mult in enumerate(cfg["channel_mult"]):
        for _ in range(cfg["res_blocks"]):
            _resblock(wr, f"{prefix}input_blocks.{k}.0.", ch, mc * mult, emb)
            ch = mc * mult
            _transformer(wr, f"{prefix}input_blocks.{k}.1.", ch, cfg["depth"], cfg["context"], linear)
            chans.append(ch)
            k += 1
        if level != len(cfg["channel_mult"]) - 1:
            wr.w(f"{prefix}input_blocks.{k}.0.op", ch, ch, 3, 3)
            chans.append(ch)
            k += 1
    _resblock(wr, prefix + "middle_block.0.", ch, ch, emb)
    _transformer(wr, prefix + "middle_block.1.", ch, cfg["depth"], cfg["context"], linear)
    _resblock(wr, prefix + "middle_block.2.", ch, ch, emb)
    k = 0
    for level, mult in reversed(list(enumerate(cfg["channel_mult"]))):
        for i in range(cfg["res_blocks"] + 1):
            _resblock(wr, f"{prefix}output_blocks.{k}.0.", ch + chans.pop(), mc * mult, emb)
            ch = mc * mult
            _transformer(wr, f"{prefix}output_blocks.{k}.1.", ch, cfg["depth"], cfg["context"], linear)
            if level and i == cfg["res_blocks"]:
                wr.w(f"{prefix}output_blocks.{k}.2.conv", ch, ch, 3, 3)
            k += 1
    wr.norm(prefix + "out.0", ch)
    wr.w(prefix + "out.2", cfg["in_ch"], ch, 3, 3, gain=0.2)


# ------------------------------------------------------------------------------------------ VAE (LDM layout)
def _vae_res(wr: Writer, p: str, cin: int, cout: int) -> None:
    wr.norm(p + "norm1", cin)
    wr.w(p + "conv1", cout, cin, 3, 3)
    wr.norm(p + "norm2", cout)
    wr.w(p + "conv2", cout, cout, 3, 3, gain=0.2)
    if cin != cout:
        wr.w(p + "nin_shortcut", cout, cin, 1, 1)


def _vae_mid(wr: Writer, p: str, ch: int) -> None:
    _vae_res(wr, p + "mid.block_1.", ch, ch)
    wr.norm(p + "mid.attn_1.norm", ch)
    for n in ("q", "k", "v"):
        wr.w(p + "mid.attn_1." + n, ch, ch, 1, 1)
    wr.w(p + "mid.attn_1.proj_out", ch, ch, 1, 1, gain=0.2)
    _vae_res(wr, p + "mid.block_2.", ch, ch)


def write_vae(wr: Writer, cfg: dict = VAE, prefix: str = "first_stage_model.") -> None:
    ch, mult, nr, z = cfg["ch"], cfg["ch_mult"], cfg["res_blocks"], cfg["z"]
    e = prefix + "encoder."
    wr.w(e + "conv_in", ch, 3, 3, 3)
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(nr):
            _vae_res(wr, f"{e}down.{i}.block.{j}.", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            wr.w(f"{e}down.{i}.downsample.conv", block_in, block_in, 3, 3)
    _vae_mid(wr, e, block_in)
    wr.norm(e + "norm_out", block_in)
    wr.w(e + "conv_out", 2 * z, block_in, 3, 3)
    wr.w(prefix + "quant_conv", 2 * z, 2 * z, 1, 1)
    wr.w(prefix + "post_quant_conv", z, z, 1, 1)
    d = prefix + "decoder."
    block_in = ch * mult[-1]
    wr.w(d + "conv_in", block_in, z, 3, 3)
    _vae_mid(wr, d, block_in)
    for i in reversed(range(len(mult))):
        for j in range(nr + 1):
            _vae_res(wr, f"{d}up.{i}.block.{j}.", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            wr.w(f"{d}up.{i}.upsample.conv", block_in, block_in, 3, 3)
    wr.norm(d + "norm_out", block_in)
    wr.w(d + "conv_out", 3, block_in, 3, 3)


# ------------------------------------------------------------------------------------------ CLIP-L text encoder
def write_clip_l(wr: Writer, prefix: str = "cond_stage_model.transformer.", cfg: dict = CLIP_L) -> None:
    t, width = prefix + "text_model.", cfg["width"]
    wr.embedding(t + "embeddings.token_embedding", cfg["vocab"], width)
    wr.embedding(t + "embeddings.position_embedding", cfg["positions"], width)
    for i in range(cfg["layers"]):
        p = f"{t}encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj"):
            wr.w(p + "self_attn." + n, width, width)
        wr.w(p + "self_attn.out_proj", width, width, gain=0.2)
        wr.norm(p + "layer_norm1", width)
        wr.w(p + "mlp.fc1", cfg["mlp"], width)
        wr.w(p + "mlp.fc2", width, cfg["mlp"], gain=0.2)
        wr.norm(p + "layer_norm2", width)
    wr.norm(t + "final_layer_norm", width)
    wr.sd[prefix + "text_projection.weight"] = torch.eye(width, dtype=wr.dtype)


def build(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    if family == "sdxl":
        raise SystemExit("sdxl: ComfyUI detects SDXL only at full size (UNet transformer depth [0, 0, 2, 2, 10, 10], "
                         "2.6B parameters, plus the 695M OpenCLIP-bigG text encoder): no small random file can pass "
                         "as SDXL. Use --family sd15 for wiring checks, a real SDXL checkpoint for SDXL.")
    if family != "sd15":
        raise SystemExit(f"unknown family {family!r} (sd15 or sdxl)")
    wr = Writer(seed)
    write_unet(wr, SD15_UNET)
    write_vae(wr)
    write_clip_l(wr)
    return wr.sd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=("sd15", "sdxl"), required=True)
    ap.add_argument("--out", required=True, help="the .safetensors file to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from safetensors.torch import save_file

    sd = build(args.family, args.seed)
    save_file(sd, args.out, metadata={"format": "pt", "note": f"random-weight {args.family} layout, not a model"})
    n = sum(t.numel() for t in sd.values())
    print(f"wrote {args.out}: {len(sd)} tensors, {n / 1e6:.1f}M parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
