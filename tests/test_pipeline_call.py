"""The pipelines' call arguments and outputs as diffusers users expect them: `latents=`, `callback_on_step_end`,
`num_videos_per_prompt`, `prompt_embeds`, `output_type` in diffusers' conventions, VAE slicing, model hooks
freed; direct text-to-video as image-to-video with no known frame; the interpolation stage's own step count."""

import sys
import types

import numpy as np
import pytest
import torch
from diffusers.utils import export_utils
from diffusers.utils.torch_utils import randn_tensor

from emuvideo.models.conditioning import known_frames_conditioning
from emuvideo.pipelines import EmuInterpolationPipeline, EmuVideoPipeline
from emuvideo.pipelines.common import (
    INTERPOLATION_STEPS,
    decode_frames,
    encode_prompt,
    numpy_to_uint8,
    step_kwargs,
    to_uint8,
    vae_scale_factor,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 3
PROMPT = "a red circle moving right"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _call(pipe, seed=0, **kwargs):
    kwargs = {"num_frames": FRAMES, "num_inference_steps": 2, "generator": _gen(seed), **kwargs}
    return pipe(kwargs.pop("prompt", PROMPT), **kwargs)


def test_export_to_video_from_diffusers_gets_the_right_colours(tiny_pipeline, monkeypatch):
    """diffusers' `export_to_video` multiplies float frames by 255: given the "np" output it writes the decoded
    colours (to within its truncation); the old uint8 output came out as garbage (x * 255 wraps)."""
    written = []

    class Writer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def append_data(self, frame):
            written.append(frame)

    fake = types.SimpleNamespace(get_writer=lambda *a, **k: Writer(),
                                 plugins=types.SimpleNamespace(ffmpeg=types.SimpleNamespace(get_exe=lambda: "ffmpeg")))
    monkeypatch.setitem(sys.modules, "imageio", fake)  # no ffmpeg here: capture what would be encoded
    monkeypatch.setattr(export_utils, "is_imageio_available", lambda: True)

    export_utils.export_to_video(_call(tiny_pipeline, output_type="np").frames[0], "unused.mp4")
    expected = to_uint8(decode_frames(tiny_pipeline.vae, _call(tiny_pipeline, output_type="latent").frames))[0]
    got = np.stack(written)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1  # truncation instead of rounding, nothing more


def test_each_output_type_follows_the_video_processor(tiny_pipeline):
    np_, pt, pil = (_call(tiny_pipeline, output_type=t).frames for t in ("np", "pt", "pil"))
    assert np_.shape == (1, FRAMES, 16, 16, 3) and np_.dtype == np.float32 and 0 <= np_.min() and np_.max() <= 1
    assert pt.shape == (1, FRAMES, 3, 16, 16) and np.array_equal(pt.permute(0, 1, 3, 4, 2).numpy(), np_)
    assert len(pil) == 1 and len(pil[0]) == FRAMES and np.array_equal(np.asarray(pil[0][1]), numpy_to_uint8(np_[0, 1]))


def test_latents_make_the_videos_independent_of_the_generator(tiny_pipeline):
    shape = (1, 4, FRAMES, 8, 8)
    latents, image_latents = torch.randn(shape, generator=_gen(9)), torch.randn(1, 4, 8, 8, generator=_gen(10))
    a = _call(tiny_pipeline, 0, latents=latents, image_latents=image_latents, output_type="latent").frames
    b = _call(tiny_pipeline, 1, latents=latents, image_latents=image_latents, output_type="latent").frames
    c = _call(tiny_pipeline, 1, output_type="latent").frames
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 3, 8, 8\), got \(1, 4, 2, 8, 8\)"):
        _call(tiny_pipeline, latents=latents[:, :, :2])


