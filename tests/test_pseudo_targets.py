"""DT-BFR pseudo-targets: bfr_core.restoration.pseudo_targets, diffusion.consistency, samplers.ddpm, the CLI.

Quality on the exact analytic prior over real faces (tests/analytic_prior.py); plumbing (seeds, chunks, resume)
on the tiny random conv prior of test_sampler; the CLI with the tiny trained diffusers prior from ../shared/data.
Print the PSNR figures with: pytest -q -s tests/test_pseudo_targets.py -k 'land or colours'
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analytic_prior import AnalyticPrior, degrade, linear_alphas_cumprod, nearest_index, psnr
from bfr_core import generate_pseudo_targets, write_pseudo_targets
from bfr_core.cli import main
from bfr_core.diffusion.consistency import check_lowpass_factor, lowpass, lowpass_grid, replace_lowpass
from bfr_core.diffusion.priors import LatentPrior
from bfr_core.diffusion.samplers import Noise, ddpm
from bfr_core.restoration import pseudo_targets as pt
from bfr_core.utils import resize_antialiased
from conftest import shared_path
from test_sampler import ConvPrior

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def degraded(faces64):
    """4 of the analytic prior's faces, degraded (blur, ×1/4, noise, JPEG 40, back up)."""
    idx = [0, 2, 5, 7]
    return torch.stack([degrade(faces64[i], seed=10 + i) for i in idx]), faces64[idx]


class Counting:
    """A DenoiserPrior wrapper that counts model calls."""

    def __init__(self, prior):
        self.inner, self.calls = prior, 0
        self.alphas_cumprod, self.sample_size = prior.alphas_cumprod, prior.sample_size
        self.in_channels, self.learned_variance = prior.in_channels, getattr(prior, "learned_variance", False)

    def model(self, x, t):
        self.calls += 1
        return self.inner.model(x, t)


# ------------------------------------------------------------------------------------------- consistency
def test_replace_lowpass_is_the_exact_swap():
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    out = replace_lowpass(x, ref, 16)
    assert torch.equal(out, x - lowpass(x, 16) + lowpass(ref, 16))
    # lowpass = antialiased bicubic to 4×4 and back
    down = torch.nn.functional.interpolate(ref, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    assert torch.equal(lowpass(ref, 16), resize_antialiased(down, (64, 64)))
    # the high band is x's, the low band (almost) ref's: bicubic down/up is not an exact projection
    assert torch.allclose(out - lowpass(out, 16), x - lowpass(x, 16) - lowpass(x - lowpass(x, 16), 16) +
                          lowpass(ref, 16) - lowpass(lowpass(ref, 16), 16), atol=1e-5)
    grid = lambda v: resize_antialiased(v, (4, 4))  # noqa: E731
    rel = (grid(out) - grid(ref)).norm() / (grid(x) - grid(ref)).norm()
    assert rel < 0.3, rel  # white noise, the worst case: ~0.24 of the gap is left on the 4×4 grid
    assert torch.equal(replace_lowpass(x, ref, 1), ref)  # factor 1: everything is "low"
    assert lowpass_grid((64, 64), 12) == (5, 5) and lowpass_grid((64, 64), 64) == (1, 1)
    with pytest.raises(ValueError, match="lowpass factor"):
        check_lowpass_factor(0, 64)
    with pytest.raises(ValueError, match="lowpass factor"):
        check_lowpass_factor(65, 64)
    with pytest.raises(ValueError, match="same shape"):
        replace_lowpass(x, ref[:1], 16)


def test_ddpm_matches_guided_diffusion_respaced_p_sample():
    """samplers.ddpm against guided-diffusion's respaced p_sample written from its equations (numpy float64):
    betas of the respaced chain 1 − ā_t/ā_prev, posterior mean coefficients, fixed_small variance, no noise at the
    last step."""
    prior = ConvPrior(channels=3, size=16, learned_variance=True, seed=3)
    acp = linear_alphas_cumprod()
    ts = [40, 36, 32, 28, 24, 20, 16, 12, 8, 4]
    x_start = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def denoise(x, t):
        eps = prior.model(x, torch.full((x.shape[0],), t))[:, :3].float()
        a = float(acp[t])
        return eps, ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)

    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    got = ddpm(denoise, x_start.clone(), ts, acp, noise=Noise(gens, (3, 16, 16), torch.device("cpu")).draw)

    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    a_sp = acp[ts[::-1]].numpy()  # respaced chain, ascending: index i ↔ timestep ts[::-1][i]
    a_prev_sp = np.append(1.0, a_sp[:-1])
    betas = 1.0 - a_sp / a_prev_sp
    c1 = betas * np.sqrt(a_prev_sp) / (1.0 - a_sp)
    c2 = (1.0 - a_prev_sp) * np.sqrt(1.0 - betas) / (1.0 - a_sp)
    var = betas * (1.0 - a_prev_sp) / (1.0 - a_sp)
    x = x_start.double()
    for i in reversed(range(len(ts))):
        _, x0 = denoise(x.float(), ts[::-1][i])
        z = torch.stack([torch.randn(3, 16, 16, generator=g) for g in gens]).double()
        x = c1[i] * x0.double() + c2[i] * x + (math.sqrt(var[i]) * z if i > 0 else 0)
    assert torch.allclose(got.double(), x, atol=2e-5), (got.double() - x).abs().max()


