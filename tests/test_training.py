"""bfr_core.training: loaded backbones are differentiable, trainable on request, and saved back in the layout they
were loaded from (or as safetensors with the same keys) so load_restorer and spandrel load them again."""
from __future__ import annotations

import pytest
import torch

from bfr_core.restoration import backbones
from bfr_core.restoration.backbones import IdentityRestorer, NativeRestorer, SpandrelRestorer, load_restorer
from bfr_core.restoration.estimate import apply_backbone
from bfr_core.training import freeze, save_backbone, trainable

from test_swinir import _difface_layout, _save as _save_swinir, _spandrel_net

spandrel = pytest.importorskip("spandrel")


@pytest.fixture
def swinir_file(tmp_path):
    """DifFace's layout: {'state_dict': {'module.conv_first.1.weight', …}} (8x8-window tiny SwinIR, unshuffle 2)."""
    return _save_swinir(tmp_path, _spandrel_net())


@pytest.fixture(params=["spandrel", "native"])
def loader(request, monkeypatch):
    """load_restorer with spandrel, or with the own SwinIR port (spandrel unavailable)."""
    if request.param == "native":
        monkeypatch.setattr(backbones, "_import_spandrel", lambda: (_ for _ in ()).throw(ImportError("no spandrel")))
    expected = SpandrelRestorer if request.param == "spandrel" else NativeRestorer

    def load(path):
        r = load_restorer(path)
        assert type(r) is expected
        return r

    return load


