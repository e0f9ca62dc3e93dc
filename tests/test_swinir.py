"""bfr_core.archs.swinir (own SwinIR port) against spandrel's SwinIR, and load_restorer without spandrel."""
from __future__ import annotations

import pytest
import torch

from bfr_core.restoration import backbones as restorers
from bfr_core.models.checkpoint import CheckpointError, load_state_dict
from bfr_core.archs.swinir import (DIFFACE_SWINIR, SwinIR, SwinIRConfig, is_swinir_state_dict, load_swinir,
                                     swinir_config_from_state_dict)

spandrel_swinir = pytest.importorskip("spandrel.architectures.SwinIR")

# DifFace's backbone in miniature: 2x pixel-unshuffle in, nearest+conv 2x up (scale 1), window 4, 2 RSTBs
TINY = dict(img_size=8, patch_size=1, in_chans=3, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4,
            mlp_ratio=2.0, upscale=2, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
            start_unshuffle=2)


def _spandrel_net(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = spandrel_swinir.SwinIR(**{**TINY, **kw}).eval()
    with torch.no_grad():  # random, not init-like, weights so every layer matters
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def _difface_layout(net: torch.nn.Module, unshuffled: bool = True) -> dict[str, torch.Tensor]:
    """spandrel's keys → DifFace's (conv_first = Sequential(PixelUnshuffle, Conv2d)), DataParallel prefix added."""
    sd = {}
    for k, v in net.state_dict().items():
        if unshuffled and k.startswith("conv_first."):
            k = "conv_first.1." + k[len("conv_first."):]
        sd["module." + k] = v.clone()
    return {"state_dict": sd}


def _save(tmp_path, net, name="swinir_tiny.pth", unshuffled=True):
    path = tmp_path / name
    torch.save(_difface_layout(net, unshuffled), path)
    return path


def test_tiny_difface_layout_matches_spandrel(tmp_path):
    net = _spandrel_net()
    path = _save(tmp_path, net)
    sd = load_state_dict(path)
    assert is_swinir_state_dict(sd)
    cfg = swinir_config_from_state_dict(sd)
    assert (cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size, cfg.mlp_hidden) == (12, (2, 2), (2, 2), 4, 24)
    assert (cfg.unshuffle, cfg.upscale, cfg.scale, cfg.upsampler, cfg.img_size) == (2, 2, 1, "nearest+conv", 8)
    model = load_swinir(sd, path)
    assert {k.replace("conv_first.1.", "conv_first.") for k in model.state_dict()} == set(net.state_dict())
    for hw in [(16, 16), (32, 24)]:  # trained grid (stored masks) and another size (computed masks)
        x = torch.rand(2, 3, *hw)
        with torch.no_grad():
            ref, out = net(x), model(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_sizes_not_multiple_of_window_are_padded_and_cropped(tmp_path):
    model = load_swinir(load_state_dict(_save(tmp_path, _spandrel_net())))
    for hw in [(13, 21), (5, 7), (40, 9)]:
        x = torch.rand(1, 3, *hw)
        with torch.no_grad():
            y = model(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    # padding only appends rows/columns: the top-left of a padded run equals a crop of the run on the full image
    net = _spandrel_net(upsampler="", upscale=1, start_unshuffle=1)
    model = load_swinir(load_state_dict(_save(tmp_path, net, "plain.pth", unshuffled=False)))
    x = torch.rand(1, 3, 14, 18)  # spandrel pads to its window too: identical
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(upsampler="pixelshuffle", upscale=2, start_unshuffle=1),
    dict(upsampler="pixelshuffle", upscale=3, start_unshuffle=1, resi_connection="3conv"),
    dict(upsampler="pixelshuffledirect", upscale=2, start_unshuffle=1),
    dict(upsampler="nearest+conv", upscale=8, start_unshuffle=8, depths=[2], num_heads=[3]),
])
def test_other_swinir_variants_match_spandrel(tmp_path, kw):
    net = _spandrel_net(**kw)
    unshuffled = kw["start_unshuffle"] > 1
    model = load_swinir(load_state_dict(_save(tmp_path, net, unshuffled=unshuffled)))
    s = kw["start_unshuffle"] * TINY["window_size"]
    x = torch.rand(1, 3, 2 * s, 3 * s)
    with torch.no_grad():
        ref, out = net(x), model(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_difface_config_matches_spandrel_parameters_and_keys():
    # DifFace configs/sample/iddpm_ffhq512_swinir.yaml (model_ir)
    net = spandrel_swinir.SwinIR(img_size=64, patch_size=1, in_chans=3, embed_dim=180, depths=[6] * 8,
                                 num_heads=[6] * 8, window_size=8, mlp_ratio=2.0, upscale=8, img_range=1.0,
                                 upsampler="nearest+conv", resi_connection="1conv", start_unshuffle=8).eval()
    own = SwinIR(DIFFACE_SWINIR)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(own) == count(net)
    theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    mine = {k.replace("conv_first.1.", "conv_first."): tuple(v.shape) for k, v in own.state_dict().items()}
    assert mine == theirs
    assert own.state_dict()["conv_first.1.weight"].shape == (180, 192, 3, 3)  # 3 * 8² unshuffled channels
    # config detection on the released layout round-trips, and the weights load strictly and agree
    sd = {k: v for k, v in _difface_layout(net)["state_dict"].items()}
    sd = {k[len("module."):]: v for k, v in sd.items()}
    assert swinir_config_from_state_dict(sd) == DIFFACE_SWINIR
    model = load_swinir(sd)
    x = torch.rand(1, 3, 64, 64)  # 8x8 tokens after the unshuffle: one window, fast
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-5)


def test_load_restorer_without_spandrel_matches_spandrel(tmp_path, monkeypatch):
    net = _spandrel_net()
    path = _save(tmp_path, net)
    with_spandrel = restorers.load_restorer(path)
    assert isinstance(with_spandrel, restorers.SpandrelRestorer)

    def no_spandrel():
        raise ImportError("spandrel is not installed")

    monkeypatch.setattr(restorers, "_import_spandrel", no_spandrel)
    r = restorers.load_restorer(path)
    assert isinstance(r.model, SwinIR) and not isinstance(r, restorers.SpandrelRestorer)
    assert r.architecture == "SwinIR" and r.scale == 1 and not r.model.training
    assert not any(p.requires_grad for p in r.parameters())
    for x in (torch.rand(2, 16, 16, 3).movedim(-1, 1), torch.rand(1, 3, 10, 24)):  # NHWC view; a resized size
        out, ref = r(x), with_spandrel(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    with pytest.warns(UserWarning, match="float32"):
        r16 = restorers.load_restorer(path, dtype=torch.float16)
    assert next(r16.parameters()).dtype == torch.float32
    rbf = restorers.load_restorer(path, dtype=torch.bfloat16)
    assert next(rbf.parameters()).dtype == torch.bfloat16
    assert rbf(torch.rand(1, 3, 16, 16)).dtype == torch.float32


def test_non_swinir_without_spandrel_is_a_checkpoint_error(tmp_path, monkeypatch):
    def no_spandrel():
        raise ImportError("spandrel is not installed")

    monkeypatch.setattr(restorers, "_import_spandrel", no_spandrel)
    path = tmp_path / "gfpgan_like.pth"
    torch.save({"params_ema": {"conv_body_first.weight": torch.zeros(4, 3, 1, 1), "toRGB.0.bias": torch.zeros(3)}},
               path)
    with pytest.raises(CheckpointError, match="gfpgan_like.pth") as info:
        restorers.load_restorer(path)
    assert "spandrel" in str(info.value)
    assert isinstance(restorers.load_restorer("none"), restorers.IdentityRestorer)


def test_truncated_or_mismatched_swinir_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setattr(restorers, "_import_spandrel", lambda: (_ for _ in ()).throw(ImportError("no spandrel")))
    path = _save(tmp_path, _spandrel_net())
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        restorers.load_restorer(cut)
    # readable but a tensor missing / reshaped → strict loading names the file and the key
    sd = load_state_dict(path)
    del sd["layers.1.conv.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth.*layers\.1\.conv\.bias"):
        restorers.load_restorer(tmp_path / "bad.pth")
    sd = load_state_dict(path)
    sd["norm.weight"] = torch.zeros(7)
    torch.save(sd, tmp_path / "bad2.pth")
    with pytest.raises(CheckpointError, match="bad2.pth"):
        restorers.load_restorer(tmp_path / "bad2.pth")


def test_config_validation():
    with pytest.raises(ValueError):
        SwinIRConfig(upsampler="bilinear")
    with pytest.raises(ValueError):
        SwinIRConfig(upscale=4, unshuffle=8)
    assert DIFFACE_SWINIR.scale == 1 and DIFFACE_SWINIR.size_multiple == 64
