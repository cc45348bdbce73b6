"""The training noise schedule and the samplers derived from it."""

from __future__ import annotations

import pytest
import torch

from expdiff_core.errors import ExpDiffInputError
from expdiff_core.schedulers import sampling_scheduler, training_noise_scheduler
from expdiff_core.training.diffusion_config import DiffusionTrainConfig


def test_stable_diffusions_schedule_leaves_signal_at_its_last_step():
    # sqrt(alpha_bar_999) = 0.068: why a model trained on it can read the expression from the "noise".
    last = training_noise_scheduler(prediction_type="v_prediction").alphas_cumprod[-1].sqrt()
    assert 0.06 < float(last) < 0.08


def test_a_zero_terminal_snr_schedule_ends_in_pure_noise_and_its_samplers_start_there():
    scheduler = training_noise_scheduler(prediction_type="v_prediction", zero_terminal_snr=True)
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # diffusers keeps 2**-24 there to avoid a log(0)
    x0, noise, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([999, 999])
    assert torch.allclose(scheduler.add_noise(x0, noise, t), noise, atol=1e-3)
    for name in ("ddim", "dpm++"):
        sampler = sampling_scheduler(name, scheduler)
        sampler.set_timesteps(20)
        assert int(sampler.timesteps[0]) == 999 and sampler.config.rescale_betas_zero_snr


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(ExpDiffInputError, match="zero_terminal_snr"):
        DiffusionTrainConfig(zero_terminal_snr=True, prediction_type="epsilon").validate()


def test_a_timestep_shift_trains_the_noisiest_steps_more_often():
    from expdiff_core.training.diffusion import training_timesteps

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = training_timesteps(1000, 20000, 1.0, gen())
    shifted = training_timesteps(1000, 20000, 4.0, gen())
    assert uniform.min() >= 0 and shifted.max() <= 999
    # P(t >= 900): 10% uniform; with s = 4, u >= 0.9 / (4 - 3 * 0.9) = 0.69, i.e. 31% (+-1% at 20k draws).
    assert abs((uniform >= 900).float().mean() - 0.10) < 0.01
    assert abs((shifted >= 900).float().mean() - 0.31) < 0.01
