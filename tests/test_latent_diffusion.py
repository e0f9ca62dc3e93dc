"""SD / SDXL models as the face prior (`LatentDiffusionPrior`): equal to diffusers' img2img pipelines, text encoding,
colour fixes, VAE chunking, loading from a diffusers folder, clear errors.

Tiny random models built here (UNet2DConditionModel, AutoencoderKL, CLIP text encoders with a tokenizer made from a
vocabulary written by the test): no downloads. Exactness: with the same timesteps, noise (per-face generators) and
encoded latents (given to the pipeline as its 4-channel ``image``), ``restore_faces`` equals the pipeline's output to
1e-5, with classifier-free guidance on.
"""
from __future__ import annotations

import json
import string

import pytest
import torch

pytest.importorskip("transformers")  # a test extra (pyproject), shipped by ComfyUI

from diffusers import (AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler,  # noqa: E402
                       StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                       UNet2DConditionModel)

from bfr_core import LatentDiffusionPrior, load_prior  # noqa: E402
from bfr_core.diffusion.latent import PromptEmbeddings, encode_prompt  # noqa: E402
from bfr_core.diffusion.schedules import alphas_cumprod_from_scheduler_config  # noqa: E402
from bfr_core.models.checkpoint import CheckpointError  # noqa: E402
from bfr_core.restoration.difface import restore_faces  # noqa: E402
from bfr_core.utils.color_fix import adain_color_fix, wavelet_color_fix, wavelet_lowpass  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
TIMESTEPS = [600, 450, 300, 150, 1]
CTX = 12  # cross-attention width (SDXL: 8 + 4 from the two encoders)


def tiny_unet(sdxl: bool = False, pooled: int = 8) -> UNet2DConditionModel:
    torch.manual_seed(0)
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=4 * 6 + pooled) if sdxl else {}
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CTX,
                                attention_head_dim=4, norm_num_groups=4, **extra).eval()


def tiny_vae(scaling_factor: float = 0.18215) -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         layers_per_block=1, sample_size=16, scaling_factor=scaling_factor).eval()


def _embeds(sdxl: bool) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(7)
    pe, ne = torch.randn(1, 5, CTX, generator=g), torch.randn(1, 5, CTX, generator=g)
    if not sdxl:
        return PromptEmbeddings(pe, ne)
    return PromptEmbeddings(pe, ne, torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g))


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("scheduler, prediction", [(DDPMScheduler, "epsilon"), (EulerDiscreteScheduler, "v_prediction")])
def test_equals_diffusers_img2img_pipeline(crops, sdxl, scheduler, prediction):
    unet, vae = tiny_unet(sdxl), tiny_vae(0.13025 if sdxl else 0.18215)
    sched = scheduler(prediction_type=prediction, **SD_SCHEDULE, **({"clip_sample": False} if scheduler is DDPMScheduler else {}))
    emb = _embeds(sdxl)
    prior = LatentDiffusionPrior(unet, vae, alphas_cumprod_from_scheduler_config(sched.config),
                                 prediction_type=prediction, embeddings=emb, guidance_scale=3.0, sample_size=16,
                                 color_fix="none", original_size=(40, 48) if sdxl else None)
    assert prior.sdxl is sdxl and prior.latent_size == 8 and prior.sample_size == 16
    ours = restore_faces(crops, prior, strength=0.6, timesteps=TIMESTEPS, sampler=sched, seeds=[5, 6], batch_size=1)

    z = prior.encode(crops)  # the same encoded latents for both
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    kw = dict(prompt_embeds=emb.positive.expand(2, -1, -1), negative_prompt_embeds=emb.negative.expand(2, -1, -1),
              image=z, strength=1.0, timesteps=TIMESTEPS, guidance_scale=3.0, generator=gens, output_type="pt")
    if sdxl:
        pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                tokenizer_2=None, unet=unet, scheduler=sched)
        kw.update(pooled_prompt_embeds=emb.pooled.expand(2, -1), original_size=(40, 48),
                  negative_pooled_prompt_embeds=emb.negative_pooled.expand(2, -1))
    else:
        pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                              safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(**kw).images
    assert ref.shape == ours.shape
    assert (ref - ours).abs().max() < 1e-5
    # and CFG matters: without it the result differs clearly
    prior.guidance_scale = 1.0
    plain = restore_faces(crops, prior, strength=0.6, timesteps=TIMESTEPS, sampler=sched, seeds=[5, 6])
    assert (plain - ours).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ text encoders
