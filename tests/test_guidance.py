"""bfr_core.identity.guidance: identity guidance hook for the DifFace sampler (DESIGN.md §1 CLR-Face, §4, §6).

Weight-free: the analytic prior of tests/analytic_prior.py (exact denoiser of 4 real aligned faces + mirrors, 64 px)
and a tiny random-weight recognizer that, like ArcFace, looks at the 112/512 crop of the aligned face. §6: guidance
with any recognizer must raise that recognizer's own similarity to the reference, and a mask must confine the change.

Note on the analytic prior: its x0 estimate at low noise is a hard projection onto one of the K faces, so
corrections made in earlier steps are projected away and the output is essentially the winning face plus the
last step's correction (unless guidance flips the posterior to another face). The tests therefore exercise the
hook's direction, scaling, masking and plumbing, not how a trained prior would turn corrections into features.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from analytic_prior import AnalyticPrior, degrade, nearest_index, psnr
from bfr_core.identity.guidance import (
    STRENGTH_UNIT,
    FaceRecognizer,
    IdentityGuidance,
    cosine_distance,
    feature_mask,
    recognizer_device_dtype,
)
from bfr_core.diffusion.timesteps import denoising_timesteps
from bfr_core.restoration.difface import restore_faces

STEPS = 10  # 400, 360, …, 40 at the sampler's default strength 0.4


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyRecognizer(nn.Module):
    """Random-weight stand-in for ArcFace: the x,y ∈ [64.8, 448.2]/512 crop of the aligned face, [-1, 1], resized
    to 32 px → 3 strided convs with PReLU → linear → L2-normalised 64-d embedding. Differentiable, frozen."""

    def __init__(self, seed: int = 0, dim: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.PReLU(16), nn.Conv2d(16, 32, 3, 2, 1), nn.PReLU(32),
            nn.Conv2d(32, 32, 3, 2, 1), nn.PReLU(32), nn.Flatten(), nn.Linear(32 * 4 * 4, dim))
        with torch.no_grad():  # every parameter from the seeded generator (not the global RNG): deterministic
            for name, p in self.net.named_parameters():
                if p.ndim > 1:
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
                elif name.endswith("bias"):
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
                else:  # PReLU slopes
                    p.fill_(0.25)
        self.requires_grad_(False).eval()

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        s = faces.shape[-1]
        a, b = int(round(64.8 / 512 * s)), int(round(448.2 / 512 * s))
        x = faces[..., a:b, a:b] * 2 - 1
        x = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.net(x.to(faces.dtype)).float(), dim=1)


class Recorder:
    """Wraps a guidance hook and keeps (t, faces, x0_pred, correction) of every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x_t, t, x0_pred, *, faces):
        c = self.inner(x_t, t, x0_pred, faces=faces)
        self.calls.append((int(t), faces.tolist(), x0_pred.clone(), c.clone()))
        return c


@pytest.fixture(scope="module")
def prior(faces64):
    return AnalyticPrior(faces64)


@pytest.fixture(scope="module")
def degraded64(faces64) -> torch.Tensor:
    return torch.stack([degrade(faces64[i], seed=i) for i in range(4)])


@pytest.fixture(scope="module")
def rec() -> TinyRecognizer:
    return TinyRecognizer()


def _restore(y, prior, guidance=None, **kw):
    kw = {"steps": STEPS, "seed": 0, **kw}
    return restore_faces(y, prior, guidance=guidance, **kw)


