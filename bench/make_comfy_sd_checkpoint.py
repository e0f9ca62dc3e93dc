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
* ``--family sdxl`` writes a FULL-SIZE SDXL-layout file: ComfyUI recognises SDXL only with its real UNet
  (channel_mult [1, 2, 4], transformer depth [0, 0, 2, 2, 10, 10] with linear projections, context 2048,
  adm_in_channels 2816: 2.57B parameters) and, for the text side, CLIP-L plus the 695M-parameter OpenCLIP-bigG
  encoder (``conditioner.embedders.{0,1}``), so no small file can pass as SDXL. 3.47B parameters, a ~7 GB fp16
  file; that size is unavoidable. The tensors are drawn one at a time and streamed to disk (the safetensors header
  is written first from the shapes), so the script itself stays under ~1 GB RSS; loading the file in ComfyUI does not.

Only torch and safetensors are needed (run it with ComfyUI's own venv). Weights: N(0, 1/fan_in) per layer from a
seeded generator, norms at 1/0, the layers that write into residual streams scaled down so activations stay
finite; deterministic for a seed.

    python bench/make_comfy_sd_checkpoint.py --family sd15 --out ComfyUI/models/checkpoints/tiny_sd15.safetensors
    python bench/make_comfy_sd_checkpoint.py --family sdxl --out ComfyUI/models/checkpoints/random_sdxl.safetensors
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from typing import Callable, Iterator

import torch

CLIP_L = dict(width=768, layers=12, vocab=49408, positions=77, mlp=3072)
VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), res_blocks=2, z=4)
CLIP_G = dict(width=1280, layers=32, vocab=49408, positions=77, mlp=5120)
# depth: transformer blocks per res block at each level; adm: width of SDXL's pooled-text + size vector (label_emb)
SD15_UNET = dict(model_channels=320, channel_mult=(1, 2), res_blocks=1, depth=(1, 1), middle_depth=1, context=768,
                 in_ch=4, adm=0, linear=False)
SDXL_UNET = dict(model_channels=320, channel_mult=(1, 2, 4), res_blocks=2, depth=(0, 2, 10), middle_depth=10,
                 context=2048, in_ch=4, adm=2816, linear=True)


class Writer:
    """Records tensors by name and shape; ``w``/``b``/``norm`` describe seeded weights (fp16 on the CPU).

    Values are drawn only when ``tensors()`` walks the records in order (same draws, same order for a seed), so a
    multi-GB layout can be streamed to disk one tensor at a time.
    """

    def __init__(self, seed: int, dtype: torch.dtype = torch.float16):
        self.g = torch.Generator().manual_seed(seed)
        self.specs: list[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]] = []
        self.dtype = dtype

    def _add(self, name: str, shape: tuple[int, ...], make: Callable[[], torch.Tensor]) -> None:
        self.specs.append((name, tuple(shape), make))

    def w(self, name: str, *shape: int, gain: float = 1.0, bias: bool = True) -> None:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        self._add(name + ".weight", shape,
                  lambda: (torch.randn(shape, generator=self.g) * (gain / fan_in ** 0.5)).to(self.dtype))
        if bias:
            self._add(name + ".bias", (shape[0],), lambda: torch.zeros(shape[0], dtype=self.dtype))

    def norm(self, name: str, ch: int) -> None:
        self._add(name + ".weight", (ch,), lambda: torch.ones(ch, dtype=self.dtype))
        self._add(name + ".bias", (ch,), lambda: torch.zeros(ch, dtype=self.dtype))

    def normal(self, name: str, *shape: int, std: float) -> None:
        self._add(name, shape, lambda: (torch.randn(shape, generator=self.g) * std).to(self.dtype))

    def embedding(self, name: str, n: int, dim: int) -> None:
        self.normal(name + ".weight", n, dim, std=0.02)

    def fixed(self, name: str, t: torch.Tensor) -> None:
        self._add(name, tuple(t.shape), lambda: t.to(self.dtype))

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, _, make in self.specs:
            yield name, make()


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