# ------------------------------------------------------------------------------------------- quality
def test_pseudo_targets_land_on_the_clean_faces(faces64, degraded):
    lq, clean = degraded
    prior = AnalyticPrior(faces64)
    out = generate_pseudo_targets(lq, prior, t_start=150, lowpass=16, constrain_until=90, seed=0)
    assert out.shape == lq.shape and out.dtype == lq.dtype and 0 <= out.min() and out.max() <= 1
    p_lq, p_out = psnr(lq, clean), psnr(out, clean)
    low_lq, low_out = psnr(lowpass(lq, 16), lowpass(clean, 16)), psnr(lowpass(out, 16), lowpass(lq, 16))
    print(f"\nPSNR to clean: degraded {p_lq.mean():.2f} dB -> pseudo-targets {p_out.mean():.2f} dB "
          f"(per face {[round(v, 2) for v in p_out.tolist()]}); low band (/16) of target vs estimate "
          f"{low_out.mean():.2f} dB (degraded vs clean {low_lq.mean():.2f} dB)")
    assert bool((p_out > p_lq + 10).all()) and bool((p_out > 35).all())
    assert bool((low_out > 30).all())  # the target keeps the estimate's coarse content and colours


def test_the_constraint_keeps_the_photos_colours(faces64):
    """Faces plus colour-cast twins (same detail, other low band): started at t = 150 of 250 (timestep 600) the
    prior alone sometimes lands on the wrong face or twin; with the low band held to the estimate's until t = 90
    every target lands on its own face."""
    data = torch.cat([faces64, (faces64 + torch.tensor([0.12, 0.0, -0.12]).view(1, 3, 1, 1)).clamp(0, 1)])
    prior = AnalyticPrior(data)
    lq = torch.stack([degrade(f, seed=i, noise=0.1) for i, f in enumerate(data)])
    on = generate_pseudo_targets(lq, prior, constrain_until=90, seed=0, batch_size=16)
    off = generate_pseudo_targets(lq, prior, constrain_until=0, seed=0, batch_size=16)
    right_on = (nearest_index(on, data) == torch.arange(16)).sum().item()
    right_off = (nearest_index(off, data) == torch.arange(16)).sum().item()
    print(f"\nfaces + colour twins, 16 degraded: right face {right_on}/16 with the constraint, {right_off}/16 without; "
          f"PSNR to clean {psnr(on, data).mean():.2f} vs {psnr(off, data).mean():.2f} dB "
          f"(degraded {psnr(lq, data).mean():.2f} dB)")
    assert right_on == 16 and bool((psnr(on, data) > 35).all())
    assert right_off < 16  # the constraint is what keeps them (seed 0: 14/16 without it)


