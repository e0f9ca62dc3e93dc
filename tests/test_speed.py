"""The speed work (issue 13): faster kernels that compute the same thing, the `auto` precision, channels_last and
torch.compile in FaceRestorer, and the restore-speed benchmark's tiny mode. Timings belong in bench/, not here."""
from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from bfr_core.archs.iddpm_unet import TINY_CONFIG, AttentionBlock, GroupNorm32, IDDPMUNet
from bfr_core.cli import build_parser
from bfr_core.diffusion.priors import DiffusionPrior
from bfr_core.diffusion.schedules import linear_alphas_cumprod
from bfr_core.restoration.restorer import FaceRestorer
from bfr_core.utils import acceleration, precision

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on a CPU shared with other jobs: OpenMP threads spinning at barriers cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unet(seed: int = 0) -> IDDPMUNet:
    torch.manual_seed(seed)
    model = IDDPMUNet(TINY_CONFIG).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():  # fan-in scaled: every layer matters, activations stay O(1)
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape) / math.sqrt(p[0].numel()))
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape) if name.endswith("weight") else 0.05 * torch.randn(p.shape))
    return model


def _prior(model) -> DiffusionPrior:
    return DiffusionPrior(model=model, alphas_cumprod=linear_alphas_cumprod(1000, 1e-4, 0.02), sample_size=32,
                          in_channels=3, out_channels=6, learned_variance=True)


def _channel_major_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The attention as first written (channel-major qkv of the 1x1 Conv1d, legacy head order): the reference."""
    b, c, h, w = x.shape
    xs = x.reshape(b, c, h * w)
    qkv = block.qkv(block.norm(xs))
    ch = c // block.num_heads
    q, k, v = qkv.reshape(b, block.num_heads, 3 * ch, h * w).transpose(-1, -2).split(ch, dim=-1)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(ch), dim=-1) @ v
    return (xs + block.proj_out(a.transpose(-1, -2).reshape(b, c, h * w))).reshape(b, c, h, w)


def test_token_major_attention_matches_the_channel_major_original():
    torch.manual_seed(0)
    block = AttentionBlock(128, num_head_channels=64).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        ref = _channel_major_attention(block, x)
        torch.testing.assert_close(block(x), ref, atol=2e-5, rtol=1e-5)
        cl = block(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, atol=2e-5, rtol=1e-5)
        assert cl.is_contiguous(memory_format=torch.channels_last)  # no layout flip inside the UNet
        half = block.to(torch.bfloat16)(x.bfloat16().contiguous(memory_format=torch.channels_last)).float()
    assert ((half - ref).norm() / ref.norm()) < 2e-2


def test_attention_runs_the_fused_sdpa_kernel_on_cpu():
    """The point of the token-major layout: q/k/v with unit last stride reach the fused (flash) CPU kernel."""
    block = AttentionBlock(128, num_head_channels=64).eval()
    x = torch.randn(1, 128, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block(x)
    names = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in n for n in names), sorted(n for n in names if "attention" in n)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_group_norm_equals_the_float32_round_trip(channels_last):
    torch.manual_seed(1)
    norm = GroupNorm32(64)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
        norm.bias.copy_(0.3 * torch.randn(64))
    x = (3 * torch.randn(2, 64, 16, 16) + 1).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = norm(x)
        want = F.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps).bfloat16()
    assert got.dtype == torch.bfloat16
    # float32 statistics either way: the results differ at most by the final rounding to bf16 (one ulp)
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-6)
    assert (got.float() - want.float()).abs().max() <= want.float().abs().max() * 2**-7


def test_in_place_silu_only_without_autograd():
    """Without autograd the UNet's SiLUs run in place; with it they must not, or backward breaks."""
    model = _unet()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        fast = model(x, 300)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 300), fast, rtol=0, atol=0)
    model.requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = model(xg, 300)
    torch.testing.assert_close(out.detach(), fast, rtol=0, atol=0)  # same values with the graph recorded
    out.square().mean().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert model.input_blocks[1][0].in_layers[2].weight.grad is not None


def test_unet_bf16_channels_last_close_to_fp32():
    ref_model = _unet()
    fast = _unet().to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        ref, out = ref_model(x, torch.tensor([400, 30])), fast(x, torch.tensor([400, 30]))
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert (out - ref).norm() / ref.norm() < 3e-2


# ------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("caps, want", [({"avx512_bf16": True, "amx_bf16": False}, torch.bfloat16),
                                        ({"avx512_bf16": False, "amx_bf16": True}, torch.bfloat16),
                                        ({"avx512_bf16": False, "amx_bf16": False}, torch.float32)])
