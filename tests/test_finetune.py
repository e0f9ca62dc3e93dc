"""DT-BFR fine-tuning (bfr_core.training.finetune): it learns (loss down, held-out PSNR up on pseudo-targets of real
faces under the analytic prior), resumes exactly, survives out-of-memory and a full disk, and refuses bad input
clearly. Tiny SwinIR (spandrel's, DifFace's file layout) at 32 px."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from analytic_prior import AnalyticPrior, degrade, downsize, psnr
from bfr_core import generate_pseudo_targets
from bfr_core.models.errors import CheckpointError
from bfr_core.restoration.backbones import IdentityRestorer, load_restorer
from bfr_core.training import FinetuneConfig, TensorPairs, finetune_backbone, load_perceptual, save_backbone
from bfr_core.training import checkpoints
from bfr_core.training.data import FilePairs, split_holdout
from bfr_core.utils import OOM_ERROR

spandrel_swinir = pytest.importorskip("spandrel.architectures.SwinIR")
from test_swinir import TINY, _save  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def swinir_file(tmp_path_factory):
    """A tiny SwinIR with its own initialisation (a plausible start, not random noise), in DifFace's layout."""
    torch.manual_seed(0)
    return _save(tmp_path_factory.mktemp("swinir"), spandrel_swinir.SwinIR(**TINY).eval())


@pytest.fixture(scope="module")
def problem(faces64):
    """8 real faces at 32 px, one unseen degradation (blur, ×1/2, noise, JPEG), pseudo-targets of the degraded
    faces made by the analytic prior over the clean ones (identity backbone, the DT-BFR chain shortened)."""
    clean = downsize(faces64, 32)
    lq = torch.stack([degrade(c, seed=i, blur_sigma=1.2, down=2, noise=0.03, jpeg=50) for i, c in enumerate(clean)])
    targets = generate_pseudo_targets(lq, AnalyticPrior(clean), t_start=60, constrain_until=30, lowpass=4, seed=0)
    return lq, targets, clean


def _cfg(**kw) -> FinetuneConfig:
    base = dict(steps=6, batch_size=4, lr=1e-3, lr_min=1e-4, train_mode=False, validate_every=1000,
                checkpoint_every=1000)
    return FinetuneConfig(**{**base, **kw})


def _weights(f) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in f.state_dict().items()}


def test_finetuning_lowers_the_loss_and_raises_held_out_psnr(swinir_file, problem):
    lq, targets, clean = problem
    assert float(psnr(targets, clean).mean()) > float(psnr(lq, clean).mean()) + 3  # targets: better than the input
    train_idx, val_idx = split_holdout(8, 0.25, seed=1)
    assert len(val_idx) == 2 and sorted(train_idx + val_idx) == list(range(8))
    f = load_restorer(swinir_file)
    with torch.no_grad():
        before = float(psnr(f(lq[val_idx]), clean[val_idx]).mean())
    res = finetune_backbone(f, TensorPairs(lq[train_idx], targets[train_idx]), TensorPairs(lq[val_idx], targets[val_idx]),
                            _cfg(steps=40, validate_every=20))
    assert res.step == 40 and len(res.losses) == 40 and res.resumed_from == 0 and not res.stopped
    assert sum(res.losses[-5:]) < 0.6 * sum(res.losses[:5]), res.losses
    assert [v["step"] for v in res.validation] == [0, 20, 40]
    assert res.validation[-1]["psnr"] > res.validation[0]["psnr"] + 3, res.validation  # PSNR to the targets
    assert all(v["sharpness"] > 0 for v in res.validation)
    assert not f.training and not any(p.requires_grad for p in f.parameters())  # frozen, ready to save
    with torch.no_grad():
        after = float(psnr(f(lq[val_idx]), clean[val_idx]).mean())
    assert after > before + 3, (before, after)  # and to the clean faces the backbone never saw


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(swinir_file, problem, tmp_path):
    """Train mode (stochastic depth), flips and EMA on: the resumed run must still equal the uninterrupted one."""
    lq, targets, _ = problem
    pairs = TensorPairs(lq, targets)
    cfg = _cfg(steps=5, train_mode=True, ema_decay=0.9, checkpoint_every=2)
    whole = load_restorer(swinir_file)
    finetune_backbone(whole, pairs, config=cfg)

    class Interrupt(Exception):
        pass

    def stop_at_3(step: int, total: int) -> None:
        assert total == 5
        if step == 3:
            raise Interrupt

    f = load_restorer(swinir_file)
    with pytest.raises(Interrupt):
        finetune_backbone(f, pairs, config=cfg, checkpoint_dir=tmp_path, progress=stop_at_3)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3  # saved on the way out
    g = load_restorer(swinir_file)  # a new process: the file's weights again
    res = finetune_backbone(g, pairs, config=cfg, checkpoint_dir=tmp_path)
    assert res.resumed_from == 3 and res.step == 5 and len(res.losses) == 5
    ref, got = _weights(whole), _weights(g)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # a finished run called again changes nothing; other settings are refused with what differs
    again = load_restorer(swinir_file)
    assert finetune_backbone(again, pairs, config=cfg, checkpoint_dir=tmp_path).step == 5
    assert all(torch.equal(v, _weights(again)[k]) for k, v in ref.items() if "relative_position_index" not in k)
    with pytest.raises(ValueError, match="lr: checkpoint 0.001, now 0.002"):
        finetune_backbone(load_restorer(swinir_file), pairs, config=_cfg(steps=5, train_mode=True, ema_decay=0.9,
                                                                         lr=2e-3), checkpoint_dir=tmp_path)


