"""bfr_core.restoration.restorer.FaceRestorer (the one restore recipe), stable per-face keys and seeds, and
restore_images driving a FaceRestorer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analytic_prior import AnalyticPrior, degrade, psnr
from bfr_core import AlignedFaces, FaceDetections, ffhq_template, restore_faces, restore_images
from bfr_core.faces.types import order_within_groups
from bfr_core.identity.settings import IdentitySettings
from bfr_core.restoration.backbones import IdentityRestorer
from bfr_core.restoration.restorer import FaceRestorer

pytestmark = pytest.mark.usefixtures("one_thread")


def _backbone(x: torch.Tensor) -> torch.Tensor:
    """A fixed, visibly non-identity 'backbone'."""
    return (x * 0.8 + 0.1) ** 1.2


class _Rec(torch.nn.Module):
    """A tiny random recognizer: mean-pooled conv features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def embed(self, faces):
        return F.normalize(self.conv(faces * 2 - 1).mean((2, 3)), dim=1)


@pytest.fixture(scope="module")
def prior(faces64):
    return AnalyticPrior(faces64)


@pytest.fixture(scope="module")
def degraded(faces64):
    return torch.stack([degrade(faces64[i], seed=i) for i in (0, 2, 5)])


def test_restorer_is_restore_faces_with_the_backbone(prior, degraded):
    """The recipe in one object: bit-identical to restore_faces running the backbone itself."""
    kw = dict(strength=0.4, steps=8, sampler="ddim", eta=0.5)
    ours = FaceRestorer(prior, _backbone, batch_size=2, **kw)(degraded, seed=3)
    ref = restore_faces(degraded, prior, restorer=_backbone, seed=3, batch_size=2, **kw)
    assert torch.equal(ours, ref)
    # Crops of another size than the prior's: the backbone runs at the prior's size and the result comes back.
    big = F.interpolate(degraded, size=(96, 96), mode="bilinear", align_corners=False)
    ours = FaceRestorer(prior, _backbone, batch_size=2, **kw)(big, seed=3)
    ref = restore_faces(big, prior, restorer=_backbone, seed=3, batch_size=2, **kw)
    assert ours.shape == big.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_restorer_restores_on_the_analytic_prior(prior, degraded, faces64):
    out = FaceRestorer(prior, strength=0.4, steps=20)(degraded)
    assert (psnr(out, faces64[[0, 2, 5]]) > 40).all()


def test_backbone_only_and_nothing_to_do(prior, degraded):
    assert torch.equal(FaceRestorer(prior, None, strength=0.0)(degraded), degraded.clamp(0, 1))
    assert torch.equal(FaceRestorer(None, IdentityRestorer())(degraded), degraded.clamp(0, 1))
    out = FaceRestorer(None, _backbone)(degraded)
    torch.testing.assert_close(out, _backbone(degraded).clamp(0, 1), atol=1e-6, rtol=0)
    # strength 0 with a prior: the backbone's estimate, computed at the prior's size as restore_faces does.
    ref = restore_faces(degraded, prior, restorer=_backbone, strength=0.0)
    torch.testing.assert_close(FaceRestorer(prior, _backbone, strength=0.0)(degraded), ref, atol=1e-6, rtol=0)
    assert FaceRestorer(prior)(degraded[:0]).shape == (0, 3, 64, 64)


def test_per_face_seeds_follow_the_face_not_its_position(prior, degraded):
    fr = FaceRestorer(prior, strength=0.6, steps=6, batch_size=2)
    both = fr(degraded[:2], seeds=[11, 4])
    assert torch.equal(fr(degraded[1:2], seeds=[4]), both[1:2])
    assert torch.equal(fr(degraded[1:2], seed=4), both[1:2])  # without seeds: face i uses seed + i
    assert not torch.equal(fr(degraded[1:2], seed=5), both[1:2])


def test_progress_covers_backbone_and_sampling(prior, degraded):
    calls = []
    FaceRestorer(prior, _backbone, strength=0.4, steps=3, batch_size=2)(degraded, progress=lambda d, t: calls.append((d, t)))
    assert calls[:2] == [(1, 2), (2, 2)]  # the backbone pass, per chunk
    assert calls[-1] == (6, 6)  # 3 steps x 2 chunks
    default = []
    FaceRestorer(prior, strength=0.4, steps=2, progress=lambda d, t: default.append(t))(degraded[:1])
    assert default and default[-1] == 2


def test_identity_guidance_through_the_restorer(prior, degraded, faces64):
    rec = _Rec()
    ref = rec.embed(faces64[7:8]).detach()
    plain = FaceRestorer(prior, strength=0.5, steps=10)(degraded[:1], seed=1)
    guided = FaceRestorer(prior, strength=0.5, steps=10,
                          identity=IdentitySettings(rec, strength=8.0, mask="none", reference=ref))(degraded[:1], seed=1)
    d = lambda x: 1 - float((rec.embed(x) * ref).sum().detach())  # noqa: E731
    assert d(guided) < d(plain) - 1e-3
    assert FaceRestorer(prior, identity=IdentitySettings(rec, strength=0.0), steps=4)(degraded[:1]).shape == (1, 3, 64, 64)


def test_settings_are_checked_when_made(prior):
    rec = _Rec()
    with pytest.raises(ValueError, match="end must not be larger than start"):
        IdentitySettings(rec, start=0.2, end=0.5)
    with pytest.raises(ValueError, match="strength"):
        IdentitySettings(rec, strength=-1)
    with pytest.raises(ValueError, match="needs a prior|load a prior"):
        FaceRestorer(None, identity=IdentitySettings(rec))
    with pytest.raises(ValueError, match="batch_size"):
        FaceRestorer(prior, batch_size=0)


