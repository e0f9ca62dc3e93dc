"""Identity guidance in latent space (`IdentityGuidance(..., latent_prior=prior)`, CLR-Face's setting).

An exact prior in latent space: the analytic denoiser (tests/analytic_prior.py) over the latents of the 4 real
aligned faces + mirrors, encoded by an exactly invertible autoencoder (ToyVAE: pixel-unshuffle + orthogonal 1×1).
The recognizer is the tiny random-weight one of tests/test_guidance.py; the guidance decodes the predicted clean
latent, measures the recognizer's distance and steers the latent.
"""
from __future__ import annotations

import pytest
import torch

from analytic_prior import AnalyticDenoiser, ToyVAE, degrade, linear_alphas_cumprod, nearest_index, psnr
from bfr_core.diffusion.priors import LatentPrior
from bfr_core.identity.guidance import IdentityGuidance, cosine_distance, feature_mask
from bfr_core.identity.settings import IdentitySettings
from bfr_core.restoration.difface import restore_faces
from bfr_core.restoration.restorer import FaceRestorer
from test_guidance import Recorder, TinyRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 10


@pytest.fixture(scope="module")
def latent_prior(faces64) -> LatentPrior:
    acp = linear_alphas_cumprod()
    prior = LatentPrior(None, ToyVAE(), acp, latent_size=32, latent_channels=12, scaling_factor=0.7)
    prior.model = AnalyticDenoiser(prior.encode(faces64), acp)  # exact ε* over the encoded faces
    return prior


@pytest.fixture(scope="module")
def degraded(faces64) -> torch.Tensor:
    return torch.stack([degrade(faces64[i], seed=i) for i in (0, 2, 3)])  # face 1 is the reference person


@pytest.fixture(scope="module")
def rec() -> TinyRecognizer:
    return TinyRecognizer()


def _restore(y, prior, guidance=None):
    return restore_faces(y, prior, steps=STEPS, seed=0, guidance=guidance)


def test_exact_latent_prior_restores_and_blind_guidance_keeps_it(faces64, latent_prior, degraded, rec):
    truth = faces64[[0, 2, 3]]
    assert (psnr(_restore(degraded, latent_prior), truth) >= 40).all()
    blind = IdentityGuidance.for_crops(rec, degraded, strength=0.5, mask="features", latent_prior=latent_prior)
    out = _restore(degraded, latent_prior, blind)
    assert (psnr(out, truth) >= 40).all() and nearest_index(out, faces64).tolist() == [0, 2, 3]


@pytest.mark.parametrize("mask, strengths", [("none", (0.0, 0.25, 0.5, 1.0)), ("features", (0.0, 1.0, 2.0, 4.0, 8.0))])
def test_strength_moves_distance_to_a_reference_monotonically(faces64, latent_prior, degraded, rec, mask, strengths):
    ref = faces64[1]
    d = torch.stack([cosine_distance(rec, _restore(degraded, latent_prior, IdentityGuidance(
        rec, strength=s, reference=ref, mask=mask, latent_prior=latent_prior)), ref) for s in strengths])
    assert (d[1:] < d[:-1]).all(), d  # per face, every step up in strength lowers the distance
    assert (d[-1] < d[0] - 0.05).all(), d


def test_mask_on_the_latent_grid_leaves_excluded_positions_unchanged(faces64, latent_prior, degraded, rec):
    """A crop-space user mask (128 px, left half of the face) is downsampled to the 32×32 latent grid: the correction
    is exactly 0 at latent positions it excludes, every step; the restored image changes mostly where it allows."""
    user = torch.zeros(1, 128, 128)
    user[:, :, :64] = 1.0
    hook = Recorder(IdentityGuidance(rec, strength=2.0, reference=faces64[1], mask=user, latent_prior=latent_prior))
    guided = _restore(degraded, latent_prior, hook)
    plain = _restore(degraded, latent_prior)
    assert len(hook.calls) == STEPS and hook.calls[0][3].shape == (3, 12, 32, 32)
    for _, _, _, c in hook.calls:
        # the antialiased 4× downsample spreads the mask's edge over one latent column (16); beyond it: exact zeros
        assert torch.count_nonzero(c[..., 17:]) == 0 and c[..., :16].abs().amax() > 0
    diff = (guided - plain).abs().mean(1)  # [3, 64, 64]
    assert diff[..., 34:].amax() == 0  # the decoder is local (2×2 pixels per latent position): untouched
    assert diff[..., :30].mean() > 1e-3
    # the "features" mask, drawn at the latent size
    hook = Recorder(IdentityGuidance(rec, strength=1.0, reference=faces64[1], mask="features", latent_prior=latent_prior))
    _restore(degraded[:1], latent_prior, hook)
    outside = feature_mask(32) == 0
    assert all(torch.count_nonzero(c[..., outside]) == 0 for *_, c in hook.calls)


