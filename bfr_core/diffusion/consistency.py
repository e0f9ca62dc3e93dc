"""Low-frequency consistency (ILVR-style, as DT-BFR uses it): keep a reference's coarse band in a sample.

``lowpass(x, factor)`` is antialiased bicubic down by 1/``factor`` and bicubic back up (`utils.resize_antialiased`);
``replace_lowpass(x, ref, factor)`` = x − lowpass(x) + lowpass(ref): the sample's low band swapped for the
reference's, its high band (x − lowpass(x)) kept. Pure, elementwise-linear tensor math on [n, c, H, W]; it knows
nothing about backbones or priors (the caller decides what the reference is: DT-BFR's is the backbone estimate
diffused to the sample's timestep).

Sizes: the low band lives on a grid of max(1, round(H/factor)) × max(1, round(W/factor)); when ``factor`` does not
divide the side the grid is rounded (e.g. 64/12 → 5), so the cut-off is that rounded grid's. ``factor`` 1 keeps
the whole image as the "low band" (replace_lowpass then returns ref itself). Bicubic down/up is not an exact
projection: lowpass(replace_lowpass(x, ref)) equals lowpass(ref) only approximately (the swap itself is exact).
"""
from __future__ import annotations

from torch import Tensor

from ..utils import resize_antialiased

__all__ = ["check_lowpass_factor", "lowpass", "lowpass_grid", "replace_lowpass"]


def check_lowpass_factor(factor: int, size: int) -> int:
    """``factor`` as an int in [1, size] (ValueError otherwise)."""
    try:
        f = int(factor)
    except (TypeError, ValueError):
        raise ValueError(f"lowpass factor must be an integer, got {factor!r}") from None
    if f != factor or not 1 <= f <= int(size):
        raise ValueError(f"lowpass factor must be an integer in [1, {int(size)}] (the image side), got {factor!r}")
    return f


def lowpass_grid(hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """The low band's grid for an H×W image: max(1, round(side/factor)) each way."""
    return max(1, int(round(hw[0] / factor))), max(1, int(round(hw[1] / factor)))


def lowpass(x: Tensor, factor: int) -> Tensor:
    """up(down(x)): antialiased bicubic to `lowpass_grid` and bicubic back to x's size (identity for factor 1)."""
    hw = tuple(x.shape[-2:])
    grid = lowpass_grid(hw, factor)
    if grid == hw:
        return x
    return resize_antialiased(resize_antialiased(x, grid), hw)


def replace_lowpass(x: Tensor, ref: Tensor, factor: int) -> Tensor:
    """x − lowpass(x) + lowpass(ref): x's low-frequency band replaced by ref's (same shapes)."""
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"x {tuple(x.shape)} and ref {tuple(ref.shape)} must have the same shape")
    if factor == 1 or lowpass_grid(tuple(x.shape[-2:]), factor) == tuple(x.shape[-2:]):
        return ref.clone()
    return x - lowpass(x, factor) + lowpass(ref, factor)
