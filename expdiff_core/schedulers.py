"""Thin helpers over diffusers' noise schedulers: the training schedule and matching few-step samplers."""

from __future__ import annotations

import os
from pathlib import Path

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import ExpDiffInputError
from .training.diffusion_config import PREDICTION_TYPES

SCHEDULER_CONFIG_NAME = "scheduler_config.json"
SAMPLERS = ("ddpm", "ddim", "dpm++")


def training_noise_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "scaled_linear",
                             beta_start: float = 0.00085, beta_end: float = 0.012,
                             prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> DDPMScheduler:
    """The DDPM forward process of Eq. 1-2 (Stable Diffusion's latent schedule by default).

    ``clip_sample=False``: VAE latents are unbounded (unit variance after scaling), so clipping the predicted
    x0 to [-1, 1] while sampling would distort them. ``zero_terminal_snr``: betas rescaled so the last step is
    pure noise (v-prediction only). Stable Diffusion's schedule leaves sqrt(alpha_bar) = 0.068 of the signal at
    t = 999; over the ~10^5 values of a face's latents that residue identifies the expression, so a model
    trained on it learns to read the expression from the noise instead of the prompt -- and sampling, which
    starts from pure noise, has no such residue.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ExpDiffInputError(None, f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
                         clip_sample=False, rescale_betas_zero_snr=zero_terminal_snr)


def sampling_scheduler(name: str, training_scheduler: SchedulerMixin) -> SchedulerMixin:
    """A sampler (``ddpm``, ``ddim`` or ``dpm++``) with the same noise schedule as ``training_scheduler``."""
    config = training_scheduler.config
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False, timestep_spacing="trailing")
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ExpDiffInputError(None, f"sampler {name!r} is not one of {SAMPLERS}")


def load_noise_scheduler(folder: str | os.PathLike) -> DDPMScheduler:
    """The training noise schedule saved beside a trained denoiser (``<folder>/scheduler_config.json``)."""
    folder = Path(folder)
    if not (folder / SCHEDULER_CONFIG_NAME).is_file():
        raise ExpDiffInputError(folder / SCHEDULER_CONFIG_NAME, "noise scheduler config not found")
    return DDPMScheduler.from_pretrained(folder, local_files_only=True)