def test_auto_precision_follows_the_cpu(monkeypatch, caps, want):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert precision.preferred_dtype("cpu") == want
    assert precision.parse_dtype("auto", "cpu") == want
    assert precision.parse_dtype("fp32", "cpu") == torch.float32  # explicit names are not second-guessed


def test_auto_precision_on_gpus_and_other_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.preferred_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.preferred_dtype("cuda:0") == torch.float16
    assert precision.preferred_dtype("mps") == torch.float32
    with pytest.raises(ValueError, match="auto"):
        precision.parse_dtype("half")


def test_cli_defaults_to_auto_precision_and_no_compile():
    p = build_parser()
    args = p.parse_args(["restore", "a.png", "-o", "out"])
    assert (args.dtype, args.compile) == ("auto", "off")
    assert p.parse_args(["restore", "a.png", "-o", "out", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    assert p.parse_args(["pseudo-targets", "c.png", "-o", "o", "--prior", "p"]).dtype == "fp32"  # training targets


def test_loaders_take_precision_names(tmp_path):
    from bfr_core.diffusion.loading import load_prior

    path = tmp_path / "tiny.pth"
    torch.save({"module." + k: v for k, v in _unet().state_dict().items()}, path)
    assert load_prior(path, dtype="bf16").dtype == torch.bfloat16
    assert load_prior(path, dtype="auto").dtype == precision.preferred_dtype("cpu")


# ------------------------------------------------------------------------------------------ FaceRestorer
def test_restorer_puts_the_prior_channels_last_on_cpu():
    crops = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = FaceRestorer(_prior(_unet()), steps=4, channels_last=False)(crops, seed=3)
    prior = _prior(_unet())
    out = FaceRestorer(prior, steps=4)(crops, seed=3)
    assert prior.model.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, plain, atol=1e-4, rtol=0)  # float reassociation only
    kept = _prior(_unet())
    FaceRestorer(kept, steps=1, channels_last=False)(crops)
    assert not kept.model.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_modes_are_checked_when_made():
    with pytest.raises(ValueError, match="compile mode"):
        FaceRestorer(_prior(_unet()), compile="fastest")
    assert FaceRestorer(_prior(_unet()), compile=True).compile == "default"
    assert FaceRestorer(_prior(_unet()), compile=None).compile == "off"


def test_compiled_prior_is_made_once_and_gives_the_same_result(monkeypatch):
    """The plumbing, with torch.compile replaced by a counting pass-through (compiling is minutes on a CPU)."""
    made = []

    def fake_compile(module, mode=None):
        made.append(mode)
        return lambda *a, **k: module(*a, **k)

    monkeypatch.setattr(acceleration.torch, "compile", fake_compile)
    crops = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prior = _prior(_unet())
    ref = FaceRestorer(prior, steps=3)(crops, seed=1)
    for _ in range(2):  # a new restorer per call, as the nodes make: the compiled network is reused
        out = FaceRestorer(prior, steps=3, compile="max-autotune")(crops, seed=1)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert made == ["max-autotune"]
    assert not isinstance(prior.model, acceleration.CompiledModel)  # the caller's prior is left as it was
    FaceRestorer(prior, steps=1, compile="default")(crops)
    assert made == ["max-autotune", None]


def test_compile_failure_falls_back_to_eager_once(monkeypatch):
    calls = []

    def broken_compile(module, mode=None):
        def run(*a, **k):
            calls.append(1)
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(acceleration.torch, "compile", broken_compile)
    crops = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prior = _prior(_unet())
    ref = FaceRestorer(prior, steps=3)(crops, seed=2)
    with pytest.warns(RuntimeWarning, match=r"IDDPMUNet \(RuntimeError: no C\+\+ compiler found\); running it eagerly"):
        out = FaceRestorer(prior, steps=3, compile=True)(crops, seed=2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert calls == [1]  # not retried at every step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FaceRestorer(prior, steps=2, compile=True)(crops)


def test_a_network_error_is_not_mistaken_for_a_compile_failure(monkeypatch):
    monkeypatch.setattr(acceleration.torch, "compile", lambda module, mode=None: module)
    model = acceleration.CompiledModel(_unet(), "default")
    object.__setattr__(model, "_compiled", lambda *a, **k: model.module(*a, **k))
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 3, 30, 30), 1)
    assert model.dtype == torch.float32 and model.config == TINY_CONFIG  # attributes reach the network


