"""`IdentitySettings`: what a user chooses for identity guidance, turned into a sampler hook per restore.

The settings outlive one restore (a ComfyUI link, a CLI run over many photos); `build` makes the per-call
`IdentityGuidance` for the faces about to be restored, so blind guidance targets each face's own backbone estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .guidance import FaceRecognizer, IdentityGuidance, LatentCodec, check_guidance_settings


@dataclass
class IdentitySettings:
    """recognizer: any `FaceRecognizer`. strength ≥ 0; guide timesteps t with end·T ≤ t ≤ start·T.
    mask: "features" | "none" | a crop-space tensor [H, W] / [F, H, W]. reference: embeddings [R, D] of the
    wanted person (None = blind: keep each face's own identity). fidelity: PGDiff-style pull toward the estimate."""

    recognizer: FaceRecognizer
    strength: float = 1.0
    start: float = 1.0
    end: float = 0.0
    mask: str | Tensor | None = "features"
    reference: Tensor | None = None
    fidelity: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, when the user sets them, not midway through a restore.
        check_guidance_settings(self.strength, self.fidelity, self.start, self.end)

    def build(self, estimates: Tensor, alphas_cumprod: Tensor, latent_prior: LatentCodec | None = None
              ) -> IdentityGuidance:
        """The sampler hook for these faces. ``estimates``: the backbone's estimates [F, 3, S, S] in [0, 1], in the
        order they will be restored — the blind target and the fidelity anchor. ``latent_prior``: the prior when it
        samples latents (guidance then works in latent space)."""
        guidance = IdentityGuidance(self.recognizer, strength=self.strength, start=self.start, end=self.end,
                                    reference=self.reference, mask=self.mask, fidelity=self.fidelity,
                                    alphas_cumprod=alphas_cumprod, latent_prior=latent_prior)
        if self.reference is None or self.fidelity > 0:
            guidance.prepare(estimates)
        guidance.validate(estimates.shape[0])  # per-face masks/targets must match the faces before sampling
        return guidance