def test_cancel_stops_with_a_checkpoint(swinir_file, problem, tmp_path):
    lq, targets, _ = problem
    calls = []
    f = load_restorer(swinir_file)
    res = finetune_backbone(f, TensorPairs(lq, targets), config=_cfg(), checkpoint_dir=tmp_path,
                            cancel=lambda: len(calls) >= 2, progress=lambda i, n: calls.append(i))
    assert res.stopped and res.step == 2 and calls == [1, 2]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2


def test_a_full_disk_keeps_the_last_checkpoint(swinir_file, problem, tmp_path, monkeypatch):
    lq, targets, _ = problem
    cfg = _cfg(steps=4, checkpoint_every=2)
    f = load_restorer(swinir_file)
    real_save = torch.save

    def save_then_fail(obj, fh, *a, **kw):
        if obj["step"] == 4:  # the second checkpoint: half written, then the disk is full
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *a, **kw)

    monkeypatch.setattr(checkpoints.torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk is full.*previous checkpoint is intact"):
        finetune_backbone(f, TensorPairs(lq, targets), config=cfg, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert finetune_backbone(load_restorer(swinir_file), TensorPairs(lq, targets), config=cfg,
                             checkpoint_dir=tmp_path).resumed_from == 2


class _LimitedMemory(torch.nn.Module):
    """A backbone that runs out of memory on more than ``limit`` faces at once."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise OOM_ERROR("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_step(swinir_file, problem):
    lq, targets, _ = problem
    pairs = TensorPairs(lq, targets)
    plain = load_restorer(swinir_file)
    finetune_backbone(plain, pairs, config=_cfg(steps=3))
    small = _LimitedMemory(load_restorer(swinir_file), limit=2)
    lines: list[str] = []
    res = finetune_backbone(small, pairs, config=_cfg(steps=3), log=lines.append)
    assert res.micro_batch == 2 and any("micro-batch 4 → 2" in line for line in lines)
    for k, v in _weights(plain).items():  # accumulated gradients: the same steps up to float rounding
        torch.testing.assert_close(small.inner.state_dict()[k], v, rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="out of memory fine-tuning one 32x32 face"):
        finetune_backbone(_LimitedMemory(load_restorer(swinir_file), limit=0), pairs, config=_cfg(steps=1))


def test_bf16_autocast_trains_on_cpu(swinir_file, problem):
    lq, targets, _ = problem
    f = load_restorer(swinir_file)
    w0 = _weights(f)
    res = finetune_backbone(f, TensorPairs(lq, targets), config=_cfg(steps=2, precision="bf16"))
    assert all(v == v for v in res.losses)
    assert next(f.parameters()).dtype == torch.float32  # weights keep their dtype
    assert any(not torch.equal(w0[k], v) for k, v in _weights(f).items())
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA device"):
        finetune_backbone(load_restorer(swinir_file), TensorPairs(lq, targets), config=_cfg(precision="fp16"))


def _vgg16_file(path: Path) -> Path:
    """torchvision's vgg16 features layout with random weights (the classifier is not needed and left out)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    sd, i, cin = {}, 0, 3
    g = torch.Generator().manual_seed(0)
    for v in cfg:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(v)
        i, cin = i + 2, v
    torch.save(sd, path)
    return path


def test_perceptual_term_from_the_users_vgg_file(swinir_file, problem, tmp_path):
    lq, targets, _ = problem
    loss = load_perceptual(_vgg16_file(tmp_path / "vgg16.pth"))
    assert len(loss.features.taps) == 5  # relu1_2 … relu5_3
    x = targets[:2].clone().requires_grad_(True)
    assert float(loss(targets[:2], targets[:2])) == 0.0
    value = loss(x, lq[:2])
    assert float(value.detach()) > 0
    value.backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss.parameters())
    a, b = load_restorer(swinir_file), load_restorer(swinir_file)
    finetune_backbone(a, TensorPairs(lq, targets), config=_cfg(steps=2))
    finetune_backbone(b, TensorPairs(lq, targets), config=_cfg(steps=2, perceptual_weight=1.0), perceptual=loss)
    assert any(not torch.equal(v, _weights(b)[k]) for k, v in _weights(a).items() if v.is_floating_point())
    with pytest.raises(CheckpointError, match="restoration backbone, not a perceptual-loss network"):
        load_perceptual(swinir_file)


def test_bad_input_is_refused_before_training(swinir_file, problem, tmp_path):
    lq, targets, _ = problem
    f = load_restorer(swinir_file)
    with pytest.raises(ValueError, match="at least 8 faces, got 5.*memorises"):
        finetune_backbone(f, TensorPairs(lq[:4], targets[:4]), TensorPairs(lq[4:5], targets[4:5]), _cfg())
    with pytest.raises(ValueError, match="no parameters"):
        finetune_backbone(IdentityRestorer(), TensorPairs(lq, targets), config=_cfg())

    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x).detach()

    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        finetune_backbone(Detached(), TensorPairs(lq, targets), config=_cfg())
    for kw, msg in [(dict(steps=0), "steps"), (dict(lr_min=1.0), "lr_min"), (dict(ema_decay=1.0), "ema_decay"),
                    (dict(precision="int8"), "precision"), (dict(micro_batch=0), "micro_batch")]:
        with pytest.raises(ValueError, match=msg):
            finetune_backbone(f, TensorPairs(lq, targets), config=_cfg(**kw))
    with pytest.raises(ValueError, match="each target must have its crop's size"):
        TensorPairs(lq, targets[..., :16])
    # files of mixed sizes: named with the sizes found
    import cv2
    import numpy as np

    files = []
    for i, s in enumerate([32, 32, 48]):
        files.append(tmp_path / f"c{i}.png")
        cv2.imwrite(str(files[-1]), np.zeros((s, s, 3), np.uint8))
    with pytest.raises(ValueError, match=r"mixed sizes \(32x32: 2 \(e.g. c0.png\), 48x48: 1 \(e.g. c2.png"):
        FilePairs(files, files)


def test_the_adapted_file_loads_like_the_original(swinir_file, problem, tmp_path):
    lq, targets, _ = problem
    f = load_restorer(swinir_file)
    finetune_backbone(f, TensorPairs(lq, targets), config=_cfg(steps=2))
    out = save_backbone(f, tmp_path / "adapted.pth")
    saved, original = torch.load(out, weights_only=True), torch.load(swinir_file, weights_only=True)
    assert list(saved) == ["state_dict"] and list(saved["state_dict"]) == list(original["state_dict"])
    with torch.no_grad():
        assert torch.equal(load_restorer(out)(lq), f(lq))
    assert os.path.getsize(out) > 0