def test_aligned_faces_keys_and_seeds():
    image_index = torch.tensor([0, 0, 1, 1, 1, 3])
    assert order_within_groups(image_index).tolist() == [0, 1, 0, 1, 2, 0]
    n = len(image_index)
    faces = AlignedFaces(image_index, torch.zeros(n, 2, 3), torch.zeros(n, 5, 2), torch.ones(n), 512, [(8, 8)] * 4)
    assert faces.keys() == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (3, 0)]
    assert faces.face_seeds(10) == [10, 11, 10, 11, 12, 10]
    sub = faces.subset([3, 5])
    assert sub.keys() == [(1, 1), (3, 0)]  # a face keeps its key whatever else is kept
    tracked = AlignedFaces(image_index, torch.zeros(n, 2, 3), torch.zeros(n, 5, 2), torch.ones(n), 512,
                           [(8, 8)] * 4, track_id=torch.tensor([7, 2, 7, 2, 9, 7]))
    assert tracked.face_seeds(0) == [7, 2, 7, 2, 9, 7]  # the same person, the same noise in every frame
    with pytest.raises(ValueError, match="track_id"):
        AlignedFaces(image_index, torch.zeros(n, 2, 3), torch.zeros(n, 5, 2), torch.ones(n), 512, [(8, 8)] * 4,
                     track_id=torch.tensor([0, 1]))


def _photo_with_face(face01: torch.Tensor, size: int = 128) -> tuple[torch.Tensor, FaceDetections]:
    """The aligned face as a whole 'photo', with its landmarks where the template puts them."""
    img = F.interpolate(face01[None], size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    lm = ffhq_template(size).float()[None]
    box = torch.tensor([[lm[0, :, 0].min() - 20, lm[0, :, 1].min() - 30, lm[0, :, 0].max() + 20,
                         lm[0, :, 1].max() + 20]])
    return img, FaceDetections(box, lm, torch.ones(1))


class _ZeroEpsPrior:
    """Predicts ε = 0: the start noise goes straight into the result, so a wrong seed cannot hide."""

    def __init__(self, size: int = 64):
        from bfr_core.diffusion.schedules import linear_alphas_cumprod

        self.model = lambda x, t: torch.zeros_like(x)
        self.alphas_cumprod = linear_alphas_cumprod()
        self.sample_size, self.in_channels, self.learned_variance = size, 3, False


def test_restore_images_seeds_each_face_by_its_key(faces64):
    (a, da), (b, db) = _photo_with_face(faces64[1]), _photo_with_face(faces64[4])
    fr = FaceRestorer(_ZeroEpsPrior(), strength=0.2, steps=4)
    both = restore_images(torch.cat([a, b]), None, fr, seed=7, detections=[da, db])
    alone = restore_images(b, None, fr, seed=7, detections=[db])
    assert both.faces.crop_size == 512 == fr.crop_size
    # Image 1's face does not depend on image 0: seeding by flat position would give it seed + 1 in the batch.
    assert torch.equal(both.restored[1], alone.restored[0])
    shifted = restore_images(b, None, fr, seed=8, detections=[db])
    assert float((shifted.restored[0] - alone.restored[0]).abs().max()) > 1e-2
    assert torch.equal(both.images[1], alone.images[0])  # and so is the pasted photo
    assert not torch.equal(both.images[1], b[0])  # and it was restored
    with pytest.raises(ValueError, match="detector or detections"):
        restore_images(a, None, fr)


def test_settings_fail_before_any_face_is_processed(prior):
    calls = []

    def backbone(x):
        calls.append(1)
        return x

    with pytest.raises(ValueError, match="official"):  # t_N = 410 is not on DifFace's 4-step respacing
        FaceRestorer(prior, backbone, strength=0.41, sampler="official")
    with pytest.raises(ValueError, match="unknown sampler|sampler"):
        FaceRestorer(prior, backbone, sampler="euler_a_typo")
    with pytest.raises(ValueError, match="eta must be in"):
        FaceRestorer(prior, backbone, eta=2.0)
    with pytest.raises(ValueError, match="steps"):
        FaceRestorer(prior, backbone, steps=0)
    assert not calls
    FaceRestorer(prior, backbone, strength=0.0, sampler="official")  # nothing sampled: nothing to check


def test_progress_without_a_backbone_counts_sampling_only(prior, degraded):
    calls = []
    FaceRestorer(prior, strength=0.4, steps=3, batch_size=2)(degraded, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_identity_guidance_accepts_a_latent_prior(prior):
    from bfr_core.diffusion.priors import LatentPrior

    class _VAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

    vae = _VAE()
    latent = LatentPrior(lambda z, t: torch.zeros_like(z), vae, prior.alphas_cumprod, 8, 4)
    FaceRestorer(latent, identity=IdentitySettings(_Rec()))  # latent-space guidance (tests/test_latent_guidance.py)
    assert any(m is vae for m in FaceRestorer(latent).modules())  # the VAE moves to the device with the rest


def test_bad_crops_are_refused_even_with_nothing_to_do(prior):
    for fr in (FaceRestorer(prior), FaceRestorer(None)):
        with pytest.raises(ValueError, match="NaN"):
            fr(torch.full((1, 3, 8, 8), float("nan")))
        with pytest.raises(ValueError, match="uint8"):
            fr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
        with pytest.raises(ValueError, match="channels"):
            fr(torch.zeros(1, 4, 8, 8))
