"""Known frames anywhere (issue 9): one conditioning for training and sampling, first -> last videos,
keyframes, and the interpolation model's windows, noise augmentation and joins."""

import numpy as np
import pytest
import torch

from emuvideo.config import load_config, parse_overrides
from emuvideo.models.conditioning import KnownFrames, keyframe_indices, known_frames_conditioning
from emuvideo.pipelines.common import encode_frames, numpy_to_uint8, preprocess_image
from emuvideo.pipelines.interpolation import EmuInterpolationPipeline, window_starts
from emuvideo.training.config import TrainConfig
from emuvideo.training.losses import interpolation_windows, video_training_loss

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, FRAMES = 16, 5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _image(seed):
    return (np.random.default_rng(seed).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)


def _cfg(*pairs):
    return load_config(TrainConfig, None, parse_overrides(list(pairs)))


# ---------------------------------------------------------------------------------------------- conditioning
def test_conditioning_holds_the_known_frames_and_zeros_elsewhere():
    latents = torch.randn(3, 4, 6, 2, 2)
    known = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.bool)
    cond, mask = known_frames_conditioning(latents, known)
    assert mask.shape == (3, 1, 6, 2, 2)
    for b in range(3):
        for t in range(6):
            expected = latents[b, :, t] if known[b, t] else torch.zeros(4, 2, 2)
            assert torch.equal(cond[b, :, t], expected)
            assert bool((mask[b, 0, t] == float(known[b, t])).all())
    with pytest.raises(ValueError, match="known must be"):
        known_frames_conditioning(latents, known[:, :5])


def test_known_frame_modes_are_drawn_as_configured():
    torch.manual_seed(0)
    only_last = KnownFrames({"first_last": 1.0}).draw(50, 8)
    assert only_last.sum(1).eq(2).all() and only_last[:, 0].all() and only_last[:, -1].all()
    keyframes = KnownFrames({"keyframes": 1.0}, max_keyframes=3).draw(400, 8)
    counts = keyframes.sum(1) - 1
    assert keyframes[:, 0].all() and counts.min() == 1 and counts.max() == 3
    mixed = KnownFrames({"first": 0.5, "first_last": 0.5}).draw(2000, 8)
    share_last = mixed[:, -1].float().mean().item()
    assert 0.45 < share_last < 0.55  # the probabilities are honoured
    with pytest.raises(ValueError, match="modes must be among"):
        KnownFrames({"middle": 1.0})


def test_training_shows_the_unet_the_first_and_last_frame(monkeypatch):
    """video_training_loss builds its conditioning with the same function the pipeline uses."""
    seen = {}

    class Out:
        def __init__(self, x):
            self.sample = x

    def model(noisy, t, text, conditioning, conditioning_mask):
        seen["cond"], seen["mask"] = conditioning, conditioning_mask
        return Out(noisy * 0)

    from emuvideo.schedules import make_train_scheduler

    latents = torch.randn(4, 4, 6, 2, 2)
    cfg = _cfg("known_frames.first=0", "known_frames.first_last=1", "image_dropout=0")
    video_training_loss(model, make_train_scheduler("v_prediction"), latents, torch.randn(4, 3, 8), cfg)
    assert seen["mask"][:, 0, :, 0, 0].tolist() == [[1, 0, 0, 0, 0, 1]] * 4
    assert torch.equal(seen["cond"][:, :, [0, 5]], latents[:, :, [0, 5]])


# ---------------------------------------------------------------------------------------------- pipelines
def test_last_image_and_keyframes_are_pinned_where_given(tiny_pipeline):
    """The video passes through each given image at its index (its latent exactly), and only there."""
    pipe = tiny_pipeline.image_to_video
    first, last, middle = _image(0), _image(1), _image(2)

    def latent(im):
        return encode_frames(pipe.vae, preprocess_image(im, SIZE, SIZE)[0][:, :, None])[:, :, 0]

    out = pipe(first, "a red square", num_frames=FRAMES, num_inference_steps=2, generator=_gen(0),
               last_image=last, keyframes={2: middle}, output_type="latent").frames
    for index, im in ((0, first), (FRAMES - 1, last), (2, middle)):
        torch.testing.assert_close(out[:, :, index], latent(im), atol=1e-5, rtol=0)
    assert (out[:, :, 1] - latent(middle)).abs().max() > 1e-2