# ------------------------------------------------------------------------------------------ identity gain
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
@pytest.mark.parametrize("mask, strengths", [("none", (0.0, 0.5, 1.0, 2.0)), ("features", (0.0, 1.0, 2.0, 4.0, 8.0))])
def test_strength_shrinks_distance_to_another_person(faces64, prior, degraded64, rec, sampler, mask, strengths):
    y = degraded64[[0, 2]]  # persons 0 and 2, guided toward person 1 (a different identity)
    ref = faces64[1]
    base = cosine_distance(rec, faces64[[0, 2]], ref)
    assert (base > 0.2).all(), base  # the recognizer tells these people apart
    plain = _restore(y, prior, sampler=sampler)
    assert nearest_index(plain, faces64).tolist() == [0, 2]
    dists = []
    for s in strengths:
        out = _restore(y, prior, IdentityGuidance(rec, strength=s, reference=ref, mask=mask), sampler=sampler)
        dists.append(cosine_distance(rec, out, ref))
    d = torch.stack(dists)  # [strengths, 2 faces]
    assert torch.allclose(d[0], cosine_distance(rec, plain, ref), atol=1e-6)
    assert (d[1:] < d[:-1] - 0.005).all(), d  # strictly shrinking with strength, for both faces
    assert (d[-1] < 0.7 * d[0]).all(), d
    if mask == "none":  # uncapped, strength 4 already overshoots for face 0 (module docstring, "Overshoot");
        # with the Polyak cap, far larger strengths saturate instead
        capped = [cosine_distance(rec, _restore(y, prior, IdentityGuidance(rec, strength=s, reference=ref, mask=mask,
                                                                           cap=1.0), sampler=sampler), ref)
                  for s in (4.0, 16.0)]
        assert (capped[1] <= capped[0] + 1e-3).all() and (capped[0] < 0.5 * d[0]).all(), (capped, d)


def test_reference_forms_agree(faces64, prior, degraded64, rec):
    """Images, [R, D] and [D] references give the same target; R images average their embeddings."""
    y = degraded64[:1]
    e = F.normalize(rec.embed(faces64[[1, 5]]), dim=1)  # person 1 and its mirror image
    outs = [_restore(y, prior, IdentityGuidance(rec, reference=r, mask="none"))
            for r in (faces64[[1, 5]], e, F.normalize(e.mean(0), dim=0) * 3.0)]
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)


def test_blind_targets_from_prepare(faces64, prior, degraded64, rec):
    """prepare(estimates): face i is guided toward the identity of its own estimate (here the LQ crop)."""
    y = degraded64[[0, 1, 3]]
    plain = _restore(y, prior)
    g = IdentityGuidance.for_crops(rec, y, strength=1.0, mask="none")
    g.validate(3)
    out = _restore(y, prior, g, batch_size=2)  # chunks: faces [0, 1] then [2] pick their own targets
    d_plain, d_out = cosine_distance(rec, plain, y), cosine_distance(rec, out, y)
    assert (d_out < 0.5 * d_plain).all(), (d_plain, d_out)
    # per-face: the same as guiding each face alone with its own target as a reference
    alone = _restore(y[2:3], prior, IdentityGuidance(rec, strength=1.0, mask="none", reference=y[2]), seed=2)
    assert torch.allclose(alone, out[2:3], atol=1e-5)


def test_fidelity_pulls_toward_anchor(faces64, prior, degraded64, rec):
    y = degraded64[:2]
    plain = _restore(y, prior)
    g = IdentityGuidance.for_crops(rec, y, strength=0.0, fidelity=1.0, mask="none")
    out = _restore(y, prior, g)
    assert (psnr(out, y) > psnr(plain, y) + 0.2).all(), (psnr(plain, y), psnr(out, y))


