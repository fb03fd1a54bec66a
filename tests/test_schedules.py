"""Schedules (paper §3.3): zero terminal SNR with v-prediction, and the ε / v / x0 conversions."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from emuvideo.models.presets import build_video_unet
from emuvideo.schedules import (
    make_sample_scheduler,
    make_train_scheduler,
    predicted_epsilon,
    predicted_x0,
    scheduler_config,
    training_target,
)


@pytest.mark.parametrize("make", [make_train_scheduler, make_sample_scheduler], ids=["train", "sample"])
def test_v_prediction_schedule_has_zero_terminal_snr(make):
    scheduler = make("v_prediction")
    a = scheduler.alphas_cumprod
    assert scheduler.config.prediction_type == "v_prediction"
    assert len(a) == 1000 and a[-1].item() == 0.0  # exactly: no signal is left at t = T
    assert a[-2].item() > 0 and bool((a[1:] < a[:-1]).all())  # ... and only there; strictly decreasing


def test_v_prediction_sampler_starts_at_the_last_timestep():
    scheduler = make_sample_scheduler("v_prediction")
    for steps in (1, 2, 25, 50):
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps[0].item() == 999
        assert len(scheduler.timesteps) == steps and bool((scheduler.timesteps[1:] < scheduler.timesteps[:-1]).all())
    # At t = 999 the noisy input is pure noise: the model must make the image from nothing (Lin et al.).
    x0, noise = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    t = torch.tensor([999, 999])
    assert torch.equal(make_train_scheduler("v_prediction").add_noise(x0, noise, t), noise)


def test_epsilon_schedule_keeps_signal_at_the_last_step():
    for make in (make_train_scheduler, make_sample_scheduler):
        scheduler = make("epsilon")
        assert scheduler.config.prediction_type == "epsilon"
        assert scheduler.alphas_cumprod[-1].item() > 1e-3  # ε-prediction is undefined at ᾱ = 0
    # Same β before rescaling: the two objectives agree where the rescale barely moves ᾱ (t = 0).
    eps, v = make_train_scheduler("epsilon").alphas_cumprod, make_train_scheduler("v_prediction").alphas_cumprod
    assert abs(eps[0].item() - v[0].item()) < 1e-3


def test_unknown_objective_is_named():
    with pytest.raises(ValueError, match="'x0'"):
        scheduler_config("x0")


def _scheduler(kind: str) -> DDPMScheduler:
    return DDPMScheduler(**{**scheduler_config("v_prediction"), "prediction_type": kind})


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_conversions_recover_x0_and_noise(kind):
    scheduler = _scheduler(kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 4, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 900, 990])  # ᾱ > 0 at all of these
    xt = scheduler.add_noise(x0, noise, t)
    target = training_target(scheduler, x0, noise, t)
    torch.testing.assert_close(predicted_x0(scheduler, target, xt, t), x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(predicted_epsilon(scheduler, target, xt, t), noise, rtol=0, atol=1e-4)
    # The target is what the kind says: ε, x0, or v = √ᾱ·ε − √(1−ᾱ)·x0.
    a = scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[kind]
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-6)


def test_v_prediction_recovers_x0_even_at_zero_snr():
    scheduler = make_train_scheduler("v_prediction")
    x0, noise, t = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4), torch.tensor([999, 999])
    xt = scheduler.add_noise(x0, noise, t)
    v = training_target(scheduler, x0, noise, t)
    assert torch.equal(v, -x0)  # at ᾱ = 0, v = −x0: still a well-posed target
    assert torch.equal(predicted_x0(scheduler, v, xt, t), x0)
    assert torch.equal(predicted_epsilon(scheduler, v, xt, t), noise)


@pytest.fixture(scope="module")
def video_unet():
    torch.manual_seed(0)
    return build_video_unet("tiny")


@pytest.mark.parametrize("objective", ["epsilon", "v_prediction"])
def test_training_step_is_finite_including_the_terminal_step(video_unet, objective):
    scheduler = make_train_scheduler(objective)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 4, 3, 8, 8, generator=g)
    noise = torch.randn(3, 4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])  # 999: zero SNR under v_prediction
    xt = scheduler.add_noise(x0, noise, t)
    conditioning = torch.zeros_like(x0)
    conditioning[:, :, 0] = x0[:, :, 0]
    mask = torch.zeros(3, 1, 3, 8, 8)
    mask[:, :, 0] = 1
    text = torch.randn(3, 5, 32, generator=g)

    video_unet.zero_grad(set_to_none=True)
    pred = video_unet(xt, t, text, conditioning=conditioning, conditioning_mask=mask).sample
    per_sample = F.mse_loss(pred, training_target(scheduler, x0, noise, t), reduction="none").mean((1, 2, 3, 4))
    assert torch.isfinite(per_sample).all() and (per_sample > 0).all()
    per_sample.mean().backward()
    grads = [p.grad for p in video_unet.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    # The sampler can turn that prediction into finite x0 and ε estimates at every t, t = 999 included.
    assert torch.isfinite(predicted_x0(scheduler, pred.detach(), xt, t)).all()
    assert torch.isfinite(predicted_epsilon(scheduler, pred.detach(), xt, t)).all()