def test_first_to_last_frames_reach_the_unet_with_their_mask(tiny_pipeline, monkeypatch):
    calls = []
    real = tiny_pipeline.unet.forward

    def spy(sample, t, text, conditioning=None, conditioning_mask=None, **kw):
        calls.append(conditioning_mask[:, 0, :, 0, 0].clone())
        return real(sample, t, text, conditioning=conditioning, conditioning_mask=conditioning_mask, **kw)

    monkeypatch.setattr(tiny_pipeline.unet, "forward", spy)
    tiny_pipeline.image_to_video(_image(0), "x", num_frames=FRAMES, num_inference_steps=1, last_image=_image(1),
                                 output_type="latent")
    # the three guidance terms: X(∅) knows nothing, X(I) and X(I, p) know the first and the last frame
    assert calls[0].tolist() == [[0] * FRAMES, [1, 0, 0, 0, 1], [1, 0, 0, 0, 1]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(keyframes={5: None}), "keyframe index must be an integer in"),
    (dict(keyframes={-6: None}), "keyframe index must be an integer in"),
    (dict(keyframes={0: None}), "frame 0 is given twice"),
    (dict(keyframes={4: None}, last_image="L"), "frame 4 is given twice"),
    (dict(keyframes={"2": None}), "keyframe index must be an integer"),
    (dict(last_image=["a", "b"]), "got 2 images for frame -1 for 1 prompts"),
])
def test_bad_keyframes_raise_naming_the_value(tiny_pipeline, kwargs, message):
    kwargs = {k: ({i: _image(3) for i in v} if k == "keyframes" else _image(3) if v == "L" else v)
              for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.image_to_video(_image(0), "x", num_frames=FRAMES, num_inference_steps=1, **kwargs)


# ---------------------------------------------------------------------------------------------- interpolation
@pytest.mark.parametrize("keys, per_window", [(16, 5), (5, 5), (3, 5), (9, 3), (10, 4)])
def test_windows_cover_every_key_frame_and_share_their_ends(keys, per_window):
    starts = window_starts(keys, per_window)
    covered = set()
    for s in starts:
        covered |= set(range(s, min(s + per_window, keys)))
        assert s + min(per_window, keys) <= keys
    assert covered == set(range(keys))
    assert all(b - a <= per_window - 1 for a, b in zip(starts, starts[1:]))  # neighbours share a key frame


def test_training_windows_are_strided_clips_that_know_every_factor_th_frame():
    cfg = _cfg("data.fps=32", "data.num_frames=17", "interpolation.enabled=true", "interpolation.factors=[2, 4]",
               "interpolation.window=9")
    frame_ids = torch.arange(17, dtype=torch.float).view(1, 1, 17, 1, 1).expand(64, 4, 17, 2, 2)
    torch.manual_seed(0)
    windows, known = interpolation_windows(frame_ids, cfg)
    ids = windows[:, 0, :, 0, 0]
    steps = ids.diff(dim=1)
    assert set(steps.unique().tolist()) == {1.0, 2.0}  # 32 fps clips: stride 2 for 8 -> 16 fps, 1 for 8 -> 32 fps
    for row_steps, row_known in zip(steps, known):
        factor = {2.0: 2, 1.0: 4}[row_steps[0].item()]
        assert (row_steps == row_steps[0]).all()
        assert row_known.tolist() == [i % factor == 0 for i in range(9)]  # key frames every factor-th


def _interpolation(tiny_pipeline, **config):
    return EmuInterpolationPipeline(tiny_pipeline.vae, tiny_pipeline.text_encoder, tiny_pipeline.tokenizer,
                                    tiny_pipeline.unet, tiny_pipeline.scheduler, **config)


def test_interpolation_keeps_key_frames_and_multiplies_the_frame_count(tiny_pipeline):
    pipe = _interpolation(tiny_pipeline, window=9, factors=(2, 4))
    pipe.set_progress_bar_config(disable=True)
    video = np.stack([_image(i) for i in range(7)])  # 7 key frames: windows [0-4] and [2-6] at factor 2
    for factor in (2, 4):
        out = pipe(video, "a red square", factor=factor, num_inference_steps=2, generator=_gen(0), fps=8)
        frames = numpy_to_uint8(out.frames[0])  # "np" is float in [0, 1]; its bytes are the key frames'
        assert frames.shape == ((7 - 1) * factor + 1, SIZE, SIZE, 3) and out.fps == 8 * factor
        assert np.array_equal(frames[::factor], video)  # the key frames, exactly as given
    # a list of generators, one per video, gives each video the noise it gets alone
    both = pipe(np.stack([video, video[::-1]]), "x", factor=2, num_inference_steps=1,
                generator=[_gen(0), _gen(1)]).frames
    alone = pipe(video[::-1], "x", factor=2, num_inference_steps=1, generator=_gen(1)).frames
    assert np.array_equal(numpy_to_uint8(both[1]), numpy_to_uint8(alone[0]))  # as bytes (batching moves floats ~1e-7)
    with pytest.raises(ValueError, match="factor must be one of"):
        pipe(video, factor=3)
    with pytest.raises(ValueError, match="works on 16x16 clips, got 8x8"):
        pipe(video[:, :8, :8], factor=2)


def test_interpolation_conditions_on_noise_augmented_zero_interleaved_keys(tiny_pipeline, monkeypatch):
    """The U-Net sees every factor-th frame known, noised to t = noise_aug_t (paper §3.2), zeros between."""
    pipe = _interpolation(tiny_pipeline, window=5, factors=(2,), noise_aug_t=100)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    real = tiny_pipeline.unet.forward

    def spy(sample, t, text, conditioning=None, conditioning_mask=None, **kw):
        seen.append((conditioning.clone(), conditioning_mask.clone()))
        return real(sample, t, text, conditioning=conditioning, conditioning_mask=conditioning_mask, **kw)

    monkeypatch.setattr(tiny_pipeline.unet, "forward", spy)
    video = np.stack([_image(i) for i in range(3)])
    pipe(video, "x", factor=2, num_inference_steps=1, generator=_gen(0), output_type="latent")
    cond, mask = seen[0]
    assert mask[0, 0, :, 0, 0].tolist() == [1, 0, 1, 0, 1]
    assert cond[:, :, [1, 3]].abs().max() == 0
    keys = encode_frames(pipe.vae, torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    noisy = cond[:, :, [0, 2, 4]]
    gap = (noisy - keys).pow(2).mean().sqrt().item()
    alpha = pipe.scheduler.alphas_cumprod[100].sqrt().item()
    expected = ((1 - alpha) ** 2 * keys.pow(2).mean() + (1 - alpha ** 2)).sqrt().item()
    assert 0.5 * expected < gap < 1.5 * expected  # noised to t = 100: neither clean nor pure noise


def test_keyframe_indices():
    assert keyframe_indices(5, 2) == [0, 2, 4, 6, 8]
    assert keyframe_indices(3, 4) == [0, 4, 8]


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def interp_folder(tmp_path_factory, tiny_pipeline):
    """A tiny model folder with an (untrained) interpolation_unet: a copy of its video U-Net."""
    import copy

    from emuvideo.pipelines import EmuVideoPipeline

    folder = tmp_path_factory.mktemp("tiny-interp")
    components = {**tiny_pipeline.components, "interpolation_unet": copy.deepcopy(tiny_pipeline.unet)}
    EmuVideoPipeline(**components, interpolation={"window": 5, "factors": [2], "noise_aug_t": 100}).save_pretrained(folder)
    return folder


def _clip(path, frames=5, size=SIZE):
    from emuvideo.utils.video import write_video

    write_video(path, np.stack([_image(i)[:size, :size] for i in range(frames)]), 8)
    return path


def _fails(capsys, argv, *words):
    from emuvideo.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_interpolate_cli_writes_factor_times_the_frames(tmp_path, interp_folder, capsys):
    from emuvideo.cli import main
    from emuvideo.utils.video import read_frames

    out = tmp_path / "out.mp4"
    code = main(["interpolate", str(_clip(tmp_path / "in.mp4")), "--factor", "2", "--output", str(out),
                 "--model", str(interp_folder), "--steps", "1", "-q"])
    assert code == 0, capsys.readouterr().err
    frames, fps = read_frames(out)
    assert len(frames) == 9 and round(fps) == 16
    from emuvideo.utils.video import save_image

    first, last = tmp_path / "first.png", tmp_path / "last.png"
    save_image(first, _image(0)), save_image(last, _image(1))
    code = main(["animate", "--image", str(first), "--last-image", str(last), "--prompt", "x", "--num-frames", "4",
                 "--interpolate", "2", "--output", str(out), "--model", str(interp_folder), "--steps", "1", "-q"])
    assert code == 0, capsys.readouterr().err
    frames, fps = read_frames(out)
    assert len(frames) == 7 and round(fps) == 16


def test_interpolate_and_keyframe_bad_input_is_one_line_and_no_file(tmp_path, interp_folder, sd_folder, capsys):
    out = tmp_path / "out.mp4"
    clip = _clip(tmp_path / "in.mp4")
    _fails(capsys, ["interpolate", str(tmp_path / "none.mp4"), "--output", str(out)], "none.mp4", "no such file")
    _fails(capsys, ["interpolate", str(clip), "--factor", "3", "--output", str(out), "--model", str(interp_folder)],
           "--interpolate 3", "[2]")
    big = _clip(tmp_path / "big.mp4", size=SIZE)  # the right size; now a wrong one
    from emuvideo.utils.video import write_video

    write_video(big, np.zeros((4, 32, 32, 3), np.uint8), 8)
    _fails(capsys, ["interpolate", str(big), "--output", str(out), "--model", str(interp_folder)], "32x32", "16x16")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    _fails(capsys, ["interpolate", str(tmp_path / "junk.mp4"), "--output", str(out), "--model", str(interp_folder)],
           "junk.mp4")
    _fails(capsys, ["interpolate", str(clip), "--output", str(out), "--steps", "0"], "--steps")
    # a model without an interpolation model: refused before sampling, for generate and animate too
    _fails(capsys, ["interpolate", str(clip), "--output", str(out), "--model", str(sd_folder)], "no interpolation model")
    _fails(capsys, ["generate", "--prompt", "a red square", "--interpolate", "2", "--output", str(out),
                    "--model", str(sd_folder)], "no interpolation model")
    image = tmp_path / "first.png"
    from emuvideo.utils.video import save_image

    save_image(image, _image(0))
    _fails(capsys, ["animate", "--image", str(image), "--last-image", str(tmp_path / "nope.png"), "--prompt", "x",
                    "--output", str(out), "--model", str(interp_folder)], "nope.png")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