# ------------------------------------------------------------------------------------------ masks
def test_feature_mask_geometry():
    from bfr_core.faces.geometry import ffhq_template

    for s in (64, 512):
        m = feature_mask(s)
        assert m.shape == (s, s) and m.min() == 0 and m.max() == 1
        assert 0.08 < float((m > 0).float().mean()) < 0.2
        for x, y in ffhq_template(s).round().long().tolist():  # eyes, nose tip, mouth corners inside
            assert m[y, x] > 0.5, (s, x, y)
        assert m[: s // 4].sum() == 0 and m[-s // 8:].sum() == 0  # forehead/hair and chin rows untouched
        assert m[:, : s // 6].sum() == 0 and m[:, -s // 6:].sum() == 0  # cheeks/ears/background


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_mask_confines_correction(faces64, prior, degraded64, rec, sampler):
    y = degraded64[[0, 2]]
    ref = faces64[1]
    plain = _restore(y, prior, sampler=sampler)
    d0 = cosine_distance(rec, plain, ref)
    kw = dict(reference=ref, strength=3.0)
    free = _restore(y, prior, IdentityGuidance(rec, mask="none", **kw), sampler=sampler)
    hook = Recorder(IdentityGuidance(rec, mask="features", **kw))
    masked = _restore(y, prior, hook, sampler=sampler)
    m = feature_mask(64)
    outside = (m == 0).expand(3, -1, -1)
    assert len(hook.calls) == STEPS
    for t, _, _, c in hook.calls:  # exactly zero outside, at every step
        assert c[:, outside].abs().max() == 0, t
        assert c.abs().max() > 0, t
    # both gain identity; the masked run changes less outside the mask than the unguided-mask run
    d_free, d_masked = cosine_distance(rec, free, ref), cosine_distance(rec, masked, ref)
    assert (d_free < d0 - 0.05).all() and (d_masked < d0 - 0.02).all(), (d0, d_free, d_masked)
    out_free = (free - plain)[:, outside].abs().mean(1)
    out_masked = (masked - plain)[:, outside].abs().mean(1)
    assert (out_masked < 0.2 * out_free).all(), (out_free, out_masked)


def test_user_mask_in_crop_space_is_resized(faces64, prior, degraded64, rec):
    """A [B, H, W] mask at 128 px (crop space) for 64 px sampling: per-face, exact zeros stay exact zeros."""
    user = torch.zeros(2, 128, 128)
    user[0, 40:80, 30:100] = 1.0  # face 0: eye band
    user[1, 80:110, 40:90] = 1.0  # face 1: mouth box
    hook = Recorder(IdentityGuidance(rec, reference=faces64[1], strength=2.0, mask=user))
    _restore(degraded64[[0, 2]], prior, hook, batch_size=1)
    small = F.interpolate(user[:, None], size=(64, 64), mode="bilinear", antialias=True, align_corners=False)[:, 0]
    for t, faces, _, c in hook.calls:
        (i,) = faces
        zero = (small[i] < 1e-6).expand(3, -1, -1)
        assert c[0][zero].abs().max() == 0, (t, i)
        assert c[0][~zero].abs().max() > 0, (t, i)
    # a single [H, W] mask is shared by every face
    IdentityGuidance(rec, reference=faces64[1], mask=user[0]).validate(5)


# ------------------------------------------------------------------------------------------ strength 0, range
def test_strength_zero_is_exactly_no_guidance(faces64, prior, degraded64, rec):
    y = degraded64[:2]
    calls = [0]

    class Counting(TinyRecognizer):
        def embed(self, faces):
            calls[0] += 1
            return super().embed(faces)

    r = Counting()
    g = IdentityGuidance(r, strength=0.0, reference=faces64[1])
    n0 = calls[0]
    for sampler in ("ddim", "dpmsolver++"):
        assert torch.equal(_restore(y, prior, g, sampler=sampler), _restore(y, prior, sampler=sampler))
    assert calls[0] == n0  # the recognizer is not even run
    c = g(torch.zeros(1, 3, 64, 64), 200, torch.zeros(1, 3, 64, 64), faces=torch.tensor([0]))
    assert torch.equal(c, torch.zeros(1, 3, 64, 64))


def test_step_range_respected(faces64, prior, degraded64, rec):
    g = IdentityGuidance(rec, strength=2.0, start=0.3, end=0.1, reference=faces64[1], mask="none")
    hook = Recorder(g)
    _restore(degraded64[:1], prior, hook)  # t = 400, 360, …, 40
    ts = denoising_timesteps(400, STEPS)
    assert [t for t, *_ in hook.calls] == ts
    active = [t for t, _, _, c in hook.calls if c.abs().max() > 0]
    assert active == [t for t in ts if 100 <= t <= 300] == [280, 240, 200, 160, 120]
    for t, _, _, c in hook.calls:
        if t not in active:
            assert torch.equal(c, torch.zeros_like(c))
    for t, _, _, c in hook.calls:  # RMS (no mask) ≤ strength · unit · σ_t (less where the overshoot cap binds)
        if t in active:
            assert float(c.pow(2).mean().sqrt()) <= 2.0 * STRENGTH_UNIT * g.sigma(t) * (1 + 1e-5)


def test_correction_scaling(faces64, rec):
    """c = −strength · unit · σ_t · ĝ with ĝ the RMS-normalised (masked) gradient; cap=1 stops at the Polyak step."""
    x0 = faces64[:2] * 2 - 1
    faces = torch.tensor([0, 1])
    for mask in ("none", "features"):
        m = torch.ones(64, 64) if mask == "none" else feature_mask(64)
        small = IdentityGuidance(rec, strength=0.01, reference=faces64[2], mask=mask)
        c = small(x0, 300, x0, faces=faces)
        inv = torch.where(m > 0, 1 / m.clamp_min(1e-30), torch.zeros_like(m))
        rms_in = ((c.pow(2) * inv).sum((1, 2, 3)) / (3 * m.sum())).sqrt()  # mask-weighted RMS of c/m = of −s·u·σ·ĝ
        assert (c[:, (m == 0).expand(3, -1, -1)] == 0).all()
        sigma = IdentityGuidance(rec, reference=faces64[2]).sigma(300)
        assert torch.allclose(rms_in, torch.full((2,), 0.01 * STRENGTH_UNIT * sigma), rtol=1e-4), rms_in
        # direction: the same at any strength below the cap; magnitude: linear in strength
        c2 = IdentityGuidance(rec, strength=0.02, reference=faces64[2], mask=mask)(x0, 300, x0, faces=faces)
        assert torch.allclose(c2, 2 * c, atol=1e-7)
        # a huge strength is capped where the linearised distance reaches 0: ⟨∇L, c⟩ = −L
        big = IdentityGuidance(rec, strength=1e4, reference=faces64[2], mask=mask, cap=1.0, record=True)
        cb = big(x0, 300, x0, faces=faces)
        leaf = x0.clone().requires_grad_(True)
        loss = cosine_distance_grad(rec, leaf, faces64[2])
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        lin = (grad * cb).sum((1, 2, 3))
        assert torch.allclose(lin, -loss.detach(), rtol=1e-3), (lin, loss)
        assert torch.allclose(big.trace[0]["distance"], loss.detach(), atol=1e-6)


def cosine_distance_grad(rec, x0, ref01):
    e = F.normalize(rec.embed((x0 + 1) / 2), dim=1)
    r = F.normalize(rec.embed(ref01[None]), dim=1)
    return 1 - (e * r).sum(1)


# ------------------------------------------------------------------------------------------ bad input
def test_mismatched_batches_raise(faces64, prior, degraded64, rec):
    y = degraded64[:3]
    g = IdentityGuidance.for_crops(rec, y, mask="none")  # 3 per-face targets …
    with pytest.raises(ValueError, match="prepared with 3"):
        g.validate(4)
    with pytest.raises(ValueError, match="face 3"):
        _restore(degraded64, prior, g)  # … but 4 faces restored
    masks = torch.ones(2, 64, 64)
    with pytest.raises(ValueError, match="masks"):
        _restore(y, prior, IdentityGuidance(rec, reference=faces64[1], mask=masks))
    with pytest.raises(ValueError, match="embeddings"):
        IdentityGuidance(rec, reference=faces64[1]).prepare(y, embeddings=torch.randn(2, 64))
    with pytest.raises(ValueError, match="size"):  # a 512-d reference for a 64-d recognizer
        _restore(y, prior, IdentityGuidance(rec, reference=torch.randn(512)))
    with pytest.raises(ValueError, match="no target"):
        _restore(y, prior, IdentityGuidance(rec))
    with pytest.raises(ValueError, match="fidelity"):
        _restore(y, prior, IdentityGuidance(rec, reference=faces64[1], fidelity=0.5))
    for kw in (dict(strength=-1), dict(start=0.2, end=0.5), dict(start=1.5), dict(mask="eyes"),
               dict(fidelity=float("nan")), dict(mask=torch.ones(2, 3, 4, 4)), dict(cap=0.0)):
        with pytest.raises(ValueError):
            IdentityGuidance(rec, reference=faces64[1], **kw)
    with pytest.raises(ValueError, match="channels-last"):
        IdentityGuidance(rec, reference=faces64[:2].movedim(1, -1))
    with pytest.raises(TypeError):
        IdentityGuidance(object())


def test_non_differentiable_recognizer_is_reported(faces64, prior, degraded64, rec):
    class NoGrad(TinyRecognizer):
        def embed(self, faces):
            with torch.no_grad():
                return super().embed(faces)

    with pytest.raises(RuntimeError, match="differentiable"):
        _restore(degraded64[:1], prior, IdentityGuidance(NoGrad(), reference=faces64[1]))


# ------------------------------------------------------------------------------------------ devices, dtypes
class StrictRecognizer(TinyRecognizer):
    """Asserts that its input arrives on its own device and in its own dtype (what a real net on another
    device/dtype than the prior would need), and reports them as attributes."""

    def embed(self, faces):
        p = next(self.parameters())
        assert faces.device == p.device and faces.dtype == p.dtype, (faces.device, faces.dtype, p.device, p.dtype)
        return super().embed(faces)


def test_bf16_recognizer_with_float32_prior(faces64, prior, degraded64):
    r32 = StrictRecognizer()
    r16 = StrictRecognizer().to(torch.bfloat16)
    assert recognizer_device_dtype(r16) == (torch.device("cpu"), torch.bfloat16)
    ref = faces64[1]
    y = degraded64[[0, 2]]
    d0 = cosine_distance(r32, _restore(y, prior), ref)
    hook = Recorder(IdentityGuidance(r16, reference=ref, strength=2.0, mask="none"))
    out = _restore(y, prior, hook)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(c.dtype == torch.float32 for *_, c in hook.calls)
    assert (cosine_distance(r32, out, ref) < d0 - 0.02).all()


def test_device_attribute_and_protocol(faces64, rec):
    """The recognizer's own ``device`` attribute wins over its parameters'; objects without parameters work."""

    class Wrapped:  # not an nn.Module: a plain object with embed() and a device attribute
        device = "cpu"

        def __init__(self, inner):
            self.inner = inner

        def embed(self, faces):
            assert faces.device == torch.device(self.device)
            return self.inner.embed(faces)

    w = Wrapped(rec)
    assert isinstance(w, FaceRecognizer) and isinstance(rec, FaceRecognizer)
    assert recognizer_device_dtype(w) == (torch.device("cpu"), None)
    g = IdentityGuidance(w, reference=faces64[1], strength=1.0, mask="none")
    x0 = faces64[:2] * 2 - 1
    c = g(x0, 200, x0, faces=torch.tensor([0, 1]))
    assert c.shape == x0.shape and c.device == x0.device and c.abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: recognizer and prior on different devices")
def test_recognizer_on_other_device_than_prior(faces64, prior, degraded64):
    r = StrictRecognizer().cuda()
    hook = Recorder(IdentityGuidance(r, reference=faces64[1], strength=2.0))
    out = _restore(degraded64[:1], prior, hook)  # analytic prior on the CPU, recognizer on CUDA
    assert all(c.device.type == "cpu" for *_, c in hook.calls)
    assert cosine_distance(r, out, faces64[1]) < cosine_distance(r, _restore(degraded64[:1], prior), faces64[1])


# ------------------------------------------------------------------------------------------ helper
def test_cosine_distance_helper(faces64, rec):
    d = cosine_distance(rec, faces64[:4], faces64[:4])
    assert d.shape == (4,) and d.abs().max() < 1e-5
    e = rec.embed(faces64[:4])
    assert torch.allclose(cosine_distance(rec, faces64[:4], e * 5), d, atol=1e-5)  # embeddings renormalised
    row = cosine_distance(rec, faces64[:4], faces64[1])  # broadcast one against many
    assert row.shape == (4,) and row[1].abs() < 1e-5 and (row[[0, 2, 3]] > 0.05).all()
    with pytest.raises(ValueError):
        cosine_distance(rec, faces64[:3], faces64[:2])


def test_with_the_projects_arcface_recognizer(faces64, prior, degraded64):
    """Integration with bfr_core.identity.recognizers: a random-weight iresnet18 `Recognizer`
    (ArcFace 112 crop of the aligned face, frozen, `.device`/`.dtype` properties) drives the guidance."""
    from bfr_core.archs import iresnet as backbones
    from bfr_core.identity import recognizers
    torch.manual_seed(0)
    r = recognizers.Recognizer(backbones.IResNet(backbones.IRESNET_LAYERS["iresnet18"]), "iresnet18", "random")
    assert isinstance(r, FaceRecognizer)
    y, ref = degraded64[[0, 2]], faces64[1]
    d0 = cosine_distance(r, _restore(y, prior), ref)
    out = _restore(y, prior, IdentityGuidance(r, strength=2.0, reference=ref))  # default mask "features"
    assert (cosine_distance(r, out, ref) < d0 - 0.01).all()
