"""Diffusion prior: the iDDPM UNet port of DifFace's prior, its schedule and `load_prior`.

No pretrained weights here: checkpoints are written by the tests in the official layout with random
weights. The structural facts below (key count, key/shape fingerprint, parameter count, a few
key shapes) were established by instantiating DifFace's own `models.unet.UNetModel` with
`configs/sample/iddpm_ffhq512.yaml` outside this repository and comparing its state dict (same
ordered key list and shapes; outputs on random weights agreed to ~1e-6).
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch

from bfr_core.models.checkpoint import CheckpointError
from bfr_core.archs.iddpm_unet import (
    DIFFACE_FFHQ512,
    TINY_CONFIG,
    AttentionBlock,
    IDDPMUNet,
    IDDPMUNetConfig,
    count_parameters,
    timestep_embedding,
)
from bfr_core.diffusion.loading import infer_iddpm_config, load_prior
from bfr_core.diffusion.priors import DiffusionPrior, PriorLike
from bfr_core.diffusion.schedules import alphas_cumprod_from_scheduler_config, linear_alphas_cumprod

from conftest import shared_path

# Verified against DifFace's UNetModel(ffhq512 config).state_dict():
OFFICIAL_NUM_PARAMS = 159_788_454
OFFICIAL_NUM_KEYS = 630
OFFICIAL_KEYS_SHA256 = "fc104b85803806a836e9f018bfef0313bcef6d1f6cfd2a6a0b582972506ce823"  # "key:d0,d1,.." lines
OFFICIAL_SHAPES = {
    "time_embed.0.weight": (128, 32),
    "time_embed.2.weight": (128, 128),
    "input_blocks.0.0.weight": (32, 3, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (64, 128),
    "input_blocks.1.0.out_layers.3.weight": (32, 32, 3, 3),
    "input_blocks.2.0.op.weight": (32, 32, 3, 3),
    "input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
    "input_blocks.12.1.qkv.weight": (768, 256, 1),
    "input_blocks.22.1.proj_out.weight": (512, 512, 1),
    "middle_block.0.emb_layers.1.weight": (1024, 128),
    "middle_block.1.qkv.weight": (1536, 512, 1),
    "output_blocks.0.0.in_layers.2.weight": (512, 1024, 3, 3),
    "output_blocks.4.2.conv.weight": (512, 512, 3, 3),
    "output_blocks.14.1.conv.weight": (256, 256, 3, 3),
    "output_blocks.22.0.skip_connection.weight": (32, 64, 1, 1),
    "out.2.weight": (6, 32, 3, 3),
}
TINY_DIFFUSERS = "models/tiny_ddpm_lfw32"


def _random_state_dict(cfg: IDDPMUNetConfig, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """Random weights with the shapes of `cfg`, without building (and initialising) a model first."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in IDDPMUNet(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        fan_in = max(1, math.prod(shape[1:]))
        t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        if len(shape) == 1 and ("norm" in k or "layers.0" in k or k == "out.0.weight") and k.endswith("weight"):
            t += 1.0  # GroupNorm scales around 1
        out[prefix + k] = t
    return out


def _tiny_model(cfg: IDDPMUNetConfig = TINY_CONFIG, seed: int = 0) -> IDDPMUNet:
    model = IDDPMUNet(cfg).eval()
    model.load_state_dict(_random_state_dict(cfg, seed))
    return model


def _save_official(sd: dict[str, torch.Tensor], path) -> None:
    """Official layout: flat dict, DataParallel `module.` prefix; .pth via torch.save or safetensors."""
    flat = {"module." + k: v for k, v in sd.items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(flat, str(path))
    else:
        torch.save(flat, str(path))


# ----------------------------------------------------------------------------- structure


def test_official_structure_matches_difface():
    with torch.device("meta"):
        model = IDDPMUNet(DIFFACE_FFHQ512)
    sd = model.state_dict()
    assert count_parameters(model) == OFFICIAL_NUM_PARAMS
    assert len(sd) == OFFICIAL_NUM_KEYS
    lines = "\n".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in sd.items())
    assert hashlib.sha256(lines.encode()).hexdigest() == OFFICIAL_KEYS_SHA256
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert DIFFACE_FFHQ512.attention_levels == (4, 5, 6)  # 32, 16, 8 px at 512
    assert model.input_blocks[12][1].num_heads == 4 and model.middle_block[1].num_heads == 8


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 32)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    freqs = torch.exp(-math.log(10000) * torch.arange(16, dtype=torch.float32) / 16)
    args = t[:, None].float() * freqs
    torch.testing.assert_close(emb[:, :16], torch.cos(args))
    torch.testing.assert_close(emb[:, 16:], torch.sin(args))
    assert torch.equal(emb[0, :16], torch.ones(16)) and torch.equal(emb[0, 16:], torch.zeros(16))


