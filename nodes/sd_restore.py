"""Restore aligned face crops with the user's own SD1.5 / SD2.x / SDXL MODEL, VAE and CONDITIONING, through
ComfyUI's samplers; and a GUIDER that adds identity guidance to any sampler (SamplerCustomAdvanced).

Nodes translate only: the recipe (backbone estimate → encode → noise to the start → denoise → decode → colour fix)
is `bfr_core.restore_faces`, the σ ↔ timestep bridge for identity guidance is `bfr_core.diffusion.kdiffusion`.
The adapters over ComfyUI (its VAE as a latent codec, its CFGGuider and samplers as a `Sampler`) are in
`nodes/comfy_sd.py`.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..bfr_core.utils.color_fix import COLOR_FIX_MODES
from .schema import Faces, Guidance, Restorer, node_schema

DEFAULT_SAMPLER = "dpmpp_2m"
DEFAULT_SCHEDULER = "karras"


def _sampler_names() -> tuple[list[str], list[str]]:
    """ComfyUI's KSampler sampler and scheduler lists (imported when the schema is built, inside ComfyUI)."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def _default(options: list[str], wanted: str) -> str:
    return wanted if wanted in options else options[0]


class BFRIdentityGuider(io.ComfyNode):
    SEARCH = ("identity guider", "guider", "sdxl face", "sd face restore", "arcface guidance")

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "BFRIdentityGuider", "BFR Identity Guider (SD/SDXL)",
            "A GUIDER for SamplerCustomAdvanced: classifier-free guidance like the core CFGGuider, plus identity "
            "guidance in latent space (BFR Identity Guidance): at every step the face recognizer reads the VAE-decoded "
            "prediction and its gradient pulls each latent toward the target identity, inside the mask. For aligned "
            "face crops (one face per latent) with an SD1.5 / SD2.x / SDXL model.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.5, SD2.x or SDXL checkpoint)."),
                io.Conditioning.Input("positive", tooltip="Positive prompt conditioning (e.g. a neutral portrait "
                                                          "prompt)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt conditioning."),
                io.Vae.Input("vae", tooltip="The VAE of the model: the recognizer reads the decoded prediction."),
                Guidance.Input("guidance", tooltip="From BFR Identity Guidance (recognizer, strength, mask, "
                                                   "references)."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale, as in the core CFGGuider."),
                io.Image.Input("target", optional=True,
                               tooltip="The faces whose identity to keep, one per latent of the batch (or one for "
                                       "all), e.g. the aligned crops or the backbone's estimate. Not needed when the "
                                       "guidance has reference photos."),
            ],
            outputs=[io.Guider.Output(display_name="guider", tooltip="For SamplerCustomAdvanced, like CFGGuider.")],
            search=cls.SEARCH)

    @classmethod
    def execute(cls, model, positive, negative, vae, guidance, cfg, target=None) -> io.NodeOutput:
        from .comfy_sd import make_identity_guider

        return io.NodeOutput(make_identity_guider(model, positive, negative, vae, guidance, cfg, target))


class BFRRestoreCropsWithModel(io.ComfyNode):
    SEARCH = ("sd restore", "sdxl restore", "restore crops", "face restore sdxl", "authface", "clr-face")

    @classmethod
    def define_schema(cls) -> io.Schema:
        samplers, schedulers = _sampler_names()
        return node_schema(
            "BFRRestoreCropsWithModel", "BFR Restore Crops with SD/SDXL Model",
            "Restores aligned face crops with your own SD1.5 / SD2.x / SDXL checkpoint as the prior (DifFace "
            "transition): the backbone's estimate is VAE-encoded, noised to the step set by 'denoise' and denoised "
            "by the model with ComfyUI's sampler and your prompt conditioning, decoded and colour-corrected. "
            "Optional identity guidance in latent space.",
            inputs=[
                io.Image.Input("crops", tooltip="Aligned face crops from BFR Align Faces."),
                io.Model.Input("model", tooltip="The diffusion model (SD1.5, SD2.x or SDXL checkpoint)."),
                io.Vae.Input("vae", tooltip="The model's VAE."),
                io.Conditioning.Input("positive", tooltip="Positive prompt, e.g. 'a high quality photo of a face, "
                                                          "detailed skin, sharp focus'."),
                io.Conditioning.Input("negative", tooltip="Negative prompt, e.g. 'blurry, lowres, painting, "
                                                          "deformed'."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Noise seed. Face i uses seed + i; with 'faces' connected, seed + its track id "
                                     "(video) or its index within its own image."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="Sampler steps over the denoised part (as KSampler with denoise < 1)."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=samplers, default=_default(samplers, DEFAULT_SAMPLER),
                               tooltip="ComfyUI sampler. Deterministic ones (euler, dpmpp_2m, ...) make a face's "
                                       "result depend only on its own seed."),
                io.Combo.Input("scheduler", options=schedulers, default=_default(schedulers, DEFAULT_SCHEDULER),
                               tooltip="ComfyUI noise schedule."),
                io.Float.Input("denoise", default=0.4, min=0.0, max=1.0, step=0.01,
                               tooltip="How much is re-generated, as KSampler's denoise: 0 returns the backbone's "
                                       "estimate, 0.3-0.5 keeps the face and adds detail, 1 ignores the input."),
                io.Int.Input("size", default=512, min=64, max=2048, step=64,
                             tooltip="Resolution the crops are restored at (resized to it and back): 512 for SD1.5, "
                                     "768 for SD2.x-v, 1024 for SDXL."),
                io.Combo.Input("color_fix", options=list(COLOR_FIX_MODES), default="wavelet",
                               tooltip="Match the result's colours to the backbone's estimate (wavelet keeps "
                                       "detail, adain matches mean/std per channel) or not."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Faces per sampler call; halves itself automatically on out-of-memory."),
                Restorer.Input("restorer", optional=True,
                               tooltip="Backbone from BFR Load Restorer: its estimate is what the model refines "
                                       "(DifFace). Unconnected: the crop itself."),
                Guidance.Input("guidance", optional=True,
                               tooltip="Identity guidance in latent space from BFR Identity Guidance (target: the "
                                       "backbone's estimate, unless it has reference photos)."),
                Faces.Input("faces", optional=True, tooltip="From BFR Align Faces (optional): seeds each face by its "
                                                            "track id or its index within its own image."),
            ],
            outputs=[io.Image.Output(display_name="restored", tooltip="Restored crops, same count and size as the "
                                                                      "input.")],
            search=cls.SEARCH)

    @classmethod
    def execute(cls, crops, model, vae, positive, negative, seed, steps, cfg, sampler_name, scheduler, denoise, size,
                color_fix, batch_size, restorer=None, guidance=None, faces=None) -> io.NodeOutput:
        from .comfy_sd import restore_crops_with_model

        return io.NodeOutput(restore_crops_with_model(
            crops, model, vae, positive, negative, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
            scheduler=scheduler, denoise=denoise, size=size, color_fix=color_fix, batch_size=batch_size,
            restorer=restorer, guidance=guidance, faces=faces))