def test_constraint_holds_the_low_band_while_on(faces64, degraded, monkeypatch):
    lq, _ = degraded
    prior = AnalyticPrior(faces64)
    swaps, steps = [], []
    real = pt.replace_lowpass

    def recording(x, ref, factor):
        out = real(x, ref, factor)
        swaps.append((x.clone(), ref.clone(), factor, out.clone()))
        return out

    monkeypatch.setattr(pt, "replace_lowpass", recording)
    est = pt.backbone_estimate(lq[:2], None, 64) * 2 - 1  # the estimate in model space (restorer None)
    acp = prior.alphas_cumprod
    t_start, until = 150, 90

    def hook(m, x, ref):
        steps.append((m, ref is not None))
        if ref is not None:
            # ref is x̂ diffused to the new index m (training timestep 4m): its mean is sqrt(ā)·x̂
            a = float(acp[4 * m])
            noise = (ref - math.sqrt(a) * est) / math.sqrt(1 - a)
            assert abs(float(noise.std()) - 1) < 0.05

    generate_pseudo_targets(lq[:2], prior, t_start=t_start, lowpass=16, constrain_until=until, step_hook=hook)
    assert [m for m, _ in steps] == list(range(t_start - 1, -1, -1))
    constrained = [m for m, on in steps if on]
    assert constrained == list(range(t_start - 1, until - 1, -1)) and len(constrained) == 60
    assert len(swaps) == 60
    rels = []
    for x, ref, factor, out in swaps:
        assert factor == 16
        assert torch.equal(out, x - lowpass(x, 16) + lowpass(ref, 16))  # the swap, exactly
        grid = lambda v: resize_antialiased(v, (4, 4))  # noqa: E731
        rels.append(float((grid(out) - grid(ref)).norm() / (grid(x) - grid(ref)).norm()))
    # on the 4×4 grid the gap to the diffused estimate shrinks to < 40 %: bicubic down/up is not a projection, so
    # one swap cannot close it exactly (DT-BFR swaps the same way)
    assert max(rels) < 0.4, rels  # measured 0.24 … 0.33
    # constrain_until 0: no swap at all; = t_start: none either
    swaps.clear()
    generate_pseudo_targets(lq[:1], prior, t_start=20, constrain_until=0)
    generate_pseudo_targets(lq[:1], prior, t_start=20, constrain_until=20)
    assert swaps == []


# ------------------------------------------------------------------------------------------- seeds
def test_a_face_target_does_not_depend_on_its_batch():
    prior = ConvPrior(channels=3, size=32, learned_variance=True, seed=1)
    lq = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kw = dict(t_start=12, lowpass=8, constrain_until=6, seed=7)
    all3 = generate_pseudo_targets(lq, prior, batch_size=3, **kw)
    ones = generate_pseudo_targets(lq, prior, batch_size=1, **kw)
    alone = generate_pseudo_targets(lq[2:], prior, seeds=[9], **{k: v for k, v in kw.items() if k != "seed"})
    assert torch.allclose(all3, ones, atol=1e-6)
    assert torch.allclose(all3[2:], alone, atol=1e-6)
    other = generate_pseudo_targets(lq, prior, batch_size=3, **{**kw, "seed": 8})
    assert not torch.allclose(all3, other, atol=1e-3)
    # crops at another size: diffusion at the prior's size, returned at the crop's
    big = generate_pseudo_targets(torch.rand(1, 3, 48, 48), prior, **kw)
    assert big.shape == (1, 3, 48, 48)