def test_callback_on_step_end_sees_every_step_and_can_replace_the_latents(tiny_pipeline):
    seen = []

    def record(pipe, i, t, tensors):
        seen.append((i, int(t), tuple(tensors)))
        return {}

    out = _call(tiny_pipeline, num_inference_steps=3, callback_on_step_end=record, output_type="latent").frames
    timesteps = tiny_pipeline.scheduler.timesteps.tolist()
    assert seen == [(i, t, ("latents",)) for i, t in enumerate(timesteps)]  # the video stage's every step

    def zero_last(pipe, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 2 else {}

    zeroed = _call(tiny_pipeline, num_inference_steps=3, callback_on_step_end=zero_last, output_type="latent").frames
    assert out.abs().max() > 0 and zeroed.abs().max() == 0
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs must be among \['latents'\], got \['noise'\]"):
        _call(tiny_pipeline, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise"])


def test_num_videos_per_prompt_gives_each_prompt_its_videos_in_a_row(tiny_pipeline):
    prompts = ["a red circle moving right", "a blue square moving up"]
    out = _call(tiny_pipeline, prompt=prompts, num_videos_per_prompt=2, generator=[_gen(s) for s in range(4)])
    assert out.frames.shape == (4, FRAMES, 16, 16, 3) and out.images.shape == (4, 16, 16, 3)
    alone = _call(tiny_pipeline, 2, prompt=prompts[1])  # video 2 is the second prompt's first, with noise 2
    assert np.array_equal(numpy_to_uint8(out.frames[2]), numpy_to_uint8(alone.frames[0]))
    assert not np.array_equal(out.frames[0], out.frames[1])
    with pytest.raises(ValueError, match="num_videos_per_prompt must be an integer >= 1, got 0"):
        _call(tiny_pipeline, num_videos_per_prompt=0)


def test_prompt_embeds_reproduce_the_prompt(tiny_pipeline):
    negative, positive = encode_prompt(tiny_pipeline.tokenizer, tiny_pipeline.text_encoder, ["", PROMPT], "cpu").chunk(2)
    by_text = _call(tiny_pipeline, output_type="latent").frames
    by_embeds = _call(tiny_pipeline, prompt=None, prompt_embeds=positive, negative_prompt_embeds=negative,
                      output_type="latent").frames
    assert torch.equal(by_text, by_embeds)
    with pytest.raises(ValueError, match="pass exactly one of prompt and prompt_embeds, got both"):
        _call(tiny_pipeline, prompt_embeds=positive)


def test_vae_slicing_decodes_one_frame_at_a_time_to_the_same_frames(tiny_pipeline, monkeypatch):
    batches = []
    decoder = tiny_pipeline.vae.decoder
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda z, *a, **k: batches.append(len(z)) or forward(z, *a, **k))
    whole = _call(tiny_pipeline, output_type="pt").frames
    whole_batches, batches[:] = list(batches), []
    tiny_pipeline.enable_vae_slicing()
    try:
        sliced = _call(tiny_pipeline, output_type="pt").frames
    finally:
        tiny_pipeline.disable_vae_slicing()
    assert max(whole_batches) == FRAMES and set(batches) == {1}  # the video's frames in one call, then one each
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=0)


def test_every_call_frees_the_model_hooks(tiny_pipeline, monkeypatch):
    calls = []
    for cls in {type(tiny_pipeline), type(tiny_pipeline.text_to_image), type(tiny_pipeline.image_to_video)}:
        monkeypatch.setattr(cls, "maybe_free_model_hooks", lambda self: calls.append(type(self).__name__))
    _call(tiny_pipeline)
    assert calls == ["EmuTextToImagePipeline", "EmuImageToVideoPipeline", "EmuVideoPipeline"]


def _frozen_direct_text_to_video(pipe, prompts, num_inference_steps, generator, guidance_text=7.5):
    """scripts/ablations.py's `DirectTextToVideo` loop as it was (frozen here when it was deleted): text ->
    video from an all-zero condition and mask, guidance X(∅) + w_p·(X(p) − X(∅)); returns the latents."""
    video = pipe.image_to_video
    side = video.default_size // vae_scale_factor(pipe.vae)
    shape = (len(prompts), pipe.vae.config.latent_channels, video.config.default_num_frames, side, side)
    conditioning, mask = known_frames_conditioning(torch.zeros(shape), torch.zeros(shape[0], shape[2], dtype=torch.bool))
    cond_2, mask_2 = torch.cat([conditioning] * 2), torch.cat([mask] * 2)
    text_2 = encode_prompt(pipe.tokenizer, pipe.text_encoder, [""] * len(prompts) + prompts, "cpu")
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps)
    latents = randn_tensor(shape, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        x_none, x_text = pipe.unet(x, t, text_2, conditioning=cond_2, conditioning_mask=mask_2).sample.chunk(2)
        guided = x_none + guidance_text * (x_text - x_none)
        latents = scheduler.step(guided, t, latents, **step_kwargs(scheduler, generator)).prev_sample
    return latents


def test_image_to_video_with_no_image_is_the_direct_arms_text_to_video(tiny_pipeline):
    prompts = ["a red circle moving right", "a blue square moving up"]
    with torch.no_grad():
        old = _frozen_direct_text_to_video(tiny_pipeline, prompts, 3, [_gen(3), _gen(4)])
    new = tiny_pipeline.image_to_video(None, prompts, num_inference_steps=3, generator=[_gen(3), _gen(4)],
                                       output_type="latent")
    assert torch.equal(new.frames, old) and new.images is None


def test_interpolation_runs_at_its_own_step_count_unless_told(tiny_pipeline, monkeypatch):
    """`generate --interpolate` sampled the interpolation stage at the video stage's 16 steps; it has its own 25."""
    pipe = EmuVideoPipeline(**tiny_pipeline.components | {"interpolation_unet": tiny_pipeline.unet})
    pipe.set_progress_bar_config(disable=True)
    steps = []
    monkeypatch.setattr(EmuInterpolationPipeline, "__call__",
                        lambda self, *a, **k: steps.append(k["num_inference_steps"]) or types.SimpleNamespace(frames=None, fps=16))
    _call(pipe, num_inference_steps=1, interpolate=2, output_type="latent")
    _call(pipe, num_inference_steps=1, interpolate=2, interpolation_num_inference_steps=3, output_type="latent")
    assert steps == [INTERPOLATION_STEPS, 3] and INTERPOLATION_STEPS == 25
