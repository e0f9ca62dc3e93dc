"""bench/make_comfy_sd_checkpoint.py: the SDXL layout against diffusers' / transformers' SDXL models (shapes only,
on the meta device), and the streaming safetensors writer against safetensors' reader. That ComfyUI detects the
written files as SD15 / SDXL was checked in a real ComfyUI (README, "SD/SDXL checkpoints in ComfyUI")."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
try:
    import make_comfy_sd_checkpoint as mk
finally:
    sys.path.pop(0)


def _shapes(wr: mk.Writer, prefix: str) -> list[tuple[int, ...]]:
    return sorted(s for n, s, _ in wr.specs if n.startswith(prefix))


def test_sdxl_unet_has_the_shapes_of_diffusers_sdxl_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # SDXL base's config: no memory, no weights
        ref = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    ours = _shapes(mk.layout("sdxl"), "model.diffusion_model.")
    assert ours == sorted(tuple(p.shape) for p in ref.parameters())  # 1680 tensors, 2.57B parameters


def test_sdxl_text_encoders_have_the_sizes_of_clip_l_and_bigg():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                           num_attention_heads=20, num_hidden_layers=32,
                                                           projection_dim=1280, hidden_act="gelu"))
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                              num_hidden_layers=12))  # clip-vit-large-patch14 text tower
    wr = mk.layout("sdxl")
    # OpenCLIP fuses q/k/v into in_proj: compare parameter counts (its logit_scale has no transformers twin)
    g = sum(torch.Size(s).numel() for n, s, _ in wr.specs
            if n.startswith("conditioner.embedders.1.model.") and not n.endswith("logit_scale"))
    assert g == sum(p.numel() for p in big_g.parameters())
    assert _shapes(wr, "conditioner.embedders.0.transformer.") == sorted(tuple(p.shape) for p in clip_l.parameters())
    assert "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight" in {n for n, _, _ in wr.specs}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_streamed_file_reads_back_as_the_drawn_tensors(tmp_path, dtype):
    from safetensors.torch import load_file

    def small(seed: int) -> mk.Writer:
        wr = mk.Writer(seed, dtype)
        wr.w("a", 6, 4, 3, 3)
        wr.norm("n", 5)
        wr.normal("emb", 7, 3, std=0.02)
        wr.fixed("scalar", torch.tensor(4.6))  # 0-d: once truncated the file by its bytes
        return wr

    path = tmp_path / "x.safetensors"
    mk.stream_safetensors(small(3), str(path), {"note": "t"})
    got, want = load_file(str(path)), dict(small(3).tensors())
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) and got[k].dtype == dtype for k in want)
    assert not torch.equal(want["a.weight"], dict(small(4).tensors())["a.weight"])  # the seed matters
