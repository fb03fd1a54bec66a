"""Samplers (`emuvideo.schedules.SAMPLERS`): each keeps the model's schedule (v-prediction, zero terminal SNR,
trailing steps), samples finite videos, and is reachable from Python, the diffusers way, and the CLI."""

import typing

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

from emuvideo.cli import ATTENTION_NAMES, SAMPLER_NAMES, build_parser, main
from emuvideo.models.attention import ATTENTION_BACKENDS
from emuvideo.pipelines.loading import load_pipeline, random_pipeline
from emuvideo.schedules import SAMPLERS, make_sample_scheduler, make_sampler, sampler_name, scheduler_config
from emuvideo.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vpred_pipeline(tiny_clip):
    """The tiny pipeline on emuvideo's own schedule: v-prediction, zero terminal SNR, trailing (both stages)."""
    tokenizer, text_encoder = tiny_clip
    pipe = random_pipeline("tiny", text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video(pipe, steps=3):
    return pipe("a red circle moving right", num_frames=3, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0)).frames


def test_the_cli_names_are_the_registries():
    assert SAMPLER_NAMES == tuple(SAMPLERS)
    assert ATTENTION_NAMES == ATTENTION_BACKENDS == typing.get_args(typing.get_type_hints(TrainConfig)["attention"])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_keeps_v_prediction_zero_snr_and_trailing_steps(name):
    sampler = make_sampler(name, make_sample_scheduler("v_prediction").config)
    assert sampler_name(sampler) == name
    assert sampler.config.prediction_type == "v_prediction" and sampler.config.rescale_betas_zero_snr
    assert sampler.config.timestep_spacing == "trailing"
    sampler.set_timesteps(4)
    assert int(sampler.timesteps[0]) == 999  # the first step sees pure noise (Lin et al.)
    # zero terminal SNR: ᾱ_T is 0 (DDIM) or diffusers' finite stand-in 2^-24 (the σ-based samplers)
    assert sampler.alphas_cumprod[-1].item() <= 2**-24 and bool(torch.isfinite(torch.as_tensor(sampler.init_noise_sigma)))


def test_an_epsilon_schedule_keeps_its_own_spacing_and_prediction():
    sampler = make_sampler("dpm++", make_sample_scheduler("epsilon").config)
    assert sampler.config.prediction_type == "epsilon" and not sampler.config.rescale_betas_zero_snr
    assert sampler.config.timestep_spacing == scheduler_config("epsilon")["timestep_spacing"]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_gives_a_finite_video_through_its_known_first_frame(vpred_pipeline, name):
    """Swapping the video stage's sampler leaves the image stage alone; frame 0 is pinned to that image in each
    sampler's own noise space (Euler's x/√ᾱ included), so it comes out the same whatever the sampler."""
    reference = _video(vpred_pipeline)  # ddim, the model's own
    original = vpred_pipeline.scheduler
    try:
        vpred_pipeline.set_sampler(name, stage="video")
        assert sampler_name(vpred_pipeline.scheduler) == name and sampler_name(vpred_pipeline.image_scheduler) == "ddim"
        frames = _video(vpred_pipeline)
    finally:
        vpred_pipeline.scheduler = original
    assert bool(torch.isfinite(frames).all()) and frames.shape == reference.shape
    # "pt" is (B, T, 3, H, W) in [0, 1] (diffusers' layout); the old [-1, 1] tolerance of 1e-4 halves with the range
    torch.testing.assert_close(frames[:, 0], reference[:, 0], atol=5e-5, rtol=0)


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_the_diffusers_way_of_swapping_a_scheduler_works_too(vpred_pipeline, cls):
    original = vpred_pipeline.scheduler
    try:
        vpred_pipeline.scheduler = cls.from_config(vpred_pipeline.scheduler.config)
        assert vpred_pipeline.image_to_video.scheduler is vpred_pipeline.scheduler
        assert vpred_pipeline.scheduler.config.rescale_betas_zero_snr
        assert vpred_pipeline.scheduler.config.prediction_type == "v_prediction"
        assert bool(torch.isfinite(_video(vpred_pipeline, steps=2)).all())
    finally:
        vpred_pipeline.scheduler = original


def test_set_sampler_both_stages_and_its_errors(vpred_pipeline):
    originals = vpred_pipeline.scheduler, vpred_pipeline.image_scheduler
    try:
        vpred_pipeline.set_sampler("unipc")
        assert sampler_name(vpred_pipeline.scheduler) == sampler_name(vpred_pipeline.image_scheduler) == "unipc"
        assert vpred_pipeline.config.scheduler[1] == "UniPCMultistepScheduler"  # what save_pretrained would write
        with pytest.raises(ValueError, match=r"^stage must be 'both', 'video' or 'image', got 'audio'$"):
            vpred_pipeline.set_sampler("ddim", stage="audio")
    finally:
        vpred_pipeline.scheduler, vpred_pipeline.image_scheduler = originals


def test_an_unknown_sampler_is_one_line_naming_the_choices():
    message = r"^sampler must be one of ddim, dpm\+\+, unipc, euler, got 'heun'$"
    with pytest.raises(ValueError, match=message):
        make_sampler("heun")
    with pytest.raises(ValueError, match=message):  # before any weight is read
        load_pipeline("/no/such/model", sampler="heun")


def test_the_cli_refuses_an_unknown_sampler_before_importing_anything(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompt", "x", "--output", "x.mp4", "--sampler", "heun"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "invalid choice: 'heun'" in err[-1]


def test_every_sampling_command_takes_sampler_and_attention():
    parser = build_parser()
    commands = {"generate": ["--prompt", "x"], "animate": ["--image", "i", "--prompt", "x", "--output", "o"], "eval": []}
    for command, required in commands.items():
        args = parser.parse_args([command, *required, "--sampler", "dpm++", "--attention", "math"])
        assert (args.sampler, args.attention) == ("dpm++", "math"), command
    # interpolation samples with ddim only (its key frames' noise augmentation); the kernels are free
    assert parser.parse_args(["interpolate", "v", "--output", "o", "--attention", "math"]).attention == "math"
    assert parser.parse_args(["generate", "--image-steps", "4"]).image_num_inference_steps == 4
