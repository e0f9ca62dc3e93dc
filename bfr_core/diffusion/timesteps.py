"""Where the denoising starts (strength ↔ t_N) and which timesteps it visits (the named presets).

Strength ↔ start timestep
-------------------------
``strength`` ∈ [0, 1] is the fraction of the training chain that is re-generated:
``t_N = round(strength · T)`` with T = ``len(prior.alphas_cumprod)`` (1000), capped at T − 1 (so 1.0 is t = 999,
pure noise for the linear schedule). ``strength = 0`` means no diffusion at all: the result is the backbone's
estimate f(y). ``strength = 0.4`` ↔ t_N = 400 (ā = 0.1936), DifFace's official setting and the default.
`strength_to_timestep` / `timestep_to_strength` convert. x_N is always noised at t_N with the prior's
``alphas_cumprod[t_N]`` (a diffusers scheduler instance: at its own first timestep, see `samplers`).

Presets (``restore_faces(..., sampler=<name>)``)
------------------------------------------------
A preset names a built-in step function (`samplers`), a timestep rule and default ``steps``/``eta``
(``steps``/``eta`` = None in `restore_faces` take the preset's defaults):

* ``official`` — DifFace exactly: the 1000-step chain respaced to 250 (stride 4), started at respaced index
  t_N/4 (100 at strength 0.4). x_N is noised with ``alphas_cumprod[t_N]``, but the denoiser is evaluated at
  t_N − 4, …, 4, 0 (`official_timesteps`: 396, 392, …, 0 at 0.4 — DifFace's off-by-one, kept so the result
  matches its code); DDIM with η = 0.5, x0 clipped to [−1, 1], the model's raw ε in the direction term; the step
  from t = 0 goes to ā = 1. Identical to diffusers ``DDIMScheduler(linear, 1e-4, 0.02, clip_sample=True,
  set_alpha_to_one=True, timestep_spacing='leading')`` with ``set_timesteps(250)`` over its last 100 timesteps.
  ``steps`` must be None or that count, ``eta`` None or 0.5, and t_N a multiple of the stride (else ValueError:
  use ``ddim`` for other settings).
* ``fast`` (the default) — 20 DDIM steps, η = 0.5, evenly spaced from t_N itself:
  ``t_i = round(t_N · (steps − i) / steps)`` for i = 0 … steps−1 (N = 400: 400, 380, …, 20), the last step going
  to ā = 1. This starts at the noise level x_N actually has (no off-by-one), which matters with few, large
  steps. ``steps`` is capped at t_N (one step per integer timestep).
* ``ddim`` — the same rule and sampler with 50 steps by default (any ``steps``/``eta``).
* ``dpmsolver++`` (aliases ``dpm++``, ``dpmpp``, ``dpm_solver++``, ``dpmpp_2m``) — DPM-Solver++(2M), the same
  evenly spaced timesteps, 20 steps by default; deterministic after x_N (``eta`` ignored).

``restore_faces(..., timesteps=[...])`` overrides the preset's rule and ``steps``: explicit descending integers,
each < T, the first ≤ t_N; x_N is still noised at t_N (so ``timesteps=official_timesteps()`` with the ``ddim``
sampler at η 0.5 is the official preset).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

NUM_TRAIN_TIMESTEPS = 1000
OFFICIAL_T_START = 400  # DifFace: respacing 250 (stride 4), start index 100 → alphas_cumprod[400]
OFFICIAL_RESPACING = 250
OFFICIAL_STEPS = 100
OFFICIAL_ETA = 0.5
DEFAULT_STRENGTH = OFFICIAL_T_START / NUM_TRAIN_TIMESTEPS  # 0.4
DEFAULT_STEPS = 20  # the default preset's ("fast"); nodes and CLI use the same
DEFAULT_ETA = 0.5


# --------------------------------------------------------------------------------------------- strength
def strength_to_timestep(strength: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """t_N = round(strength · T), capped at T − 1; 0 ↔ no diffusion. 0.4 ↔ 400 (DifFace official)."""
    s = float(strength)
    if not math.isfinite(s) or s < 0.0 or s > 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    return min(int(math.floor(s * num_train_timesteps + 0.5)), num_train_timesteps - 1)


def timestep_to_strength(t_start: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> float:
    """Inverse of `strength_to_timestep` (exact for t < T − 1)."""
    if not 0 <= int(t_start) < num_train_timesteps:
        raise ValueError(f"t_start must be in [0, {num_train_timesteps - 1}], got {t_start}")
    return int(t_start) / num_train_timesteps


# --------------------------------------------------------------------------------------------- rules
def official_timesteps(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, t_start: int = OFFICIAL_T_START) -> list[int]:
    """DifFace's denoising timesteps from t_N: [t_N − 4, …, 4, 0] (respacing 250; [396, …, 0] at t_N = 400).

    Equal to ``DDIMScheduler(timestep_spacing='leading').set_timesteps(250)`` → ``timesteps[-t_N/4:]``. x_N is
    noised at t_N, one stride above the first entry — DifFace's off-by-one.
    """
    stride = num_train_timesteps // OFFICIAL_RESPACING
    t_start = int(t_start)
    if stride < 1 or t_start % stride:
        raise ValueError(f"the official preset starts at a multiple of the respacing stride {stride} "
                         f"(t_N = {t_start}); use sampler='ddim' for other strengths")
    return [stride * i for i in reversed(range(t_start // stride))]


def evenly_spaced_timesteps(t_start: int, steps: int) -> list[int]:
    """``steps`` timesteps from t_N itself down to one stride above 0: round(t_N·(steps − i)/steps), capped at t_N."""
    t_start, steps = int(t_start), int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if t_start <= 0:
        return []
    steps = min(steps, t_start)
    ts = [int(math.floor(t_start * (steps - i) / steps + 0.5)) for i in range(steps)]
    assert ts[0] == t_start and ts[-1] >= 1 and all(a > b for a, b in zip(ts, ts[1:])), ts
    return ts


def check_timesteps(timesteps: Sequence[int], t_start: int, num_train_timesteps: int) -> list[int]:
    """Validate an explicit ``timesteps=`` list: descending integers in [0, T), the first ≤ t_N."""
    try:
        ts = [int(t) for t in timesteps]
    except (TypeError, ValueError):
        raise ValueError(f"timesteps must be a sequence of integers, got {timesteps!r}") from None
    if any(float(a) != b for a, b in zip(timesteps, ts)):
        raise ValueError(f"timesteps must be integers, got {list(timesteps)}")
    if not ts:
        raise ValueError("timesteps must not be empty")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    if ts[-1] < 0 or ts[0] >= num_train_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}], got {ts}")
    if ts[0] > t_start:
        raise ValueError(f"the first timestep ({ts[0]}) must not exceed the start t_N = {t_start} "
                         f"(strength {timestep_to_strength(t_start, num_train_timesteps)})")
    return ts


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named sampler setting: a built-in step function, a timestep rule and default steps/η."""

    name: str
    step: str  # built-in step function: "ddim" | "dpmsolver++" (samplers.BUILTIN_SAMPLERS)
    spacing: str  # "official" | "even"
    steps: int | None  # default number of denoiser evaluations (None: fixed by the rule)
    eta: float  # default η (ignored by deterministic step functions)
    description: str = ""

    def resolve(self, t_start: int, steps: int | None, eta: float | None,
                num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[list[int], float]:
        """(timesteps, η) for a start t_N and the caller's ``steps``/``eta`` (None = this preset's defaults)."""
        if self.spacing == "official":
            ts = official_timesteps(num_train_timesteps, t_start) if t_start > 0 else []
            if steps is not None and int(steps) != len(ts):
                raise ValueError(f"the official preset takes exactly {len(ts)} steps at t_N = {t_start} "
                                 f"(got steps={steps}); use sampler='ddim' (or 'fast') for another step count")
            if eta is not None and float(eta) != self.eta:
                raise ValueError(f"the official preset uses eta = {self.eta} (got {eta}); use sampler='ddim' "
                                 f"for another eta")
            return ts, self.eta
        steps = self.steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return evenly_spaced_timesteps(t_start, steps), self.eta if eta is None else float(eta)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("fast", "ddim", "even", DEFAULT_STEPS, DEFAULT_ETA,
           "20 DDIM steps, eta 0.5, evenly spaced from t_N (the default)"),
    Preset("official", "ddim", "official", None, OFFICIAL_ETA,
           "DifFace exactly: respacing 250, 100 DDIM steps at strength 0.4, eta 0.5, its off-by-one kept"),
    Preset("ddim", "ddim", "even", 50, DEFAULT_ETA, "DDIM, evenly spaced from t_N (50 steps, eta 0.5 by default)"),
    Preset("dpmsolver++", "dpmsolver++", "even", 20, 0.0,
           "DPM-Solver++(2M), evenly spaced from t_N, deterministic after x_N (20 steps by default)"),
)}
PRESET_ALIASES = {"dpm++": "dpmsolver++", "dpmpp": "dpmsolver++", "dpm_solver++": "dpmsolver++",
                  "dpmpp_2m": "dpmsolver++", "default": "fast"}
