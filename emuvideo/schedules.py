"""Noise schedules and the diffusion objective (paper §3.3, Lin et al. 2023).

The schedules are diffusers schedulers; this module only picks their settings and converts between the
three parameterisations. Two objectives:

- ``"epsilon"``: the standard LDM schedule (scaled-linear β, signal left at the last step), ε-prediction —
  the paper's low-resolution stage 1;
- ``"v_prediction"``: the same β rescaled to **zero terminal SNR**, v-prediction, trailing timesteps —
  stage 2 onwards, and the default for sampling.
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

OBJECTIVES = ("epsilon", "v_prediction")

# Paper §3.3: N = 1000, "quad" (scaled-linear) β from 8.5e-4 to 1.2e-2.
_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def scheduler_config(objective: str = "v_prediction") -> dict:
    """Scheduler kwargs for an objective; one place for the schedule's settings."""
    if objective == "v_prediction":
        return dict(
            _BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
        )
    if objective == "epsilon":
        return dict(_BETAS, prediction_type="epsilon", rescale_betas_zero_snr=False, timestep_spacing="leading")
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def make_train_scheduler(objective: str = "v_prediction") -> DDPMScheduler:
    return DDPMScheduler(**scheduler_config(objective))


def make_sample_scheduler(objective: str = "v_prediction") -> DDIMScheduler:
    # Zero terminal SNR needs the sampler to start at t = T - 1 ("trailing") and to keep the last step's
    # α at 0 rather than clamping it (`set_alpha_to_one`) — Lin et al. §3.
    return DDIMScheduler(**scheduler_config(objective), clip_sample=False, set_alpha_to_one=False)


# The samplers a pipeline can use, by name: a diffusers scheduler class and the settings it needs on top of
# the model's own schedule (`make_sampler`). Each keeps the model's β, prediction type and zero terminal SNR.
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    # as `make_sample_scheduler`: no clipping of x0, and the last step's ᾱ kept (0 under zero terminal SNR)
    "ddim": (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False)),
    # DPM-Solver++ (Lu et al. 2022), 2nd order multistep, 1st order at the last steps (stable below 15 steps)
    "dpm++": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)),
    # UniPC (Zhao et al. 2023), bh2 predictor-corrector
    "unipc": (UniPCMultistepScheduler, dict(solver_type="bh2", lower_order_final=True)),
    # Euler (Karras et al. 2022, Algorithm 2 without churn): works on x/√ᾱ; under zero terminal SNR diffusers
    # caps the first σ (ᾱ_T = 2^-24, σ_T = 4096) instead of making it infinite
    "euler": (EulerDiscreteScheduler, dict()),
}

# What a sampler keeps from the model's schedule: the β, what the network predicts, the rescale.
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")


def make_sampler(name: str, config: dict | None = None) -> SchedulerMixin:
    """The sampler `name` (a key of `SAMPLERS`) on the schedule of a model's scheduler `config`.

    `config`: a scheduler config (`pipe.scheduler.config`), default the v-prediction schedule. Its β,
    prediction type, zero-terminal-SNR rescale and timestep spacing carry over; under zero terminal SNR the
    spacing is "trailing", whatever the config says, so that sampling starts at t = T - 1 (Lin et al. §3.3).
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    cls, extra = SAMPLERS[name]
    config = dict(scheduler_config("v_prediction") if config is None else config)
    schedule = {k: config[k] for k in _SCHEDULE_KEYS if k in config}
    if schedule.get("rescale_betas_zero_snr"):
        schedule["timestep_spacing"] = "trailing"
    return cls(**schedule, **extra)


def sampler_name(scheduler: SchedulerMixin) -> str | None:
    """The `SAMPLERS` name of a scheduler's class (None for another class)."""
    return next((name for name, (cls, _) in SAMPLERS.items() if type(scheduler) is cls), None)


def _coefficients(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alphas_cumprod = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)
    a = alphas_cumprod[timesteps.to(like.device).long()]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return a.sqrt().view(shape).to(like.dtype), (1 - a).sqrt().view(shape).to(like.dtype)


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict: ε, or v = √ᾱ·ε − √(1−ᾱ)·x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {kind!r}")


def predicted_x0(scheduler, model_output: torch.Tensor, xt: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x0 from a prediction of any kind (ε, v or x0) at noisy xt."""
    sqrt_a, sqrt_1ma = _coefficients(scheduler, timesteps, xt)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (xt - sqrt_1ma * model_output) / sqrt_a
    if kind == "v_prediction":
        return sqrt_a * xt - sqrt_1ma * model_output
    if kind == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {kind!r}")


def predicted_epsilon(scheduler, model_output: torch.Tensor, xt: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """ε from a prediction of any kind at noisy xt."""
    sqrt_a, sqrt_1ma = _coefficients(scheduler, timesteps, xt)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return model_output
    if kind == "v_prediction":
        return sqrt_1ma * xt + sqrt_a * model_output
    if kind == "sample":
        return (xt - sqrt_a * model_output) / sqrt_1ma
    raise ValueError(f"unsupported prediction_type {kind!r}")