# ------------------------------------------------------------------------------------------- files
def test_write_pseudo_targets_resumes_and_skips(tmp_path):
    prior = Counting(ConvPrior(channels=3, size=32, learned_variance=False, seed=4))
    lq = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    kw = dict(t_start=8, lowpass=8, constrain_until=4, seed=2, batch_size=2)
    paths = write_pseudo_targets(lq, tmp_path / "a", prior, **kw)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png"] and all(p.exists() for p in paths)
    assert prior.calls == 2 * 8  # two chunks (2 + 1 faces), 8 evaluations each
    first = {p.name: p.read_bytes() for p in paths}
    prior.calls = 0
    write_pseudo_targets(lq, tmp_path / "a", prior, **kw)
    assert prior.calls == 0  # everything existed: nothing generated
    paths[1].unlink()
    write_pseudo_targets(lq, tmp_path / "a", prior, **kw)
    assert prior.calls == 8  # only the missing face; same seed (seed + 1) alone: the same target
    assert np.abs(_read16(paths[1]) - _png16(first["000001.png"])).max() <= 1  # up to float rounding of the batch

    # interrupted after the first chunk: only whole files, no temporaries; the rerun finishes the same targets
    seen = []

    def stop(done, total):
        seen.append((done, total))
        if done > 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pseudo_targets(lq, tmp_path / "b", prior, progress=stop, **kw)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["000000.png", "000001.png"]
    assert seen[:8] == [(i, 16) for i in range(1, 9)]
    write_pseudo_targets(lq, tmp_path / "b", prior, **kw)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(first)
    for name, data in first.items():
        assert np.abs(_read16(tmp_path / "b" / name) - _png16(data)).max() <= 1


def _png16(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    return img.astype(np.int64)


def _read16(path: Path) -> np.ndarray:
    return _png16(path.read_bytes())


def test_bad_inputs_are_clear_errors(faces64):
    prior = AnalyticPrior(faces64)
    y = torch.rand(1, 3, 64, 64)
    for kw, msg in [(dict(t_start=0), "t_start"), (dict(t_start=250), "t_start"),
                    (dict(t_start=50, constrain_until=60), "constrain_until"),
                    (dict(constrain_until=-1), "constrain_until"), (dict(lowpass=0), "lowpass"),
                    (dict(lowpass=65), "lowpass"), (dict(respacing=300), "respacing"), (dict(seed=-1), "seed"),
                    (dict(seeds=[1, 2]), "seeds"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=msg):
            generate_pseudo_targets(y, prior, **kw)
    with pytest.raises(ValueError, match="float"):
        generate_pseudo_targets((y * 255).to(torch.uint8), prior)
    with pytest.raises(ValueError, match="channels"):
        generate_pseudo_targets(torch.rand(1, 2, 64, 64), prior)
    assert generate_pseudo_targets(y[:, :1], prior, t_start=4, constrain_until=2).shape == (1, 3, 64, 64)  # gray crops, RGB prior
    with pytest.raises(ValueError, match="NaN"):
        generate_pseudo_targets(y * float("nan"), prior)
    latent = LatentPrior(lambda z, t: z, object(), linear_alphas_cumprod(), latent_size=8, latent_channels=4,
                         sample_size=64)
    with pytest.raises(ValueError, match="pixel diffusion prior"):
        generate_pseudo_targets(y, latent)
    with pytest.raises(ValueError, match="same target file"):
        write_pseudo_targets(["a/x.png", "b/x.png"], "/nonexistent_out", prior)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_pseudo_targets_end_to_end(tmp_path, faces64, capsys):
    import cv2

    prior = shared_path("models/tiny_ddpm_lfw32")
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(2):
        cv2.imwrite(str(crops / f"face{i}.png"), (faces64[i].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round()
                    .astype(np.uint8))
    out = tmp_path / "targets"
    args = ["pseudo-targets", str(crops), "-o", str(out), "--prior", str(prior), "--t-start", "6",
            "--constrain-until", "3", "--lowpass", "8", "--seed", "1", "--batch-size", "2"]
    assert main(args) == 0
    err = capsys.readouterr()
    assert "step 6/6" in err.err and "2 pseudo-target(s) written" in err.out
    for i in range(2):
        img = cv2.imread(str(out / f"face{i}.png"), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (64, 64)  # the 1-channel prior: gray, at the crop's size
    assert main(args) == 0
    assert "2 of 2 target(s) already" in capsys.readouterr().err
    # bad options: argparse range checks, and a constraint beyond the start
    with pytest.raises(SystemExit):
        main(["pseudo-targets", str(crops), "-o", str(out), "--prior", str(prior), "--lowpass", "0"])
    assert "--lowpass" in capsys.readouterr().err
    assert main(["pseudo-targets", str(crops), "-o", str(out), "--prior", str(prior), "--t-start", "50",
                 "--constrain-until", "60"]) == 2
    assert "--constrain-until" in capsys.readouterr().err