SAMPLERS = tuple(PRESETS)  # ("fast", "official", "ddim", "dpmsolver++")
DEFAULT_SAMPLER = "fast"


def get_preset(name: str) -> Preset:
    """The preset of a name or alias (case-insensitive); ValueError naming the choices otherwise."""
    key = str(name).strip().lower()
    key = PRESET_ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS} (or a diffusers scheduler instance)")
    return PRESETS[key]


def denoising_timesteps(t_start: int, steps: int | None = None, sampler: str = DEFAULT_SAMPLER,
                        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The integer timesteps at which preset ``sampler`` evaluates the denoiser from t_N, descending."""
    t_start = int(t_start)
    if not 0 <= t_start < num_train_timesteps:
        raise ValueError(f"t_start must be in [0, {num_train_timesteps - 1}], got {t_start}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return get_preset(sampler).resolve(t_start, steps, None, num_train_timesteps)[0]


def is_official(t_start: int, steps: int, sampler: str = "ddim",
                num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> bool:
    """Deprecated: True for the settings the old step-count rule mapped to DifFace's path (DDIM, t_N = 400, 100
    steps). The official path is now chosen by name: ``sampler='official'``."""
    warnings.warn("is_official is deprecated: the official path is the 'official' preset (sampler='official')",
                  DeprecationWarning, stacklevel=2)
    return (get_preset(sampler).step == "ddim" and num_train_timesteps == NUM_TRAIN_TIMESTEPS
            and int(t_start) == OFFICIAL_T_START and int(steps) == OFFICIAL_STEPS)


__all__ = [
    "DEFAULT_ETA", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "NUM_TRAIN_TIMESTEPS", "OFFICIAL_ETA",
    "OFFICIAL_RESPACING", "OFFICIAL_STEPS", "OFFICIAL_T_START", "PRESETS", "PRESET_ALIASES", "Preset", "SAMPLERS",
    "check_timesteps", "denoising_timesteps", "evenly_spaced_timesteps", "get_preset", "is_official",
    "official_timesteps", "strength_to_timestep", "timestep_to_strength",
]
