"""The three pipelines on tiny models: shapes, conditioning, Emu Video's two-condition guidance, seeding,
loading an SD-style folder, and loud errors."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from emuvideo.models.video_unet import EmuVideoUNet
from emuvideo.pipelines import EmuImageToVideoPipeline, EmuTextToImagePipeline, EmuVideoPipeline
from emuvideo.pipelines.common import encode_frames, preprocess_image
from emuvideo.pipelines.loading import ModelNotFoundError, load_pipeline

FRAMES, SIZE = 3, 16  # the tiny pipeline: 16x16 pixels -> 8x8x4 latents


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture()
def unet_calls(tiny_pipeline, monkeypatch):
    """Record every video U-Net forward (arguments as passed) while still running the real model."""
    calls, forward = [], tiny_pipeline.unet.forward

    def recording(sample, timestep, encoder_hidden_states, conditioning=None, conditioning_mask=None, **kw):
        calls.append(dict(sample=sample, t=timestep, text=encoder_hidden_states, cond=conditioning, mask=conditioning_mask))
        return forward(sample, timestep, encoder_hidden_states, conditioning, conditioning_mask, **kw)

    monkeypatch.setattr(tiny_pipeline.unet, "forward", recording)
    return calls


def test_stages_share_modules_and_return_documented_shapes(tiny_pipeline):
    t2i, i2v = tiny_pipeline.text_to_image, tiny_pipeline.image_to_video
    assert isinstance(t2i, EmuTextToImagePipeline) and isinstance(i2v, EmuImageToVideoPipeline)
    assert t2i.unet is tiny_pipeline.image_unet and i2v.unet is tiny_pipeline.unet and i2v.vae is t2i.vae

    images = t2i(["a red square", "a blue circle"], num_inference_steps=1, generator=_gen(0)).images
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.float32  # diffusers' "np": float in [0, 1]

    out = tiny_pipeline("a red square", num_frames=FRAMES, num_inference_steps=1, generator=_gen(0), fps=5)
    assert out.frames.shape == (1, FRAMES, SIZE, SIZE, 3) and out.frames.dtype == np.float32
    assert out.images.shape == (1, SIZE, SIZE, 3) and out.fps == 5
    latent = i2v(_image(), "x", num_frames=FRAMES, num_inference_steps=1, output_type="latent").frames
    assert latent.shape == (1, 4, FRAMES, SIZE // 2, SIZE // 2)


def test_image_reaches_the_unet_as_frame_zero_of_the_conditioning(tiny_pipeline, unet_calls):
    pipe = tiny_pipeline.image_to_video
    images, prompts = [_image(1), _image(2)], ["a red square", "a blue circle"]
    pipe(images, prompts, num_frames=FRAMES, num_inference_steps=2, generator=_gen(0), output_type="latent")
    assert len(unet_calls) == 2  # one batched forward per step for all three guidance terms

    pixels = torch.cat([preprocess_image(im, SIZE, SIZE)[0] for im in images])
    image_latents = encode_frames(pipe.vae, pixels[:, :, None])[:, :, 0]  # (B, C, h, w)
    b = len(images)
    for call in unet_calls:
        cond, mask, text = call["cond"], call["mask"], call["text"]
        assert cond.shape == (3 * b, 4, FRAMES, 8, 8) and mask.shape == (3 * b, 1, FRAMES, 8, 8)
        none, image, full = cond.chunk(3)
        assert not none.any() and not mask[:b].any()  # X(∅): no image, no mask
        for branch in (image, full):  # X(I) and X(I, p): the image latent at frame 0, zeros after
            torch.testing.assert_close(branch[:, :, 0], image_latents)
            assert not branch[:, :, 1:].any()
        expected_mask = torch.zeros(b, 1, FRAMES, 8, 8)
        expected_mask[:, :, 0] = 1
        assert torch.equal(mask[b : 2 * b], expected_mask) and torch.equal(mask[2 * b :], expected_mask)
        # Text: empty prompt for X(∅) and X(I), the prompt only for X(I, p).
        assert torch.equal(text[:b], text[b : 2 * b]) and not torch.equal(text[b : 2 * b], text[2 * b :])
        # The same noisy latents go to all three branches.
        s = call["sample"].chunk(3)
        assert torch.equal(s[0], s[1]) and torch.equal(s[1], s[2])


@pytest.mark.parametrize("w_i, w_p", [(2.0, 7.5), (3.0, 0.5)])
def test_two_condition_guidance_arithmetic(tiny_pipeline, monkeypatch, w_i, w_p):
    pipe = tiny_pipeline.image_to_video
    g = torch.Generator().manual_seed(5)
    shape = (1, 4, FRAMES, 8, 8)
    x_none, x_image, x_full = (torch.randn(shape, generator=g) for _ in range(3))
    calls, step_inputs = [], []

    class Out:
        def __init__(self, sample):
            self.sample = sample

    def stub(sample, timestep, encoder_hidden_states, conditioning=None, conditioning_mask=None, **kw):
        calls.append(sample.shape[0])
        return Out(torch.cat([x_none, x_image, x_full]))

    real_step = pipe.scheduler.step

    def recording_step(model_output, t, latents, **kw):
        step_inputs.append(model_output.clone())
        return real_step(model_output, t, latents, **kw)

    monkeypatch.setattr(tiny_pipeline.unet, "forward", stub)
    monkeypatch.setattr(tiny_pipeline.scheduler, "step", recording_step)
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    pipe(image, "a red square", num_frames=FRAMES, num_inference_steps=3, guidance_image=w_i, guidance_text=w_p,
         generator=_gen(0), pin_known_frames=False, output_type="latent")

    assert calls == [3, 3, 3]  # one forward per step, the three terms batched
    expected = x_none + w_i * (x_image - x_none) + w_p * (x_full - x_image)
    assert len(step_inputs) == 3
    for got in step_inputs:
        torch.testing.assert_close(got, expected)


def test_same_seed_same_video_different_seed_different(tiny_pipeline):
    def run(seed):
        return tiny_pipeline("a red square", num_frames=FRAMES, num_inference_steps=1, generator=_gen(seed), output_type="pt")

    a, b, c = run(0), run(0), run(1)
    assert a.frames.shape == (1, FRAMES, 3, SIZE, SIZE) and a.frames.dtype == torch.float32  # (B, T, C, H, W)
    assert a.frames.min() >= 0 and a.frames.max() <= 1  # "pt" frames are in [0, 1], as diffusers' video pipelines
    assert torch.equal(a.frames, b.frames) and np.array_equal(a.images, b.images)
    assert (a.frames - c.frames).abs().max() > 1e-3


def test_sd_folder_loads_inflated(sd_folder):
    pipe = load_pipeline(str(sd_folder))
    assert isinstance(pipe, EmuVideoPipeline) and isinstance(pipe.unet, EmuVideoUNet)
    sd = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.image_unet, UNet2DConditionModel)
    saved = sd.unet.state_dict()
    for state in (pipe.image_unet.state_dict(), pipe.unet.spatial_state_dict()):
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    # The folder's ε-prediction objective carries over to the video sampler.
    assert pipe.scheduler.config.prediction_type == sd.scheduler.config.prediction_type == "epsilon"

    # The fresh video stage is the image stage on a static video.
    with torch.no_grad():
        latent, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
        text = pipe.text_encoder(pipe.tokenizer(["a red square"], return_tensors="pt").input_ids)[0]
        expected = pipe.image_unet(latent, t, text).sample
        video = pipe.unet(latent[:, :, None].expand(1, 4, FRAMES, 8, 8), t, text).sample
    assert all((video[:, :, f] - expected).abs().max() <= 1e-4 for f in range(FRAMES))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=18), "height must be a positive multiple of 4 for this model, got 18"),
        (dict(width=10), "width must be a positive multiple of 4 for this model, got 10"),
        (dict(height=2), "height must be a positive multiple of 4 for this model, got 2"),
        (dict(num_frames=0), "num_frames must be between 1 and 64, got 0"),
        (dict(num_frames=65), "num_frames must be between 1 and 64, got 65"),
        (dict(num_inference_steps=0), "num_inference_steps must be >= 1, got 0"),
    ],
)
def test_bad_sizes_raise_naming_the_value(tiny_pipeline, kwargs, message):
    kwargs = {"num_frames": FRAMES, "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError) as info:
        tiny_pipeline.image_to_video(_image(), "a red square", **kwargs)
    assert str(info.value) == message


def test_bad_prompts_raise(tiny_pipeline):
    for prompt in ("", "   ", []):
        with pytest.raises(ValueError, match="prompt"):
            tiny_pipeline.text_to_image(prompt, num_inference_steps=1)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        tiny_pipeline.image_to_video([_image(), _image()], "a red square", num_frames=FRAMES)


def test_hub_id_offline_raises_one_line_naming_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    repo = "emuvideo-tests/no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(repo)
    message = str(info.value)
    assert repo in message and "\n" not in message


def test_local_paths_that_are_not_models_raise(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="weights.bin"):
        load_pipeline(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelNotFoundError, match="neither"):
        load_pipeline(str(tmp_path / "a" / "b" / "c"))


def test_pinned_known_frames_start_the_video_at_the_image(tiny_pipeline):
    """pin_known_frames: frame 0's latent ends as the image's latent exactly; without it, the model's own."""
    from emuvideo.pipelines.common import encode_frames, preprocess_image

    pipe = tiny_pipeline.image_to_video
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    pixels, _ = preprocess_image(image, SIZE, SIZE)
    expected = encode_frames(pipe.vae, pixels[:, :, None])[:, :, 0]

    def run(pin):
        return pipe(image, "a red square", num_frames=FRAMES, num_inference_steps=3, generator=_gen(0),
                    pin_known_frames=pin, output_type="latent").frames

    pinned, free = run(True), run(False)
    assert torch.allclose(pinned[:, :, 0], expected, atol=1e-6)
    assert (free[:, :, 0] - expected).abs().max() > 1e-3  # the untrained model does not copy it by itself
