"""The iDDPM UNet that DifFace's face prior (`iddpm_ffhq512_ema500000.pth`) was trained with.

Written for this project from the published architecture description (improved-diffusion /
guided-diffusion `UNetModel` as configured by DifFace's `configs/sample/iddpm_ffhq512.yaml`).
Submodule names follow the released checkpoint's keys exactly (after the DataParallel `module.`
prefix is stripped), so the file loads with `strict=True` and no key conversion:

    time_embed.{0,2}                         Linear, SiLU, Linear
    input_blocks.0.0                         stem conv
    input_blocks.N.0 (.in_layers.{0,2}, .emb_layers.1, .out_layers.{0,3}, .skip_connection)
    input_blocks.N.1 (.norm, .qkv, .proj_out)  attention (Conv1d qkv / proj_out)
    input_blocks.N.0.op                      strided-conv downsample
    middle_block.{0,1,2}                     ResBlock, attention, ResBlock
    output_blocks.N.{0,1,2}                  ResBlock [, attention] [, upsample `.conv`]
    out.{0,2}                                GroupNorm, SiLU, conv

Numerics follow the original: sinusoidal timestep embedding `[cos, sin]` computed in float32,
GroupNorm(32 groups) evaluated in float32 and cast back, attention softmax with scale 1/sqrt(ch)
("legacy" qkv order: the channels are split into heads first, then each head into q, k, v).
The weights may be float32, bfloat16 or float16; the input is cast to the weights' dtype and the
output is returned in the input's dtype, always NCHW-contiguous. Weights may be converted to
`torch.channels_last` (then the input is too): ~20% faster on CPU here, numerically ~1e-5 apart.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IDDPMUNetConfig",
    "IDDPMUNet",
    "DIFFACE_FFHQ512",
    "TINY_CONFIG",
    "timestep_embedding",
    "count_parameters",
    "IDDPM_MARKERS",
    "infer_iddpm_config",
    "is_iddpm_state_dict",
    "load_iddpm_unet",
]

NORM_GROUPS = 32


@dataclass(frozen=True)
class IDDPMUNetConfig:
    """Hyper-parameters of the iDDPM UNet; defaults are DifFace's released ffhq512 prior.

    `attention_resolutions` are pixel sizes (DifFace's convention: level `l` of the UNet works at
    `image_size // 2**l` px and gets attention when that size is listed). `dropout` is kept only to
    describe the training config: this port is for inference and applies no dropout.
    """

    image_size: int = 512
    in_channels: int = 3
    out_channels: int = 6
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8, 16, 16)
    num_res_blocks: tuple[int, ...] = (1, 2, 2, 2, 2, 3, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    conv_resample: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        nrb = self.num_res_blocks
        if isinstance(nrb, int):
            nrb = (nrb,) * len(self.channel_mult)
        object.__setattr__(self, "num_res_blocks", tuple(int(n) for n in nrb))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError("num_res_blocks needs one entry per channel_mult level")

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """Levels (0 = full resolution) whose blocks carry attention."""
        return tuple(l for l in range(len(self.channel_mult)) if self.image_size // 2**l in self.attention_resolutions)

    @property
    def downsample_factor(self) -> int:
        """Input height/width must be a multiple of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


DIFFACE_FFHQ512 = IDDPMUNetConfig()

