"""Paste restored crops back into their images: inverse warp, soft masks, colour matching.

The work per face is proportional to the face's area in the image, never to the whole canvas, and
overlapping faces are blended order-independently: colour = Σ mᵢ·faceᵢ / Σ mᵢ with coverage
1 − Π(1 − mᵢ), so pasting never depends on which face comes first.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..utils.layout import check_images
from .geometry import alignment_scale, homogeneous
from .masks import gaussian_blur, template_mask
from .types import AlignedFaces
from .warp import image_boxes_of_crops, resize_map, sampling_grid, shrink_antialiased, use_opencv, warp_faces

COLOR_MATCH_MODES = ("none", "mean_std", "lowpass")


def match_colors(restored: Tensor, original: Tensor, mask: Tensor, mode: str = "lowpass") -> Tensor:
    """Match the colour/tone of restored crops [F, C, S, S] to the original crops.

    mean_std: per-channel mean and standard deviation inside the mask.
    lowpass: replace the restored face's low frequencies (σ = S/64) by the original's, keeping the
             restored detail; the low-pass consistency that DT-BFR uses for pseudo-targets.
    """
    if mode == "none":
        return restored
    if mode not in COLOR_MATCH_MODES:
        raise ValueError(f"color_match must be one of {COLOR_MATCH_MODES}, got {mode!r}")
    if mode == "lowpass":
        sigma = restored.shape[-1] / 64
        return (restored + gaussian_blur(original, sigma) - gaussian_blur(restored, sigma)).clamp(0, 1)
    w = mask[:, None].to(restored.dtype)
    wsum = w.sum((2, 3), keepdim=True).clamp_min(1e-6)
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mu = (x * w).sum((2, 3), keepdim=True) / wsum
        var = ((x - mu) ** 2 * w).sum((2, 3), keepdim=True) / wsum
        return mu, var.clamp_min(1e-8).sqrt()
    mu_r, sd_r = stats(restored)
    mu_o, sd_o = stats(original)
    return ((restored - mu_r) * (sd_o / sd_r) + mu_o).clamp(0, 1)


def mask_support(masks: Tensor) -> tuple[int, int, int, int]:
    """Crop-space box (u0, v0, u1, v1) outside which every mask is zero: only that part is pasted."""
    any_mask = (masks[0] if masks.stride(0) == 0 else masks.detach().amax(0)) > 0
    rows, cols = torch.nonzero(any_mask.any(1)).flatten(), torch.nonzero(any_mask.any(0)).flatten()
    if rows.numel() == 0:
        return 0, 0, 1, 1
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def overlap_groups(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Indices of boxes grouped into connected sets of overlapping boxes (union-find)."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        for j in range(i):
            b = boxes[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


class _FaceSampler:
    """Renders crop i and its mask into an image region: OpenCV on the CPU, grid_sample elsewhere."""

    def __init__(self, crops: Tensor, masks: Tensor, affines: Tensor, backend: str) -> None:
        self.crops, self.masks, self.affines = crops, masks, affines
        self.cv2 = use_opencv(crops, backend)
        if self.cv2:  # channels-last numpy views (free when the crops came from ComfyUI or warp_faces)
            self.crops_np = crops.detach().permute(0, 2, 3, 1).contiguous().numpy()
            self.affines_np = affines.detach().double().cpu().numpy()
            # One shared template mask (an expanded view) is shrunk once per power of two and reused for every
            # face of that size. The result is the same as warping a per-face copy, so a face pastes the same
            # whether it comes alone or in a batch.
            self.shared_mask = masks.stride(0) == 0 or masks.shape[0] == 1
            if self.shared_mask:
                self.mask_np = masks[0].detach().contiguous().numpy()
                self.mask_shrunk: dict[int, np.ndarray] = {}
            else:
                self.masks_np = masks.detach().contiguous().numpy()

    def _cv2_warp(self, src, m, size: tuple[int, int], scale: float, shrunk: dict | None = None) -> Tensor:
        """Warp src (HWC numpy) into a region of `size` (w, h); m (numpy [2, 3]) maps region → src pixels.

        ``shrunk``: a cache of src's shrunk copies by factor (for a source shared by many faces)."""
        import cv2

        if scale >= 3:  # the face is much smaller in the image than in the crop: shrink the crop first
            # by a power of two (OpenCV's fast exact area averaging), leaving a 1.5-3x ratio for the cubic
            # warp: shrinking further blurs detail the image can hold (a 2x box filter costs ~6 dB on a
            # round trip), shrinking less lets fine restored detail alias.
            k = 2 ** int(math.floor(math.log2(scale / 1.5)))
            side = max(1, round(src.shape[0] / k))
            f = side / src.shape[0]
            if shrunk is None or k not in shrunk:
                small = cv2.resize(src, (side, side), interpolation=cv2.INTER_AREA)
                if shrunk is not None:
                    shrunk[k] = small
            src = small if shrunk is None or k not in shrunk else shrunk[k]
            m = (resize_map(f, f) @ np.vstack([m, [0, 0, 1]]))[:2]
        # WARP_INVERSE_MAP: m maps destination (region) pixels to source (crop) pixels.
        out = cv2.warpAffine(src, m, size, flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return torch.from_numpy(out.reshape(size[1], size[0], -1)).permute(2, 0, 1)

    def __call__(self, i: int, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
        x0, y0, x1, y1 = box
        if self.cv2:
            m = self.affines_np[i].copy()
            m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # region pixel → crop pixel
            scale = float(np.hypot(m[0, 0], m[1, 0]))
            size = (x1 - x0, y1 - y0)
            face = self._cv2_warp(self.crops_np[i], m, size, scale)
            if not self.shared_mask:
                return face, self._cv2_warp(self.masks_np[i], m, size, scale)
            return face, self._cv2_warp(self.mask_np, m, size, scale, self.mask_shrunk)
        m = self.affines[i].double().cpu().clone()
        m[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # region pixel → crop pixel
        scale = float(alignment_scale(m))
        src = torch.cat([self.crops[i], self.masks[i][None]], 0)[None]
        if scale > 2:
            src, old_to_new = shrink_antialiased(src, 2 / scale)
            m = (homogeneous(old_to_new) @ homogeneous(m))[:2]
        m = m.to(src.device, torch.float32)[None]
        grid = sampling_grid(m, (y1 - y0, x1 - x0), src.shape[-2:])
        t = torch.nn.functional.grid_sample(src.float(), grid, mode="bicubic", padding_mode="zeros",
                                            align_corners=False)[0].to(src.dtype)  # float32 grid: see warp_affine
        return t[:-1], t[-1:]


def _accumulate(sample: _FaceSampler, members: list, union: tuple[int, int, int, int], images: Tensor,
                progress: Callable[[int], None] | None, strict: bool = False):
    """Σ face·mask, Σ mask and Π(1 − mask) of overlapping faces over their union box (order-independent).

    strict: zero face values under a zero mask first and also return the faces that are non-finite where
    their mask is not zero (the slow path, only taken when the plain sums came out non-finite).
    """
    ux0, uy0, ux1, uy1 = union
    shape = (uy1 - uy0, ux1 - ux0)
    num = images.new_zeros(images.shape[1], *shape)
    den = images.new_zeros(1, *shape)
    keep = images.new_ones(1, *shape)
    bad = []
    for i, (x0, y0, x1, y1) in members:
        face, mk = sample(i, (x0, y0, x1, y1))
        face, mk = face.to(images.device).clamp(0, 1), mk.to(images.device).clamp(0, 1)
        if strict:
            face = torch.where(mk > 0, face, 0.0)
            if not (bool(torch.isfinite(face).all()) and bool(torch.isfinite(mk).all())):
                bad.append(i)
        sl = (slice(None), slice(y0 - uy0, y1 - uy0), slice(x0 - ux0, x1 - ux0))
        num[sl] += face * mk
        den[sl] += mk
        keep[sl] *= 1 - mk
        if progress is not None:
            progress(1)
    return (num, den, keep, bad) if strict else (num, den, keep)


def paste_faces(images: Tensor, crops: Tensor, faces: AlignedFaces, masks: Tensor | None = None,
                color_match: str = "none", progress: Callable[[int], None] | None = None,
                backend: str = "auto", color_reference: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
    """Put crops [F, C, S', S'] back into images [B, C, H, W] (values in [0, 1]).

    masks: soft crop-space masks [F, S', S'] (default: the template face oval). The crops may have
    been resized after alignment (e.g. by an upscaler): any square size works. Returns the images
    and the pasted-face coverage [B, H, W] (1 = fully the restored face). Faces are rendered into
    their own boxes only; overlapping faces are blended together, order-independently.
    `backend`: as in `warp_faces`. `color_reference`: maps the original crops (the images warped like the crops)
    to what the crops' colours are matched to, e.g. a per-track average over video frames
    (`restoration.temporal.TrackMemory.color_reference`); default: each face's own original.
    """
    check_images(images, allow_empty=True)
    check_images(crops, "crops", allow_empty=True, finite=False)  # NaN under a zero mask is harmless: see below
    if images.shape[0] != faces.num_images:
        raise ValueError(f"the faces were aligned from {faces.num_images} images, but {images.shape[0]} images were given")
    if crops.shape[0] != len(faces):
        raise ValueError(f"got {crops.shape[0]} crops for {len(faces)} faces; paste the crops that came out of "
                         f"the same alignment (one per face, in order)")
    if crops.shape[-1] != crops.shape[-2]:
        raise ValueError(f"crops must be square, got {tuple(crops.shape[-2:])}")
    if crops.shape[1] != images.shape[1]:
        raise ValueError(f"crops have {crops.shape[1]} channels, images have {images.shape[1]}")
    aligned_hw = faces.image_sizes[0] if faces.image_sizes else tuple(images.shape[-2:])
    if tuple(images.shape[-2:]) != tuple(aligned_hw):
        raise ValueError(f"the faces were aligned on {aligned_hw[1]}x{aligned_hw[0]} images but are pasted into "
                         f"{images.shape[-1]}x{images.shape[-2]} ones; paste into the image given to Align Faces "
                         f"(resize after pasting)")
    out = images.clone()
    coverage = images.new_zeros(images.shape[0], *images.shape[-2:])
    if len(faces) == 0:
        return out, coverage
    device, s = images.device, crops.shape[-1]
    crops = crops.to(device, images.dtype)
    # Affines for the crops' actual size (they may have been upscaled between align and paste).
    affines = faces.affines.to(device).double().clone()
    affines *= s / faces.crop_size
    affines[:, :, 2] += (s / faces.crop_size - 1) * 0.5  # pixel-centre convention under scaling
    affines = affines.float()
    if masks is None:
        masks = template_mask(s, "ellipse", device=device).expand(len(faces), -1, -1)
    if not isinstance(masks, Tensor) or tuple(masks.shape) != (len(faces), s, s):
        raise ValueError(f"masks must be one crop-space mask per face, shape {(len(faces), s, s)}; got "
                         f"{tuple(getattr(masks, 'shape', ())) or type(masks).__name__}")
    masks = masks.to(device, images.dtype)
    if color_match != "none":
        originals = warp_faces(images, faces.image_index.to(device), affines, s, faces.border, backend=backend)
        if color_reference is not None:
            originals = color_reference(originals).to(device, images.dtype)
        crops = match_colors(crops, originals, masks, color_match)
    sample = _FaceSampler(crops, masks, affines, backend)

    hw = tuple(images.shape[-2:])
    support = mask_support(masks)
    for b in range(images.shape[0]):
        idx = faces.faces_of(b)
        boxes = image_boxes_of_crops(affines[idx], s, hw, support=support) if idx else []
        for group in overlap_groups(boxes):
            members = [(idx[g], boxes[g]) for g in group if boxes[g][2] > boxes[g][0] and boxes[g][3] > boxes[g][1]]
            if not members:
                continue
            ux0, uy0 = min(bx[0] for _, bx in members), min(bx[1] for _, bx in members)
            ux1, uy1 = max(bx[2] for _, bx in members), max(bx[3] for _, bx in members)
            num, den, keep = _accumulate(sample, members, (ux0, uy0, ux1, uy1), images, progress)
            if not (bool(torch.isfinite(num).all()) and bool(torch.isfinite(den).all())):
                # Rare: find the culprits. Values under a zero mask are never shown (NaN there is harmless,
                # it only spoiled the sums); NaN where a face shows must not silently blacken a photo.
                num, den, keep, bad = _accumulate(sample, members, (ux0, uy0, ux1, uy1), images, None, strict=True)
                if bad:
                    raise ValueError(f"crop(s) {bad} contain NaN or infinite values where they are pasted; the "
                                     f"node that produced the crops failed (nothing was pasted)")
            alpha = 1 - keep
            region = out[b, :, uy0:uy1, ux0:ux1]
            blended = num / den.clamp_min(1e-8)
            out[b, :, uy0:uy1, ux0:ux1] = torch.where(den > 0, alpha * blended + (1 - alpha) * region, region)
            coverage[b, uy0:uy1, ux0:ux1] = torch.maximum(coverage[b, uy0:uy1, ux0:ux1], alpha[0])
    return out, coverage