def write_unet(wr: Writer, cfg: dict, prefix: str = "model.diffusion_model.") -> None:
    """openaimodel.UNetModel's state-dict names for ``cfg`` (per-level transformer depth, optional adm label_emb)."""
    mc, emb, lin = cfg["model_channels"], cfg["model_channels"] * 4, cfg["linear"]
    wr.w(prefix + "time_embed.0", emb, mc)
    wr.w(prefix + "time_embed.2", emb, emb)
    if cfg["adm"]:  # SDXL: pooled CLIP-G text + size/crop Fourier features, added to the time embedding
        wr.w(prefix + "label_emb.0.0", emb, cfg["adm"])
        wr.w(prefix + "label_emb.0.2", emb, emb)
    wr.w(prefix + "input_blocks.0.0", mc, cfg["in_ch"], 3, 3)
    chans, ch, k = [mc], mc, 1
    for level, mult in enumerate(cfg["channel_mult"]):
        depth = cfg["depth"][level]
        for _ in range(cfg["res_blocks"]):
            _resblock(wr, f"{prefix}input_blocks.{k}.0.", ch, mc * mult, emb)
            ch = mc * mult
            if depth:
                _transformer(wr, f"{prefix}input_blocks.{k}.1.", ch, depth, cfg["context"], lin)
            chans.append(ch)
            k += 1
        if level != len(cfg["channel_mult"]) - 1:
            wr.w(f"{prefix}input_blocks.{k}.0.op", ch, ch, 3, 3)
            chans.append(ch)
            k += 1
    _resblock(wr, prefix + "middle_block.0.", ch, ch, emb)
    _transformer(wr, prefix + "middle_block.1.", ch, cfg["middle_depth"], cfg["context"], lin)
    _resblock(wr, prefix + "middle_block.2.", ch, ch, emb)
    k = 0
    for level, mult in reversed(list(enumerate(cfg["channel_mult"]))):
        depth = cfg["depth"][level]
        for i in range(cfg["res_blocks"] + 1):
            _resblock(wr, f"{prefix}output_blocks.{k}.0.", ch + chans.pop(), mc * mult, emb)
            ch = mc * mult
            if depth:
                _transformer(wr, f"{prefix}output_blocks.{k}.1.", ch, depth, cfg["context"], lin)
            if level and i == cfg["res_blocks"]:  # the upsample follows the transformer when there is one
                wr.w(f"{prefix}output_blocks.{k}.{2 if depth else 1}.conv", ch, ch, 3, 3)
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
def write_clip_l(wr: Writer, prefix: str = "cond_stage_model.transformer.", cfg: dict = CLIP_L,
                 projection: bool = True) -> None:
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
    if projection:
        wr.fixed(prefix + "text_projection.weight", torch.eye(width))


def write_open_clip(wr: Writer, prefix: str = "conditioner.embedders.1.model.", cfg: dict = CLIP_G) -> None:
    """OpenCLIP's text-tower names (fused in_proj, ln_1/ln_2, c_fc/c_proj), as SDXL checkpoints store CLIP-G."""
    width = cfg["width"]
    wr.embedding(prefix + "token_embedding", cfg["vocab"], width)
    wr.normal(prefix + "positional_embedding", cfg["positions"], width, std=0.02)
    for i in range(cfg["layers"]):
        p = f"{prefix}transformer.resblocks.{i}."
        wr.norm(p + "ln_1", width)
        wr.normal(p + "attn.in_proj_weight", 3 * width, width, std=width ** -0.5)  # q, k, v stacked
        wr.fixed(p + "attn.in_proj_bias", torch.zeros(3 * width))
        wr.w(p + "attn.out_proj", width, width, gain=0.2)
        wr.norm(p + "ln_2", width)
        wr.w(p + "mlp.c_fc", cfg["mlp"], width)
        wr.w(p + "mlp.c_proj", width, cfg["mlp"], gain=0.2)
    wr.norm(prefix + "ln_final", width)
    wr.fixed(prefix + "text_projection", torch.eye(width))  # OpenCLIP stores it (in, out): no ".weight"
    wr.fixed(prefix + "logit_scale", torch.tensor(100.0).log())  # present in real SDXL files


def layout(family: str, seed: int = 0) -> Writer:
    """The family's tensors, recorded (not drawn yet) in a fixed order."""
    wr = Writer(seed)
    if family == "sd15":
        write_unet(wr, SD15_UNET)
        write_vae(wr)
        write_clip_l(wr)
    elif family == "sdxl":
        write_unet(wr, SDXL_UNET)
        write_vae(wr)
        # SDXL files keep CLIP-L without its projection (only CLIP-G's pooled output is used)
        write_clip_l(wr, "conditioner.embedders.0.transformer.", projection=False)
        write_open_clip(wr)
    else:
        raise SystemExit(f"unknown family {family!r} (sd15 or sdxl)")
    return wr


def build(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(layout(family, seed).tensors())


_ST_DTYPE = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def stream_safetensors(wr: Writer, path: str, metadata: dict[str, str]) -> None:
    """Write the safetensors format (8-byte header length, JSON header, raw little-endian data) one tensor at a
    time, so only the tensor being drawn is in memory."""
    item = torch.empty((), dtype=wr.dtype).element_size()
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, shape, _ in wr.specs:
        n = item
        for s in shape:
            n *= s
        header[name] = {"dtype": _ST_DTYPE[wr.dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, t in wr.tensors():
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=("sd15", "sdxl"), required=True)
    ap.add_argument("--out", required=True, help="the .safetensors file to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    meta = {"format": "pt", "note": f"random-weight {args.family} layout, not a model"}
    wr = layout(args.family, args.seed)
    if args.family == "sd15":  # small: kept on safetensors' own writer (same file as before for a seed)
        from safetensors.torch import save_file

        save_file(dict(wr.tensors()), args.out, metadata=meta)
    else:
        stream_safetensors(wr, args.out, meta)
    n = sum(torch.Size(shape).numel() for _, shape, _ in wr.specs)
    print(f"wrote {args.out}: {len(wr.specs)} tensors, {n / 1e6:.1f}M parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
