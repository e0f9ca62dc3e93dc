"""SwinIR (Liang et al. 2021, arXiv:2108.10257) for inference, written for this project.

Covers DifFace's restoration backbone ``swinir_restoration512_L1.pth`` (DifFace ``configs/sample/
iddpm_ffhq512_swinir.yaml``: embed_dim 180, 8 RSTBs of 6 blocks with 6 heads, window 8, mlp_ratio 2,
img_size 64, upsampler "nearest+conv" with sf 8, an 8x ``PixelUnshuffle`` before the first conv, img_range 1,
so 512 px in → 512 px out) and the other published SwinIR heads ("pixelshuffle", "pixelshuffledirect",
none, "1conv"/"3conv" residual convs). Submodule names follow the released checkpoints' keys after
`bfr_core.models.checkpoint.unwrap_state_dict`, so a file loads with ``strict=True`` and no renaming:

    conv_first | conv_first.1 (after PixelUnshuffle)   shallow features
    patch_embed.norm, [absolute_pos_embed]              token LayerNorm
    layers.i.residual_group.blocks.j.{norm1, attn.{relative_position_bias_table, relative_position_index,
        qkv, proj}, norm2, mlp.{fc1, fc2}, [attn_mask]}  Swin blocks; layers.i.conv[.0/.2/.4] closes the RSTB
    norm, conv_after_body[.0/.2/.4]                     end of the deep features
    conv_before_upsample.0, conv_up1..3, conv_hr, conv_last | upsample.N, conv_last   reconstruction head

The configuration is read from the state dict (`swinir_config_from_state_dict`). `SwinIR.forward` takes
``[B, C, H, W]`` in the model's range ([0, 1] for RGB) of any size: it reflect-pads to a multiple of
``window_size * unshuffle`` and crops the output back to ``H * scale`` × ``W * scale``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.checkpoint import CheckpointError, load_strict

__all__ = [
    "DIFFACE_SWINIR",
    "SwinIR",
    "SwinIRConfig",
    "is_swinir_state_dict",
    "load_swinir",
    "swinir_config_from_state_dict",
]

UPSAMPLERS = ("nearest+conv", "pixelshuffle", "pixelshuffledirect", "")
_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean that SwinIR subtracts from RGB inputs


@dataclass(frozen=True)
class SwinIRConfig:
    """Hyper-parameters; the defaults are DifFace's ``swinir_restoration512_L1.pth``.

    ``upscale`` is the factor of the reconstruction head, ``unshuffle`` the input pixel-unshuffle factor, so
    the network maps H×W to (H·upscale/unshuffle)×(W·upscale/unshuffle) (`scale`).
    """

    in_chans: int = 3
    embed_dim: int = 180
    depths: tuple[int, ...] = (6,) * 8
    num_heads: tuple[int, ...] = (6,) * 8
    window_size: int = 8
    mlp_hidden: int = 360  # fc1 width (embed_dim * mlp_ratio)
    img_size: int = 64  # training size of the token grid; fixes the stored shift masks
    upscale: int = 8
    unshuffle: int = 8
    upsampler: str = "nearest+conv"
    resi_connection: str = "1conv"
    img_range: float = 1.0
    num_feat: int = 64
    qkv_bias: bool = True
    patch_norm: bool = True
    ape: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError("SwinIR needs one num_heads entry per RSTB and at least one RSTB")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"unknown SwinIR upsampler {self.upsampler!r}; expected one of {UPSAMPLERS}")
        if self.resi_connection not in ("1conv", "3conv"):
            raise ValueError(f"unknown SwinIR resi_connection {self.resi_connection!r}")
        if self.upscale % self.unshuffle:
            raise ValueError(f"upscale {self.upscale} is not a multiple of the input unshuffle {self.unshuffle}")
        if self.upsampler == "nearest+conv" and self.upscale not in (2, 4, 8):
            raise ValueError(f"nearest+conv upsampling supports upscale 2, 4 or 8, not {self.upscale}")
        if self.unshuffle > 1 and self.upsampler in ("", "pixelshuffledirect"):
            raise ValueError(f"an input unshuffle needs a conv_last head, not upsampler {self.upsampler!r}")
        if any(self.embed_dim % h for h in self.num_heads):
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def scale(self) -> int:
        """Output size / input size."""
        return self.upscale // self.unshuffle

    @property
    def size_multiple(self) -> int:
        """Input sizes that need no padding are multiples of this."""
        return self.window_size * self.unshuffle


DIFFACE_SWINIR = SwinIRConfig()


# ------------------------------------------------------------------------------------------ windows
def _to_windows(x: Tensor, ws: int) -> Tensor:
    """[B, H, W, C] → [B·nW, ws·ws, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _from_windows(win: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of `_to_windows`: [B·nW, ws·ws, C] → [B, H, W, C]."""
    c = win.shape[-1]
    x = win.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _relative_index(ws: int) -> Tensor:
    """[ws², ws²] index into the (2ws-1)² bias table for every (query, key) pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    pos = torch.stack((ys.flatten(), xs.flatten()))  # 2, N
    d = pos[:, :, None] - pos[:, None, :] + (ws - 1)  # offsets shifted to start at 0
    return d[0] * (2 * ws - 1) + d[1]


def _shift_mask(h: int, w: int, ws: int, shift: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """[nW, ws², ws²] additive mask (0 / -100) keeping shifted-window attention inside original regions."""
    region = torch.zeros(1, h, w, 1, device=device, dtype=dtype)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for wsl in bands:
            region[:, hs, wsl, :] = label
            label += 1
    lab = _to_windows(region, ws).squeeze(-1)  # nW, N
    diff = lab[:, None, :] - lab[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


# ------------------------------------------------------------------------------------------ blocks
class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws×ws windows with a learned relative-position bias."""

    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # bw, heads, n, n
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual. Odd blocks shift by ws/2."""

    def __init__(self, dim: int, resolution: int, heads: int, ws: int, shift: int, hidden: int, qkv_bias: bool):
        super().__init__()
        if resolution <= ws:  # the whole training grid is one window: no partition, no shift
            ws, shift = resolution, 0
        self.ws, self.shift, self.resolution = ws, shift, resolution
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        if shift > 0:  # stored in the checkpoints for the training grid size
            self.register_buffer("attn_mask", _shift_mask(resolution, resolution, ws, shift))
        else:
            self.attn_mask = None

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        h, w = hw
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = None
        if self.shift:
            if (h, w) == (self.resolution, self.resolution):
                mask = self.attn_mask
            else:
                mask = _shift_mask(h, w, self.ws, self.shift, device=x.device, dtype=x.dtype)
        y = _from_windows(self.attn(_to_windows(y, self.ws), mask), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BlockGroup(nn.Module):
    """Holds ``blocks`` (the checkpoints' ``residual_group``)."""

    def __init__(self, blocks: list[SwinBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        for blk in self.blocks:
            x = blk(x, hw)
        return x


def _tokens_to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    q = dim // 4  # "3conv": bottleneck to save parameters
    return nn.Sequential(nn.Conv2d(dim, q, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(q, q, 1, 1, 0),
                         nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(q, dim, 3, 1, 1))


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks, a conv, plus the input."""

    def __init__(self, cfg: SwinIRConfig, depth: int, heads: int):
        super().__init__()
        d, ws = cfg.embed_dim, cfg.window_size
        self.residual_group = BlockGroup([
            SwinBlock(d, cfg.img_size, heads, ws, 0 if i % 2 == 0 else ws // 2, cfg.mlp_hidden, cfg.qkv_bias)
            for i in range(depth)
        ])
        self.conv = _resi_conv(d, cfg.resi_connection)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        y = self.conv(_tokens_to_map(self.residual_group(x, hw), hw))
        return y.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Feature map → tokens (patch size 1), LayerNorm-ed when ``patch_norm``."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


# ------------------------------------------------------------------------------------------ network
class SwinIR(nn.Module):
    """SwinIR with its checkpoints' module names; see the module docstring."""

    def __init__(self, cfg: SwinIRConfig = DIFFACE_SWINIR):
        super().__init__()
        self.cfg = cfg
        d, c, nf = cfg.embed_dim, cfg.in_chans, cfg.num_feat
        mean = torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if c == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

        conv_in = nn.Conv2d(c * cfg.unshuffle**2, d, 3, 1, 1)
        self.conv_first = nn.Sequential(nn.PixelUnshuffle(cfg.unshuffle), conv_in) if cfg.unshuffle > 1 else conv_in

        self.patch_embed = PatchEmbed(d, cfg.patch_norm)
        if cfg.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, cfg.img_size**2, d))
        self.layers = nn.ModuleList(RSTB(cfg, dep, hd) for dep, hd in zip(cfg.depths, cfg.num_heads))
        self.norm = nn.LayerNorm(d)
        self.conv_after_body = _resi_conv(d, cfg.resi_connection)

        if cfg.upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(d, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            n_up = int(math.log2(cfg.upscale))
            for i in range(1, n_up + 1):  # conv_up1..conv_up3: one per nearest 2x step
                setattr(self, f"conv_up{i}", nn.Conv2d(nf, nf, 3, 1, 1))
            self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
            self.conv_last = nn.Conv2d(nf, c, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        elif cfg.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(d, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = _pixelshuffle_stack(cfg.upscale, nf)
            self.conv_last = nn.Conv2d(nf, c, 3, 1, 1)
        elif cfg.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(d, cfg.upscale**2 * c, 3, 1, 1), nn.PixelShuffle(cfg.upscale))
        else:  # denoising / JPEG: residual on the input
            self.conv_last = nn.Conv2d(d, c, 3, 1, 1)
        self.n_up = int(math.log2(cfg.upscale)) if cfg.upsampler == "nearest+conv" else 0

    @property
    def scale(self) -> int:
        return self.cfg.scale

    def _deep_features(self, x: Tensor) -> Tensor:
        hw = (x.shape[2], x.shape[3])
        t = self.patch_embed(x)
        if self.cfg.ape:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, hw)
        return _tokens_to_map(self.norm(t), hw)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = _pad_to(x, self.cfg.size_multiple)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.cfg.img_range

        feat = self.conv_first(x)
        feat = self.conv_after_body(self._deep_features(feat)) + feat
        up = self.cfg.upsampler
        if up == "nearest+conv":
            y = self.conv_before_upsample(feat)
            for i in range(1, self.n_up + 1):
                y = self.lrelu(getattr(self, f"conv_up{i}")(F.interpolate(y, scale_factor=2, mode="nearest")))
            y = self.conv_last(self.lrelu(self.conv_hr(y)))
        elif up == "pixelshuffle":
            y = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        elif up == "pixelshuffledirect":
            y = self.upsample(feat)
        else:
            y = x + self.conv_last(feat)

        y = y / self.cfg.img_range + mean
        return y[:, :, : h * self.scale, : w * self.scale]


def _pixelshuffle_stack(scale: int, nf: int) -> nn.Sequential:
    if scale == 3:
        return nn.Sequential(nn.Conv2d(nf, 9 * nf, 3, 1, 1), nn.PixelShuffle(3))
    if scale < 1 or scale & (scale - 1):
        raise ValueError(f"pixelshuffle upscale {scale} is not 3 or a power of 2")
    mods: list[nn.Module] = []
    for _ in range(int(math.log2(scale))):
        mods += [nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2)]
    return nn.Sequential(*mods)


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to a multiple (reflect, as SwinIR does; replicate where the image is too small)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# ------------------------------------------------------------------------------------------ loading
_B0 = "layers.0.residual_group.blocks.0."


def is_swinir_state_dict(sd: Mapping[str, Tensor]) -> bool:
    """True for the key layout of SwinIR checkpoints (unwrapped, no ``module.`` prefixes)."""
    return (
        (f"{_B0}norm1.weight" in sd and f"{_B0}mlp.fc1.bias" in sd)
        and (f"{_B0}attn.relative_position_bias_table" in sd or f"{_B0}attn.relative_position_index" in sd)
        and ("conv_first.weight" in sd or "conv_first.1.weight" in sd)
    )


def _count(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of consecutive ``prefix.N.`` entries starting at 0."""
    heads = (k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix))
    idx = {int(h) for h in heads if h.isdigit()}
    n = 0
    while n in idx:
        n += 1
    return n


def swinir_config_from_state_dict(sd: Mapping[str, Tensor]) -> SwinIRConfig:
    """Read the hyper-parameters from key names and tensor shapes; ValueError if something does not fit."""
    if not is_swinir_state_dict(sd):
        raise ValueError("not a SwinIR state dict")
    unshuffled = "conv_first.1.weight" in sd
    w_first = sd["conv_first.1.weight" if unshuffled else "conv_first.weight"]
    embed_dim, ch_in = int(w_first.shape[0]), int(w_first.shape[1])

    if "conv_before_upsample.0.weight" in sd:
        upsampler = "nearest+conv" if "conv_up1.weight" in sd else "pixelshuffle"
    elif "upsample.0.weight" in sd:
        upsampler = "pixelshuffledirect"
    else:
        upsampler = ""

    in_chans = int(sd["conv_last.weight"].shape[0]) if "conv_last.weight" in sd else ch_in
    unshuffle = 1
    if unshuffled:
        unshuffle = round(math.sqrt(ch_in / in_chans))
        if unshuffle < 2 or in_chans * unshuffle**2 != ch_in:
            raise ValueError(f"conv_first.1 takes {ch_in} channels: not an unshuffled {in_chans}-channel input")
    elif ch_in != in_chans:
        raise ValueError(f"conv_first takes {ch_in} channels but conv_last gives {in_chans}")

    num_feat = 64
    if upsampler == "nearest+conv":
        upscale = 2 ** sum(1 for i in (1, 2, 3) if f"conv_up{i}.weight" in sd)
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
    elif upsampler == "pixelshuffle":
        num_feat = int(sd["conv_before_upsample.0.weight"].shape[0])
        n_conv = sum(1 for k in sd if k.startswith("upsample.") and k.endswith(".weight"))
        first = int(sd["upsample.0.weight"].shape[0])
        upscale = 3 if (n_conv == 1 and first == 9 * num_feat) else 2**n_conv
    elif upsampler == "pixelshuffledirect":
        upscale = round(math.sqrt(int(sd["upsample.0.weight"].shape[0]) / in_chans))
    else:
        upscale = 1

    n_layers = _count(sd, "layers.")
    depths = tuple(_count(sd, f"layers.{i}.residual_group.blocks.") for i in range(n_layers))
    heads = tuple(int(sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
                  for i in range(n_layers))
    table = int(sd[f"{_B0}attn.relative_position_bias_table"].shape[0])
    window = (round(math.sqrt(table)) + 1) // 2  # table has (2ws-1)^2 rows
    mlp_hidden = int(sd[f"{_B0}mlp.fc1.bias"].shape[0])

    mask_key = "layers.0.residual_group.blocks.1.attn_mask"
    if "absolute_pos_embed" in sd:
        img_size = round(math.sqrt(int(sd["absolute_pos_embed"].shape[1])))
    elif mask_key in sd:
        img_size = round(math.sqrt(int(sd[mask_key].shape[0]))) * window
    elif depths[0] > 1:  # a second block without mask: the training grid fit in one window
        img_size = window
    else:
        img_size = max(64, 2 * window)

    return SwinIRConfig(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
        mlp_hidden=mlp_hidden, img_size=img_size, upscale=upscale, unshuffle=unshuffle, upsampler=upsampler,
        resi_connection="1conv" if "conv_after_body.weight" in sd else "3conv",
        img_range=255.0 if window == 7 else 1.0,  # the window-7 releases (JPEG artefact removal) work in 0..255
        num_feat=num_feat, qkv_bias=f"{_B0}attn.qkv.bias" in sd, patch_norm="patch_embed.norm.weight" in sd,
        ape="absolute_pos_embed" in sd,
    )


def load_swinir(sd: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> SwinIR:
    """Build the SwinIR described by ``sd`` and load it strictly (eval mode). CheckpointError on a mismatch."""
    try:
        cfg = swinir_config_from_state_dict(sd)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: looks like SwinIR but its configuration cannot be read ({exc})") from exc
    model = SwinIR(cfg)
    load_strict(model, sd, path, "SwinIR")
    return model.eval()