def test_fidelity_anchor_is_the_estimates_latent(faces64, latent_prior, degraded, rec):
    g = IdentityGuidance.for_crops(rec, degraded, strength=0.0, fidelity=1.0, mask="none", latent_prior=latent_prior)
    z = latent_prior.encode(degraded)
    x0 = z + 0.5
    c = g(x0, 300, x0, faces=torch.arange(3))
    sigma = g.sigma(300)
    assert torch.allclose(c, -sigma * (x0 - z), atol=1e-5)


def test_fidelity_anchors_can_be_encoded_before_sampling(latent_prior, degraded, rec):
    """encode_anchors does the anchors' VAE encode up front: the guided step itself then encodes nothing (ComfyUI's
    samplers call it so that no VAE load happens while the UNet samples), with the same correction."""
    lazy = IdentityGuidance.for_crops(rec, degraded, strength=0.0, fidelity=1.0, mask="none", latent_prior=latent_prior)
    eager = IdentityGuidance.for_crops(rec, degraded, strength=0.0, fidelity=1.0, mask="none",
                                       latent_prior=latent_prior)
    z = latent_prior.encode(degraded)
    x0 = z + 0.5
    calls = []
    original = latent_prior.encode
    latent_prior.encode = lambda images: calls.append(images.shape[0]) or original(images)
    try:
        assert eager.encode_anchors(tuple(x0.shape[-2:])) is eager and calls == [3]
        c_eager = eager(x0, 300, x0, faces=torch.arange(3))
        assert calls == [3]  # nothing more during the step
        c_lazy = lazy(x0, 300, x0, faces=torch.arange(3))
        assert calls == [3, 3]  # the lazy one encodes at its first guided step
    finally:
        latent_prior.encode = original
    assert torch.equal(c_eager, c_lazy)
    unguided = IdentityGuidance(rec, strength=1.0, reference=degraded[:1], mask="none", latent_prior=latent_prior)
    assert unguided.encode_anchors(tuple(x0.shape[-2:])) is unguided  # no fidelity: nothing to encode


def test_face_restorer_guides_a_latent_prior(faces64, latent_prior, degraded, rec):
    ref = faces64[1]
    plain = FaceRestorer(latent_prior, steps=STEPS)(degraded)
    guided = FaceRestorer(latent_prior, steps=STEPS, identity=IdentitySettings(rec, strength=1.0, mask="none",
                                                                              reference=ref[None]))(degraded)
    assert (cosine_distance(rec, guided, ref) < cosine_distance(rec, plain, ref) - 0.05).all()


def test_latents_without_latent_prior_are_refused(latent_prior, faces64, degraded, rec):
    with pytest.raises(ValueError, match="latent_prior"):
        _restore(degraded, latent_prior, IdentityGuidance(rec, reference=faces64[1], mask="none"))
    with pytest.raises(TypeError, match="latent_prior"):
        IdentityGuidance(rec, reference=faces64[1], latent_prior=object())


def test_large_strengths_keep_moving_identity_with_substeps(faces64, degraded, rec):
    """Pixel prior (exact), mask "features": one normalised step per denoising step overshoots beyond strength ~16
    (the distance rises again); with sub-steps (the default) every step up in strength lowers it
    (bfr_core.identity.guidance, "Large strengths: sub-steps")."""
    from analytic_prior import AnalyticPrior

    prior, ref, strengths = AnalyticPrior(faces64), faces64[1], (0.0, 16.0, 64.0)

    def sweep(substep):
        return torch.stack([cosine_distance(rec, _restore(degraded[:2], prior, IdentityGuidance(
            rec, strength=s, reference=ref, mask="features", substep=substep)), ref) for s in strengths])

    new, old = sweep(2.0), sweep(None)
    assert (new[1:] < new[:-1]).all(), new
    assert (new[-1] < 0.5 * new[0]).all(), new
    assert (old[-1] > old[-2]).any(), old  # what sub-steps fixed
    assert torch.equal(new[0], old[0])  # strength 0: no guidance either way
    g = IdentityGuidance(rec, strength=64.0, reference=ref)
    assert g.substeps == 8 and IdentityGuidance(rec, strength=1.0, reference=ref).substeps == 1