def test_real_torch_compile_on_a_small_network(monkeypatch):
    """torch.compile itself (dynamo with the eager backend: no C++ toolchain needed) through the wrapper."""
    real = torch.compile
    monkeypatch.setattr(acceleration.torch, "compile", lambda m, mode=None: real(m, backend="eager"))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    x = torch.rand(2, 3, 16, 16)
    wrapped = acceleration.compiled(net)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x))
    assert wrapped.failed is None and acceleration.compiled(net) is wrapped
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in net.state_dict()}


# ------------------------------------------------------------------------------------------ backbone
def test_spandrel_swinir_runs_in_bf16_off_its_training_size(tmp_path):
    """spandrel's SwinIR builds float32 shift masks at other sizes; the bf16 backbone must still run."""
    spandrel_swinir = pytest.importorskip("spandrel.architectures.SwinIR")
    from bfr_core.restoration.backbones import SpandrelRestorer, load_restorer

    torch.manual_seed(0)
    net = spandrel_swinir.SwinIR(img_size=8, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                                 mlp_ratio=2.0, upscale=1, img_range=1.0, upsampler="", resi_connection="1conv")
    path = tmp_path / "swinir.pth"
    torch.save({"params": net.state_dict()}, path)
    r32, r16 = load_restorer(path), load_restorer(path, dtype="bf16")
    assert isinstance(r16, SpandrelRestorer) and next(r16.model.parameters()).dtype == torch.bfloat16
    x = torch.rand(1, 3, 24, 24)  # 24 px: not the 8 px grid its masks were stored for
    with torch.no_grad():
        ref, out = r32(x), r16(x)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.05


# ------------------------------------------------------------------------------------------ benchmark
def test_restore_speed_bench_tiny_mode_matches_fp32():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_restore_speed
    finally:
        sys.path.remove(str(ROOT / "bench"))
    cases = bench_restore_speed.run(["--tiny", "--device", "cpu", "--dtype", "bf16", "--repeats", "1",
                                     "--steps", "3", "--threads", "1"])
    names = [(c.name, c.dtype, c.steps) for c in cases]
    assert ("official", torch.float32, 2) in names and ("default", torch.bfloat16, 3) in names
    assert all(len(c.times) == 1 and c.times[0] > 0 for c in cases)
    checked = [c for c in cases if c.max_diff is not None]
    assert checked and all(c.max_diff < 0.1 for c in checked), [(c.label, c.max_diff) for c in checked]


# ------------------------------------------------------------------------------------------ GPU only
@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_precision_restore_close_to_cpu_fp32(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    crops = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = FaceRestorer(_prior(_unet()), steps=2)(crops, seed=5)
    gpu = _prior(_unet().to("cuda", dtype))
    out = FaceRestorer(gpu, steps=2, batch_size=2)(crops.cuda(), seed=5)
    assert out.device.type == "cuda"
    assert (out.cpu() - ref).abs().max() < 0.1


@CUDA
def test_gpu_compile_with_cuda_graphs_matches_eager():
    crops = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).cuda()
    prior = _prior(_unet().to("cuda", torch.float16))
    ref = FaceRestorer(prior, steps=3, batch_size=3)(crops, seed=1)
    out = FaceRestorer(prior, steps=3, batch_size=3, compile="reduce-overhead")(crops, seed=1)
    assert (out - ref).abs().max() < 2e-2


def test_prefetched_noise_equals_drawing_in_line():
    """The GPU path draws ahead in threads; every face must still get exactly its own generator's sequence."""
    from bfr_core.diffusion.samplers import Noise

    def gens():
        return [torch.Generator().manual_seed(s) for s in (7, 0, 123)]

    inline = Noise(gens(), (3, 16, 16), torch.device("cpu"))
    ahead = Noise(gens(), (3, 16, 16), torch.device("cpu"), prefetch=True)
    try:
        for _ in range(3):
            torch.testing.assert_close(ahead.draw(), inline.draw(), rtol=0, atol=0)
    finally:
        ahead.close()
    assert ahead._pool is None and ahead.draw().shape == (3, 3, 16, 16)  # closed: in line again


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_group_norm_equals_the_float32_round_trip(dtype):
    norm = GroupNorm32(64).cuda().to(dtype)
    x = (3 * torch.randn(2, 64, 16, 16, device="cuda") + 1).to(dtype)
    with torch.no_grad():
        want = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), norm.eps).to(dtype)
        torch.testing.assert_close(norm(x).float(), want.float(), rtol=2**-7, atol=1e-3)