def _tokenizer(tmp_path, max_len=10):
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase) + [",", "-", "."]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=max_len)


def _text_encoder(width, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(width)
    cfg = CLIPTextConfig(vocab_size=60, hidden_size=width, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=10, projection_dim=projection or width,
                         bos_token_id=58, eos_token_id=59, pad_token_id=59)
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def test_prompt_encoding_equals_the_pipelines(tmp_path):
    tok = _tokenizer(tmp_path)
    enc = _text_encoder(CTX)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=enc, tokenizer=tok, unet=tiny_unet(),
                                   scheduler=DDPMScheduler(**SD_SCHEDULE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pe, ne = pipe.encode_prompt("a face, sharp", "cpu", 1, True, "blurry")
    ours = encode_prompt([enc], [tok], "a face, sharp", "blurry", sdxl=False)
    assert torch.allclose(ours.positive, pe, atol=1e-6) and torch.allclose(ours.negative, ne, atol=1e-6)

    from diffusers import StableDiffusionXLPipeline

    enc1, enc2 = _text_encoder(8), _text_encoder(4, projection=8)
    xl = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=enc1, text_encoder_2=enc2, tokenizer=tok,
                                   tokenizer_2=tok, unet=tiny_unet(True), scheduler=DDPMScheduler(**SD_SCHEDULE))
    pe, ne, pp, npp = xl.encode_prompt("a face, sharp", device="cpu", negative_prompt="blurry")
    ours = encode_prompt([enc1, enc2], [tok, tok], "a face, sharp", "blurry", sdxl=True)
    for a, b in ((ours.positive, pe), (ours.negative, ne), (ours.pooled, pp), (ours.negative_pooled, npp)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    # a prior built from the encoders encodes its default prompt itself
    prior = LatentDiffusionPrior(tiny_unet(True), tiny_vae(), xl.scheduler.alphas_cumprod.double(),
                                 text_encoders=[enc1, enc2], tokenizers=[tok, tok], sample_size=16)
    assert prior.embeddings.positive.shape == (1, 10, CTX) and prior.embeddings.pooled.shape == (1, 8)


def test_loads_a_diffusers_folder(tmp_path, crops):
    tok = _tokenizer(tmp_path)
    sched = DDPMScheduler(clip_sample=False, **SD_SCHEDULE)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=_text_encoder(CTX), tokenizer=tok, unet=tiny_unet(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd")
    prior = load_prior(tmp_path / "sd", sample_size=16, prompt="a face", negative_prompt="blurry",
                       color_fix="none")
    assert isinstance(prior, LatentDiffusionPrior) and prior.source.endswith("sd")
    assert torch.allclose(prior.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-6)
    direct = LatentDiffusionPrior(pipe.unet, pipe.vae, prior.alphas_cumprod, text_encoders=[pipe.text_encoder],
                                  tokenizers=[tok], prompt="a face", negative_prompt="blurry", sample_size=16,
                                  color_fix="none")
    a = restore_faces(crops, prior, strength=0.5, steps=3, sampler=sched)
    b = restore_faces(crops, direct, strength=0.5, steps=3, sampler=sched)
    assert (a - b).abs().max() < 1e-5
    # the folder's own model_index.json works as the path too
    assert isinstance(load_prior(tmp_path / "sd" / "model_index.json", sample_size=16), LatentDiffusionPrior)


def test_single_file_offline_error_names_the_file_and_the_way_out(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "my_sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="my_sd15.safetensors.*config="):
        load_prior(path)


# ------------------------------------------------------------------------------------------ colour, VAE, errors
def test_color_fixes():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 64, 64, generator=g) * 0.2 + 0.4
    detail = 0.1 * torch.sign(torch.randn(2, 3, 64, 64, generator=g))  # pixel-scale texture
    cast = torch.tensor([0.15, -0.1, 0.05]).view(1, 3, 1, 1)
    restored = (wavelet_lowpass(ref) + detail + cast).clamp(0, 1)
    fixed = wavelet_color_fix(restored, ref)
    assert (fixed.mean((2, 3)) - ref.mean((2, 3))).abs().max() < 0.01  # colour cast gone
    assert (restored.mean((2, 3)) - ref.mean((2, 3))).abs().max() > 0.04
    hf = fixed - wavelet_lowpass(fixed)
    assert torch.corrcoef(torch.stack([hf.flatten(), detail.flatten()]))[0, 1] > 0.9  # detail kept
    a = adain_color_fix(restored, ref)
    assert torch.allclose(a.mean((2, 3)), ref.mean((2, 3)), atol=1e-3)
    assert torch.allclose(a.std((2, 3)), ref.std((2, 3)), atol=1e-3)


def test_vae_chunks_and_color_fix_default(crops):
    calls = []
    vae = tiny_vae()
    vae.register_forward_pre_hook(lambda m, a: None)
    orig = vae.decode

    def counted(z, *a, **k):
        calls.append(z.shape[0])
        return orig(z, *a, **k)

    vae.decode = counted
    sched = DDPMScheduler(clip_sample=False, **SD_SCHEDULE)
    acp = alphas_cumprod_from_scheduler_config(sched.config)
    one = LatentDiffusionPrior(tiny_unet(), vae, acp, embeddings=_embeds(False), sample_size=16, vae_batch_size=1)
    whole = LatentDiffusionPrior(tiny_unet(), vae, acp, embeddings=_embeds(False), sample_size=16, vae_batch_size=None)
    a = restore_faces(crops, one, strength=0.4, steps=2, batch_size=2)
    assert calls == [1, 1]
    calls.clear()
    b = restore_faces(crops, whole, strength=0.4, steps=2, batch_size=2)
    assert calls == [2] and torch.allclose(a, b, atol=1e-6)
    assert one.color_fix == "wavelet"
    c = restore_faces(crops, one, strength=0.4, steps=2, batch_size=2, color_fix="none")
    assert not torch.allclose(a, c, atol=1e-4)


def test_bad_settings_are_named():
    acp = alphas_cumprod_from_scheduler_config(dict(SD_SCHEDULE))
    with pytest.raises(ValueError, match="width 7 .* takes 12"):
        LatentDiffusionPrior(tiny_unet(), tiny_vae(), acp, embeddings=PromptEmbeddings(torch.zeros(1, 5, 7)))
    with pytest.raises(ValueError, match="pooled"):
        LatentDiffusionPrior(tiny_unet(True), tiny_vae(), acp, embeddings=_embeds(False))
    with pytest.raises(ValueError, match="multiple of"):
        LatentDiffusionPrior(tiny_unet(), tiny_vae(), acp, embeddings=_embeds(False), sample_size=15)  # the tiny VAE halves
    with pytest.raises(ValueError, match="text_encoders"):
        LatentDiffusionPrior(tiny_unet(), tiny_vae(), acp)
    with pytest.raises(ValueError, match="color_fix"):
        LatentDiffusionPrior(tiny_unet(), tiny_vae(), acp, embeddings=_embeds(False), color_fix="lab")


def test_per_face_prompts_follow_their_faces(crops):
    """One embedding row per face, split with the faces into chunks: face i restored in a batch of 3 (chunks of 2)
    equals face i restored alone with its own prompt."""
    sched = DDPMScheduler(clip_sample=False, **SD_SCHEDULE)
    acp = alphas_cumprod_from_scheduler_config(sched.config)
    g = torch.Generator().manual_seed(11)
    pos, neg = torch.randn(3, 5, CTX, generator=g), torch.randn(3, 5, CTX, generator=g)
    per_face = PromptEmbeddings(pos, neg)
    prior = LatentDiffusionPrior(tiny_unet(), tiny_vae(), acp, embeddings=_embeds(False), guidance_scale=3.0,
                                 sample_size=16, color_fix="none")
    faces = torch.cat([crops, crops[:1].flip(-1)])
    seeds = [4, 5, 6]
    together = restore_faces(faces, prior, strength=0.6, steps=3, sampler=sched, seeds=seeds, batch_size=2,
                             cond=per_face)
    for i in range(3):
        alone = restore_faces(faces[i:i + 1], prior, strength=0.6, steps=3, sampler=sched, seeds=seeds[i:i + 1],
                              cond=PromptEmbeddings(pos[i:i + 1], neg[i:i + 1]))
        assert (together[i:i + 1] - alone).abs().max() < 1e-5, i
    # the prompts matter: the prior's own prompt gives another result
    shared = restore_faces(faces, prior, strength=0.6, steps=3, sampler=sched, seeds=seeds, batch_size=2)
    assert (shared - together).abs().amax((1, 2, 3)).min() > 1e-3
    with pytest.raises(ValueError, match="3 rows for 2 faces"):
        prior.denoise(torch.zeros(2, 4, 8, 8), torch.tensor([500, 500]), per_face)
