import random

import numpy as np
import pytest

from emuvideo.data.shapes import COLOURS, IMAGE_PAIRS, ShapeSpec, canonical_prompts, parse_caption, render_clip, sample_spec
from emuvideo.evaluation.judge import Judgement, judge_frame, judge_video, score

FPS, NUM_FRAMES = 8, 16
ATTRIBUTES = ("colour", "shape", "direction", "speed", "all")


def blur3x3(frames: np.ndarray) -> np.ndarray:
    padded = np.pad(frames.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = frames.shape[1:3]
    out = sum(padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)) / 9
    return np.rint(out).astype(np.uint8)


def add_noise(frames: np.ndarray, rng: np.random.Generator, sigma: float = 10.0) -> np.ndarray:
    return np.clip(np.rint(frames + rng.normal(0.0, sigma, frames.shape)), 0, 255).astype(np.uint8)


def offset_colour(frames: np.ndarray, rng: np.random.Generator, amount: float = 15.0) -> np.ndarray:
    """Shift every channel of the whole clip by its own random offset in [-amount, amount] (+-amount at least once)."""
    offsets = rng.uniform(-amount, amount, size=3)
    offsets[rng.integers(3)] = amount * rng.choice([-1.0, 1.0])
    return np.clip(frames + offsets, 0, 255).astype(np.uint8)


DEGRADATIONS = {
    "clean": lambda frames, rng: frames,
    "noise": add_noise,
    "blur": lambda frames, rng: blur3x3(frames),
    "colour_offset": offset_colour,
    "all_three": lambda frames, rng: add_noise(offset_colour(blur3x3(frames), rng), rng),
}


def accuracy(degradation: str, repeats: int, seed: int) -> dict[str, float]:
    """Fraction of freshly rendered clips of every canonical prompt that the judge gets right."""
    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    results = []
    for _ in range(repeats):
        for target in canonical_prompts():
            spec = sample_spec(rng, NUM_FRAMES, FPS, **{k: target[k] for k in ("colour", "shape", "direction", "speed")})
            frames = DEGRADATIONS[degradation](render_clip(spec, NUM_FRAMES, FPS), noise_rng)
            results.append(score(judge_video(frames, FPS), target))
    return {k: float(np.mean([r[k] for r in results])) for k in ATTRIBUTES}


def test_judge_is_right_on_clean_clips_of_all_canonical_prompts():
    acc = accuracy("clean", repeats=2, seed=0)  # 240 clips: random sizes and positions
    assert min(acc.values()) >= 0.99, acc


@pytest.mark.parametrize("degradation", ["noise", "blur", "colour_offset", "all_three"])
def test_judge_survives_mild_degradation(degradation):
    acc = accuracy(degradation, repeats=1, seed=1)  # 120 clips
    assert min(acc.values()) >= 0.99, acc


@pytest.mark.parametrize("fps, num_frames", [(4, 8), (16, 16), (24, 24)])
def test_speed_is_judged_at_the_reference_frame_rate(fps, num_frames):
    # The same "slowly"/"quickly" is a different pixel displacement at each fps.
    rng = random.Random(fps)
    for speed in ("slowly", "quickly"):
        for direction in ("left", "right", "up", "down"):
            spec = sample_spec(rng, num_frames, fps, direction=direction, speed=speed)
            j = judge_video(render_clip(spec, num_frames, fps), fps)
            assert (j.direction, j.speed) == (direction, speed)
            assert j.displacement_at_reference_fps == pytest.approx({"slowly": 1.0, "quickly": 2.5}[speed], abs=0.05)


@pytest.mark.parametrize("pair", IMAGE_PAIRS)
def test_judge_frame(pair):
    rng = random.Random(str(pair))
    for _ in range(3):
        spec = sample_spec(rng, 1, FPS, colour=pair[0], shape=pair[1])
        assert judge_frame(render_clip(spec, 1)[0]) == pair