def test_attention_uses_legacy_qkv_order():
    """qkv channels are [head0: q k v, head1: q k v, ...], scaled by 1/sqrt(head width)."""
    torch.manual_seed(0)
    c, heads = 128, 2
    block = AttentionBlock(c, num_head_channels=64).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, c, 4, 4)
    with torch.no_grad():
        got = block(x)
        xs = x.reshape(2, c, 16)
        qkv = block.qkv(block.norm(xs)).reshape(2 * heads, 3 * 64, 16)
        q, k, v = qkv.split(64, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(64), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(2, c, 16)
        want = (xs + block.proj_out(a)).reshape_as(x)
        # the other ("new") order splits q|k|v first: must give a different result
        q2, k2, v2 = (t.reshape(2 * heads, 64, 16) for t in block.qkv(block.norm(xs)).chunk(3, dim=1))
        w2 = torch.softmax(torch.einsum("bct,bcs->bts", q2, k2) / 8, dim=-1)
        other = (xs + block.proj_out(torch.einsum("bts,bcs->bct", w2, v2).reshape(2, c, 16))).reshape_as(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - other).abs().max() > 1e-2


def test_forward_timestep_forms_and_dtype():
    model = _tiny_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a = model(x, torch.tensor([250, 250]))
        b = model(x, 250)
        c = model(x, torch.tensor(250))
        d = model(x, torch.tensor([250, 10]))
    assert a.shape == (2, 6, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(a, c)
    torch.testing.assert_close(a[0], d[0])  # per-sample t
    assert not torch.allclose(a[1], d[1])
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 3, 30, 30), 1)


def test_bf16_forward_close_to_fp32(tmp_path):
    path = tmp_path / "tiny.pth"
    _save_official(_random_state_dict(TINY_CONFIG), path)
    p32 = load_prior(path)
    p16 = load_prior(path, dtype=torch.bfloat16)
    assert p16.dtype == torch.bfloat16 and p32.dtype == torch.float32
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    t = torch.tensor([400, 50])
    with torch.no_grad():
        ref = p32.model(x, t)
        out = p16.model(x, t)  # float32 in -> bf16 compute -> float32 out
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert rel < 3e-2, rel
    with torch.no_grad():
        assert p16.model(x.bfloat16(), t).dtype == torch.bfloat16


def test_channels_last_weights(tmp_path):
    path = tmp_path / "tiny.pth"
    _save_official(_random_state_dict(TINY_CONFIG, seed=4), path)
    plain, cl = load_prior(path), load_prior(path, channels_last=True)
    assert cl.model.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = cl.model(x, 100)
        torch.testing.assert_close(out, plain.model(x, 100), atol=1e-4, rtol=1e-4)
    assert out.is_contiguous()


# ----------------------------------------------------------------------------- loading


def test_real_config_checkpoint_loads(tmp_path):
    path = tmp_path / "iddpm_ffhq512_ema500000.pth"
    sd = _random_state_dict(DIFFACE_FFHQ512, prefix="module.")
    probe_key = "module.input_blocks.12.1.qkv.weight"
    probe = sd[probe_key][:4].clone()
    torch.save(sd, str(path))
    del sd
    gc.collect()

    prior = load_prior(path)
    assert isinstance(prior, DiffusionPrior) and isinstance(prior, PriorLike)
    assert abs(count_parameters(prior.model) - 159.8e6) < 0.1e6
    assert prior.model.config == DIFFACE_FFHQ512
    assert (prior.sample_size, prior.in_channels, prior.out_channels) == (512, 3, 6)
    assert prior.learned_variance and prior.prediction_type == "epsilon" and prior.kind == "iddpm"
    assert prior.alphas_cumprod.dtype == torch.float64 and prior.alphas_cumprod.shape == (1000,)
    assert torch.equal(prior.model.state_dict()["input_blocks.12.1.qkv.weight"][:4], probe)
    assert not any(p.requires_grad for p in prior.model.parameters()) and not prior.model.training
    with torch.no_grad():
        out = prior.model(torch.zeros(1, 3, 64, 64), torch.tensor([396]))
    assert out.shape == (1, 6, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_round_trip(tmp_path, suffix):
    model = _tiny_model(seed=5)
    path = tmp_path / f"tiny{suffix}"
    _save_official(model.state_dict(), path)
    prior = load_prior(path)
    assert prior.model.config == TINY_CONFIG
    assert prior.sample_size == 32 and prior.learned_variance
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    t = torch.tensor([0, 399, 999])
    with torch.no_grad():
        assert torch.equal(prior.model(x, t), model(x, t))


def test_infers_other_structures(tmp_path):
    cfg = IDDPMUNetConfig(
        image_size=64, in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 1, 2, 2),
        num_res_blocks=(2, 1, 1, 3), attention_resolutions=(16,), use_scale_shift_norm=False,
        conv_resample=False,
    )
    sd = _random_state_dict(cfg, seed=2)
    assert infer_iddpm_config(sd) == cfg  # 4 levels -> nominal 64 px
    path = tmp_path / "other.safetensors"
    _save_official(sd, path)
    prior = load_prior(path, sample_size=64)
    assert prior.model.config == cfg and not prior.learned_variance and prior.in_channels == 1
    ref = IDDPMUNet(cfg).eval()
    ref.load_state_dict(sd)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(prior.model(x, 17), ref(x, 17))