# A small config with the same structure (attention at two levels, a 2-head attention with the
# legacy order, skip convs, up/down sampling) for fast tests: 3.88M parameters, 32 px input.
TINY_CONFIG = IDDPMUNetConfig(
    image_size=32,
    model_channels=32,
    channel_mult=(1, 2, 4),
    num_res_blocks=(1, 1, 2),
    attention_resolutions=(16, 8),
    num_head_channels=64,
)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] in float32: `[cos(t*f), sin(t*f)]`, f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input/weight dtype, result cast back."""

    def __init__(self, channels: int):
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        if x.device.type == "cpu" and x.dtype == torch.bfloat16:
            # The CPU kernel takes bf16 data with float32 affine weights and accumulates in float32: the same
            # result as the float32 round trip below without its two full-size copies (~10% of a bf16 step).
            return F.group_norm(x, self.num_groups, w, b, self.eps)
        if x.device.type == "cuda" and x.dtype in (torch.float16, torch.bfloat16) and self.weight.dtype == x.dtype:
            # CUDA's half-precision kernel keeps its statistics and affine in float32 too (as diffusers' UNets run
            # nn.GroupNorm in fp16): the float32 round trip would only add memory traffic.
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _silu(x: Tensor) -> Tensor:
    """SiLU, in place when no autograd graph is being recorded (x is always a fresh normalised tensor here)."""
    return F.silu(x, inplace=not torch.is_grad_enabled() or torch.is_inference_mode_enabled())


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
        )
        # index 2 is the training-time dropout in the original; it has no weights.
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm_in, _, conv_in = self.in_layers
        h = conv_in(_silu(norm_in(x)))
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, conv = self.out_layers[0], self.out_layers[3]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, norm(h), 1 + scale)
        else:
            h = norm(h + e)
        h = conv(_silu(h))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions; qkv channels laid out per head as [q, k, v] (legacy order)."""

    def __init__(self, channels: int, num_head_channels: int):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"attention channels {channels} not divisible by head width {num_head_channels}")
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        b, c = shape[:2]
        # Token-major [B, T, C] throughout (a free view of a channels_last map), the 1x1 convs as matmuls: q, k
        # and v then have unit stride in their last dimension, which the fused (flash) SDPA kernels need; the
        # channel-major layout fell back to the unfused math path (2.6x slower at the 32 px level on CPU).
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # [B, T, C]
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # [B, T, 3C]
        ch = c // self.num_heads
        q, k, v = qkv.unflatten(-1, (self.num_heads, 3 * ch)).transpose(1, 2).split(ch, dim=-1)  # [B, H, T, ch]
        a = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(ch), as the original
        a = F.linear(a.transpose(1, 2).flatten(2), self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        return x + a.transpose(1, 2).reshape(shape)


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class EmbSequential(nn.Sequential):
    """Sequential whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class IDDPMUNet(nn.Module):
    """iDDPM UNet: `forward(x [B,C,H,W] in [-1,1], t int timesteps [B] or scalar) -> raw output`.

    For DifFace the output is [B, 6, H, W]: epsilon in channels 0..2, the learned-variance
    interpolation value in 3..5.
    """

    def __init__(self, config: IDDPMUNetConfig = DIFFACE_FFHQ512):
        super().__init__()
        cfg = self.config = config
        mc = cfg.model_channels
        emb_dim = 4 * mc
        attn_levels = set(cfg.attention_levels)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, cfg.use_scale_shift_norm)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([EmbSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        n_levels = len(cfg.channel_mult)
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if level in attn_levels:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels))
                self.input_blocks.append(EmbSequential(*layers))
                skip_chans.append(ch)
            if level != n_levels - 1:
                self.input_blocks.append(EmbSequential(Downsample(ch, cfg.conv_resample)))
                skip_chans.append(ch)

        self.middle_block = EmbSequential(res(ch, ch), AttentionBlock(ch, cfg.num_head_channels), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(n_levels)):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [res(ch + skip_chans.pop(), mult * mc)]
                ch = mult * mc
                if level in attn_levels:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch, cfg.conv_resample))
                self.output_blocks.append(EmbSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.time_embed[0].weight.device

    def forward(self, x: Tensor, t: Tensor | int | float) -> Tensor:
        b = x.shape[0]
        f = self.config.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of {f}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        elif t.shape != (b,):
            raise ValueError(f"timesteps must be a scalar or shape [{b}], got {tuple(t.shape)}")
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))

        h = x.to(dtype)
        if self.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)  # weights were put in channels_last
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        norm, _, conv = self.out
        return conv(_silu(norm(h))).to(x.dtype).contiguous()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ detection
IDDPM_MARKERS = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight", "middle_block.1.qkv.weight")


def is_iddpm_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """True for the key layout of DifFace / guided-diffusion iDDPM UNets (prefix-free)."""
    return all(k in sd for k in IDDPM_MARKERS)


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


def load_iddpm_unet(
    sd: Mapping[str, Tensor],
    path: str | os.PathLike = "<state dict>",
    *,
    config: IDDPMUNetConfig | None = None,
    sample_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> IDDPMUNet:
    """The iDDPM UNet in ``sd`` (structure from `infer_iddpm_config` unless ``config`` is given), strictly loaded,
    on ``device`` in ``dtype``, in eval mode. The weights become the file's tensors (no random init first).
    CheckpointError naming ``path`` on an unusual layout or a key/shape mismatch."""
    from ..models.checkpoint import CheckpointError, load_strict

    expected = "DifFace iDDPM UNet"
    if config is None:
        try:
            config = infer_iddpm_config(sd, image_size=sample_size)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} looks like a {expected} checkpoint but its layout is unusual ({exc}).") from exc
    try:
        with torch.device("meta"):  # no allocation or random init: the file's tensors become the weights
            model = IDDPMUNet(config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build the UNet ({exc}); pass config= with the right head width") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_strict's final copy into meta tensors is a no-op
        load_strict(model, sd, path, expected)  # names the file and any key/shape mismatch
    weights = {}
    for k, v in sd.items():
        v = v.to(device=device, dtype=dtype)
        if v.device.type == "cpu" and v.data_ptr() % 64:
            v = v.clone()  # safetensors' CPU tensors are 16-byte aligned: realign for the conv kernels
        weights[k] = v
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()