def _x(seed=0, n=2, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def _train_steps(f, steps=3, lr=1e-3):
    """Plain gradient descent on a smooth loss (the random test weights make an MSE fit chaotic): with a small
    step every step must lower it."""
    x = _x(1)
    opt = torch.optim.SGD([p for p in f.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (f(x) - 0.25).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loaded_backbone_is_frozen_until_made_trainable(swinir_file, loader):
    f = loader(swinir_file)
    assert not f.training and not f.model.training and not any(p.requires_grad for p in f.parameters())
    x = _x().requires_grad_(True)
    out = f(x)  # frozen weights, but the graph to the input is kept (no inference mode inside)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert trainable(f) is f
    assert f.training and f.model.training and all(p.requires_grad for p in f.parameters())
    assert freeze(f) is f and not f.model.training and not any(p.requires_grad for p in f.parameters())


def test_gradients_reach_every_parameter(swinir_file, loader):
    f = trainable(loader(swinir_file))
    out = apply_backbone(f, _x(), grad=True)
    out.square().mean().backward()
    missing = [n for n, p in f.named_parameters() if p.grad is None]
    assert not missing
    assert sum(float(p.grad.abs().sum()) for p in f.parameters()) > 0


def test_optimizer_steps_change_the_output(swinir_file, loader):
    # eval mode: deterministic (spandrel's SwinIR has stochastic depth 0.1 in train mode, as the official one)
    f = trainable(loader(swinir_file), train=False)
    x = _x(3)
    with torch.no_grad():
        before = f(x)
    losses = _train_steps(f)
    assert losses[2] < losses[1] < losses[0]
    freeze(f)
    with torch.no_grad():
        after = f(x)
    assert (after - before).abs().max() > 1e-3


def test_inference_output_unchanged_by_trainable_wrapper(swinir_file):
    """The differentiable wrapper gives exactly spandrel's descriptor output (inference mode or not)."""
    f = load_restorer(swinir_file)
    x = _x(4)
    with torch.inference_mode():
        ref = f.descriptor(x.clone())
        out = f(x)
    assert torch.equal(out, ref)
    assert torch.equal(f(x), ref)


def test_identity_and_parameterless_backbones_cannot_train():
    with pytest.raises(ValueError, match="no parameters"):
        trainable(IdentityRestorer())
    with pytest.raises(TypeError, match="nn.Module"):
        trainable(lambda x: x)
    with pytest.raises(ValueError, match="no weights"):
        save_backbone(IdentityRestorer(), "unused.safetensors", layout="safetensors")


def _modified(path, loader):
    f = trainable(loader(path), train=False)
    _train_steps(f, steps=2)
    return freeze(f)


@pytest.mark.parametrize("layout", ["original", "safetensors"])
def test_save_round_trip(swinir_file, loader, layout, tmp_path):
    f = _modified(swinir_file, loader)
    x = _x(5)
    with torch.no_grad():
        expected = f(x)
    out = tmp_path / ("adapted.pth" if layout == "original" else "adapted.safetensors")
    assert save_backbone(f, out, layout=layout) == out
    assert not list(tmp_path.glob(".*.part"))  # atomic write leaves no temp file

    original = torch.load(swinir_file, weights_only=True)
    if layout == "original":
        saved = torch.load(out, weights_only=True)
        assert list(saved) == ["state_dict"]  # DifFace's wrapper …
        assert list(saved["state_dict"]) == list(original["state_dict"])  # … its module. prefix and keys, in order
        assert "module.conv_first.1.weight" in saved["state_dict"]
    else:
        from safetensors.torch import load_file

        keys = list(load_file(str(out)))
        assert sorted(keys) == sorted(k[len("module."):] for k in original["state_dict"])

    # load_restorer (with spandrel and with the own port) reproduces the adapted backbone exactly
    for again in (load_restorer(out),):
        with torch.no_grad():
            assert torch.equal(again(x), expected)
    # and so does plain spandrel
    desc = spandrel.ModelLoader().load_from_file(out)
    with torch.no_grad():
        assert torch.equal(desc(x), expected)


def test_round_trip_through_the_own_port(swinir_file, tmp_path, monkeypatch):
    f = _modified(swinir_file, load_restorer)  # trained through spandrel …
    x = _x(6)
    with torch.no_grad():
        expected = f(x)
    save_backbone(f, tmp_path / "a.pth")
    monkeypatch.setattr(backbones, "_import_spandrel", lambda: (_ for _ in ()).throw(ImportError("no spandrel")))
    again = load_restorer(tmp_path / "a.pth")  # … read back by the own SwinIR port
    assert isinstance(again, NativeRestorer)
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=0, atol=1e-5)


def test_flat_and_safetensors_sources_keep_their_layout(tmp_path):
    from safetensors.torch import save_file

    # DifFace's keys without wrapper or prefix (spandrel reads an unshuffled SwinIR only with `conv_first.1.*`)
    sd = {k[len("module."):]: v for k, v in _difface_layout(_spandrel_net(seed=1))["state_dict"].items()}
    flat = tmp_path / "flat.pth"
    torch.save(sd, flat)
    f = load_restorer(flat)
    save_backbone(f, tmp_path / "flat_out.pth")
    saved = torch.load(tmp_path / "flat_out.pth", weights_only=True)
    assert list(saved) == list(sd)

    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    g = load_restorer(st)
    out = save_backbone(g, tmp_path / "model_out.safetensors")
    from safetensors.torch import load_file

    assert sorted(load_file(str(out))) == sorted(sd)
    x = _x(7)
    with torch.no_grad():
        assert torch.equal(load_restorer(out)(x), g(x))


def test_save_requires_a_known_layout(swinir_file, tmp_path):
    f = load_restorer(swinir_file)
    with pytest.raises(ValueError, match="layout"):
        save_backbone(f, tmp_path / "x.pth", layout="zip")
    bare = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="safetensors"):
        save_backbone(bare, tmp_path / "bare.pth")
    out = save_backbone(bare, tmp_path / "bare.safetensors", layout="safetensors")
    from safetensors.torch import load_file

    assert sorted(load_file(str(out))) == ["bias", "weight"]


def test_a_half_precision_file_is_saved_back_in_half_precision(swinir_file, loader, tmp_path):
    """Loaders widen fp16 files to run them; the adapted weights go back in the file's own dtype and layout."""
    sd = torch.load(swinir_file, weights_only=True)
    half = tmp_path / "half.pth"
    torch.save({"state_dict": {k: v.half() for k, v in sd["state_dict"].items()}}, half)
    f = load_restorer(half)
    out = save_backbone(f, tmp_path / "again.pth")
    saved = torch.load(out, weights_only=True)["state_dict"]
    assert list(saved) == list(sd["state_dict"]) and all(v.dtype == torch.float16 for v in saved.values())
    assert all(torch.equal(saved[k], v.half()) for k, v in sd["state_dict"].items())  # unchanged weights, exactly