def test_diffusers_tiny_prior():
    folder = shared_path(TINY_DIFFUSERS)
    from diffusers import UNet2DModel

    prior = load_prior(folder)
    assert prior.kind == "diffusers"
    assert (prior.in_channels, prior.out_channels, prior.sample_size) == (1, 1, 32)
    assert not prior.learned_variance and prior.prediction_type == "epsilon"
    assert torch.equal(prior.alphas_cumprod, linear_alphas_cumprod())  # no scheduler_config.json
    ref = UNet2DModel.from_pretrained(str(folder)).eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 600])
    with torch.no_grad():
        # (tolerance: from_pretrained leaves its weights 16-byte aligned, which changes the
        # CPU conv kernels' summation order at the 1e-7 level)
        torch.testing.assert_close(prior.model(x, t), ref(x, t).sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prior.model(x[:1], 10), ref(x[:1], 10).sample, atol=1e-5, rtol=1e-5)
    # the config.json path works too
    assert load_prior(folder / "config.json").in_channels == 1


def test_diffusers_pipeline_folder_with_scheduler(tmp_path):
    src = shared_path(TINY_DIFFUSERS)
    shutil.copytree(src, tmp_path / "unet")
    (tmp_path / "scheduler").mkdir()
    sched = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    prior = load_prior(tmp_path, dtype=torch.bfloat16)
    assert prior.prediction_type == "v_prediction" and prior.dtype == torch.bfloat16
    want = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    np.testing.assert_allclose(prior.alphas_cumprod.numpy(), want, rtol=1e-12)
    out = prior.model(torch.zeros(1, 1, 32, 32), 5)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 32, 32)


# ----------------------------------------------------------------------------- errors


def test_wrong_kind_names_file_and_place(tmp_path):
    path = tmp_path / "codeformer.pth"
    torch.save({"params_ema": {"encoder.conv.weight": torch.zeros(4, 3, 3, 3)}}, str(path))
    with pytest.raises(CheckpointError) as exc:
        load_prior(path)
    msg = str(exc.value)
    assert str(path) in msg and "iddpm_ffhq512_ema500000.pth" in msg and "facerestore_models" in msg

    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="facerestore_models") as exc:
        load_prior(missing)
    assert str(missing) in str(exc.value)

    from safetensors.torch import save_file

    loose = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 1, 3, 3), "time_embedding.linear_1.weight": torch.zeros(4, 2)}, str(loose))
    with pytest.raises(CheckpointError, match="config.json") as exc:
        load_prior(loose)
    assert str(loose) in str(exc.value)

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_prior(empty_dir)

    cond = tmp_path / "sd_unet"
    cond.mkdir()
    (cond / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="UNet2DConditionModel"):
        load_prior(cond)


def test_mismatched_layout_names_file(tmp_path):
    sd = _random_state_dict(TINY_CONFIG)
    del sd["output_blocks.2.0.in_layers.2.weight"]
    path = tmp_path / "broken.pth"
    _save_official(sd, path)
    with pytest.raises(CheckpointError, match="missing keys") as exc:
        load_prior(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_checkpoint(tmp_path, suffix):
    path = tmp_path / f"iddpm{suffix}"
    _save_official(_random_state_dict(TINY_CONFIG), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_prior(path)
    assert str(path) in str(exc.value)


# ----------------------------------------------------------------------------- schedule


def test_linear_schedule():
    acp = linear_alphas_cumprod()
    assert acp.dtype == torch.float64 and acp.shape == (1000,)
    want = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    assert np.array_equal(acp.numpy(), want)  # bit-identical to the numpy training code
    assert acp[400].item() == pytest.approx(0.1936, abs=1e-4)  # DifFace's start, t = 400
    assert torch.all(acp[1:] < acp[:-1])
    assert torch.equal(alphas_cumprod_from_scheduler_config({"beta_schedule": "linear"}), acp)
    cos = alphas_cumprod_from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"})
    assert cos.dtype == torch.float64 and cos.shape == (1000,) and not torch.allclose(cos, acp)


def test_variance_exploding_diffusers_prior_is_refused(tmp_path):
    import json
    import shutil

    folder = tmp_path / "ve"
    shutil.copytree(shared_path(TINY_DIFFUSERS), folder)
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "ScoreSdeVeScheduler",
                                                              "num_train_timesteps": 2000}))
    with pytest.raises(CheckpointError, match="variance-exploding"):
        load_prior(folder)