def test_diagnostics():
    spec = ShapeSpec("green", "square", "down", "quickly", 16.0, 30.0, 10.0)
    j = judge_video(render_clip(spec, 8, FPS), FPS)
    assert j.num_frames == j.num_object_frames == 8
    np.testing.assert_allclose(j.centroids[:, 0], 30.0, atol=0.05)
    np.testing.assert_allclose(j.centroids[:, 1], 10.0 + 2.5 * np.arange(8), atol=0.05)
    assert j.velocity == pytest.approx((0.0, 2.5), abs=0.02)
    assert j.shape_votes == {"square": 8} and j.colour_votes == {"green": 8}


def test_other_resolutions_are_judged_in_world_pixels():
    # A 128 px render of a slow clip moves 2 px per frame, which is still "slowly" in the 64 px world.
    spec = ShapeSpec("yellow", "triangle", "left", "slowly", 18.0, 50.0, 30.0)
    j = judge_video(render_clip(spec, 16, FPS, size=128), FPS)
    assert (j.colour, j.shape, j.direction, j.speed) == ("yellow", "triangle", "left", "slowly")
    j = judge_video(render_clip(spec, 16, FPS, size=48), FPS)
    assert (j.colour, j.shape, j.direction, j.speed) == ("yellow", "triangle", "left", "slowly")


def test_all_black_and_noise_only_videos_have_no_object():
    target = canonical_prompts()[0]
    black = np.zeros((NUM_FRAMES, 64, 64, 3), dtype=np.uint8)
    noise = add_noise(black, np.random.default_rng(0))
    for frames in (black, noise):
        j = judge_video(frames, FPS)
        assert (j.colour, j.shape, j.direction, j.speed) == (None, None, None, None)
        assert j.num_object_frames == 0
        assert not any(score(j, target)[k] for k in ("colour", "shape", "direction", "all"))
        assert judge_frame(frames[0]) == (None, None)


def test_static_object_has_no_direction():
    frame = render_clip(ShapeSpec("red", "circle", "left", "slowly", 16.0, 32.0, 32.0), 1)
    j = judge_video(np.repeat(frame, NUM_FRAMES, axis=0), FPS)
    assert (j.colour, j.shape, j.direction, j.speed) == ("red", "circle", None, None)
    assert j.displacement_at_reference_fps == pytest.approx(0.0, abs=1e-6)


def test_object_visible_in_too_few_frames_is_not_judged():
    frames = render_clip(ShapeSpec("blue", "square", "right", "slowly", 16.0, 20.0, 32.0), NUM_FRAMES)
    frames[: NUM_FRAMES // 2 + 1] = 0  # object in fewer than half the frames
    j = judge_video(frames, FPS)
    assert j.colour is None and j.direction is None


def test_off_palette_colour_is_not_named():
    frame = render_clip(ShapeSpec("white", "square", "left", "slowly", 18.0, 32.0, 32.0), 1)[0].astype(np.float64)
    purple = np.rint(frame / 235.0 * np.array([150.0, 40.0, 200.0])).astype(np.uint8)  # between red and blue
    assert judge_frame(purple) == (None, "square")


def test_score():
    j = Judgement("red", "circle", "left", "quickly")
    assert score(j, canonical_prompts()[1]) == {"colour": True, "shape": True, "direction": True, "speed": True, "all": True}
    assert score(j, canonical_prompts()[0])["speed"] is False  # "... slowly"
    # A prompt that leaves the speed out accepts either speed.
    assert score(j, parse_caption("a red ball drifting to the left"))["all"] is True
    assert score(Judgement("red", "circle", None, None), parse_caption("a red ball drifting left"))["all"] is False
    with pytest.raises(ValueError, match="missing"):
        score(j, {"colour": "red"})


def test_input_validation():
    with pytest.raises(ValueError, match="uint8"):
        judge_video(np.zeros((4, 64, 64, 3), dtype=np.float32), FPS)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        judge_video(np.zeros((4, 64, 64), dtype=np.uint8), FPS)
    with pytest.raises(ValueError, match="fps"):
        judge_video(np.zeros((4, 64, 64, 3), dtype=np.uint8), 0)
    assert set(COLOURS) == {"red", "green", "blue", "yellow", "white"}
