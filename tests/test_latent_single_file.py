"""Single-file SD 1.x / SDXL checkpoints (original LDM layout) load with ``load_prior(file, config=folder)``, offline.

The file is written from a tiny diffusers pipeline by ``ldm_checkpoint.pipeline_to_ldm`` (the LDM names written out
by hand, not by diffusers' converter); ``config=`` is a folder holding only that family's configs and tokenizer (its
weight files deleted), so every weight must come from the file. Sockets are closed for the whole load.
"""
from __future__ import annotations

import socket

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bfr_core import LatentDiffusionPrior, load_prior  # noqa: E402
from bfr_core.restoration.difface import restore_faces  # noqa: E402
from ldm_checkpoint import pipeline_to_ldm  # noqa: E402
from test_latent_diffusion import SD_SCHEDULE, _text_encoder, _tokenizer, tiny_unet, tiny_vae  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _pipeline(sdxl: bool, tok):
    sched = DDPMScheduler(clip_sample=False, **SD_SCHEDULE)
    if sdxl:
        return StableDiffusionXLPipeline(vae=tiny_vae(0.13025), text_encoder=_text_encoder(8),
                                         text_encoder_2=_text_encoder(4, projection=8), tokenizer=tok, tokenizer_2=tok,
                                         unet=tiny_unet(True), scheduler=sched)
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=_text_encoder(12), tokenizer=tok, unet=tiny_unet(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_single_file_loads_offline_with_a_config_folder(tmp_path, sdxl, no_network):
    pipe = _pipeline(sdxl, _tokenizer(tmp_path))
    folder = tmp_path / "config"
    pipe.save_pretrained(folder)
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")]
    assert weights
    for p in weights:  # a config-only folder: the weights can come only from the single file
        p.unlink()
    ckpt = tmp_path / "model.safetensors"
    save_file(pipeline_to_ldm(pipe), str(ckpt))

    prior = load_prior(ckpt, config=folder, sample_size=16, prompt="a face", negative_prompt="blurry",
                       color_fix="none")
    assert isinstance(prior, LatentDiffusionPrior) and prior.sdxl is sdxl and prior.source == str(ckpt)
    sources = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    for got, want in zip([prior.unet, prior.vae, *prior.text_encoders], sources, strict=True):
        a, b = got.state_dict(), want.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in b), type(want).__name__

    # and it restores exactly as the prior built from the source pipeline
    direct = LatentDiffusionPrior(pipe.unet, pipe.vae, prior.alphas_cumprod,
                                  text_encoders=sources[2:], tokenizers=[pipe.tokenizer] * len(sources[2:]),
                                  prompt="a face", negative_prompt="blurry", sample_size=16, color_fix="none")
    crops = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    sched = DDPMScheduler(clip_sample=False, **SD_SCHEDULE)
    a = restore_faces(crops, prior, strength=0.5, steps=3, sampler=sched, seeds=[1, 2])
    b = restore_faces(crops, direct, strength=0.5, steps=3, sampler=sched, seeds=[1, 2])
    assert (a - b).abs().max() < 1e-5, (a - b).abs().max()
