"""Measuring interpolation (issue 9): PSNR / SSIM, the baselines, and the evaluation's parts
(emuvideo.evaluation.interpolation_eval, run by scripts/eval_interpolation.py)."""

import copy
import json
import random

import numpy as np
import pytest

from emuvideo.data.shapes import canonical_prompts, render_clip, sample_spec
from emuvideo.evaluation import interpolation_eval as interp_eval
from emuvideo.evaluation import interpolation_strip as strip
from emuvideo.evaluation.interpolation import (
    PSNR_CAP_DB,
    bootstrap_interval,
    ffmpeg_minterpolate,
    in_between_scores,
    linear_blend,
    psnr,
    repeat_frames,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_thread")

def _quick_clip(factor: int, keys: int = 5, seed: int = 3) -> np.ndarray:
    """A 64 px clip moving quickly (2.5 px per 8 fps frame), rendered at 8·factor fps: every factor-th frame a key."""
    spec = sample_spec(random.Random(seed), keys, 8, speed="quickly")
    return render_clip(spec, (keys - 1) * factor + 1, 8 * factor)


def _noisy(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, x.shape)
    return np.clip(x + noise, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------- metrics
def test_psnr_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == PSNR_CAP_DB
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255))  # MSE 1: 48.13 dB
    b = _noisy(a, 10)
    assert psnr(a, b) == psnr(b, a)
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a.astype(np.float32))


def test_ssim_is_one_on_itself_and_falls_with_noise():
    x = render_clip(sample_spec(random.Random(0), 1, 8), 1)[0]
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(x, _noisy(x, sigma)) for sigma in (2, 5, 10, 20, 40)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    y = _noisy(x, 10)
    assert ssim(x, y) == pytest.approx(ssim(y, x))


def test_ssim_hand_checked_on_flat_images():
    # Flat images: no variance or covariance, so SSIM = (2·μx·μy + C1) / (μx² + μy² + C1), C1 = (0.01·255)²;
    # grey (v, v, v) has luma v exactly. 100 vs 110: 22006.5025 / 22106.5025.
    a, b = np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 110, np.uint8)
    assert ssim(a, b) == pytest.approx(22006.5025 / 22106.5025, abs=1e-12)  # 0.995476...
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:10, :10], b[:10, :10])


def test_in_between_scores_skip_the_key_frames():
    truth = _quick_clip(2)
    frames = truth.copy()
    frames[::2] = 255 - frames[::2]  # the keys wrong, every in-between frame right
    assert in_between_scores(frames, truth, 2) == {"psnr": PSNR_CAP_DB, "ssim": pytest.approx(1.0)}


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(30, 2, 64)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high and high - low < 2
    assert bootstrap_interval(values) == (low, high)
    assert bootstrap_interval([5.0]) == (5.0, 5.0)


# ---------------------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("factor", [2, 4])
def test_baselines_shape_and_keys(factor):
    keys = _quick_clip(factor)[::factor]
    for frames in (linear_blend(keys, factor), repeat_frames(keys, factor)):
        assert frames.shape == ((len(keys) - 1) * factor + 1, 64, 64, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames[::factor], keys)
    rep = repeat_frames(keys, factor)
    for n in range(len(rep)):
        np.testing.assert_array_equal(rep[n], keys[n // factor])


def test_linear_blend_exact_on_a_linear_signal():
    # Every pixel changes linearly in time: key i = base + 12·i, so frame n at factor 4 is base + 3·n exactly.
    base = np.random.default_rng(0).integers(0, 100, (6, 6, 3))
    keys = np.stack([base + 12 * i for i in range(5)]).astype(np.uint8)
    frames = linear_blend(keys, 4)
    np.testing.assert_array_equal(frames, np.stack([base + 3 * n for n in range(17)]).astype(np.uint8))
    with pytest.raises(ValueError, match="at least 2"):
        linear_blend(keys[:1], 4)


@pytest.mark.parametrize("factor", [2, 4])
def test_minterpolate_is_aligned(factor):
    truth = _quick_clip(factor)
    keys = truth[::factor]
    frames = ffmpeg_minterpolate(keys, factor, 8)
    assert frames.shape == truth.shape and frames.dtype == np.uint8
    # Output i·factor is key i (through RGB -> YUV 4:4:4 -> RGB, not bit-exact), and of all the true frames the
    # one it is nearest is its own: an output shifted by a frame would match a neighbour.
    for i, key in enumerate(keys):
        assert psnr(frames[i * factor], key) >= 40
        assert np.argmax([psnr(frames[i * factor], t) for t in truth]) == i * factor
    # It moves the object: its in-betweens beat repeating the previous key on a quick clip.
    repeated = repeat_frames(keys, factor)
    assert in_between_scores(frames, truth, factor)["psnr"] > in_between_scores(repeated, truth, factor)["psnr"] + 3


def test_minterpolate_refuses_small_frames():
    with pytest.raises(ValueError, match="at least 32x32"):
        ffmpeg_minterpolate(np.zeros((3, 16, 16, 3), np.uint8), 2, 8)


# ---------------------------------------------------------------------------------------------- the evaluation
@pytest.fixture(scope="module")
def stand_in(tiny_pipeline):
    """The tiny pipeline with an untrained interpolation model (a copy of its video U-Net); the shared fixture
    itself is not touched."""
    from emuvideo.pipelines import EmuVideoPipeline

    components = {**tiny_pipeline.components, "interpolation_unet": copy.deepcopy(tiny_pipeline.unet)}
    pipe = EmuVideoPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_in_between_part_is_per_clip_deterministic(stand_in):
    interp = stand_in.interpolation
    specs = interp_eval.held_back_specs(2, interp_eval.IN_BETWEEN_SEED, 3)
    methods = ("model", "linear blend", "repetition")  # minterpolate needs 32 px; the tiny model is 16
    kwargs = dict(factors=[2, 4], num_keys=3, steps=1, seed=0, methods=methods, progress=False)
    one = interp_eval.evaluate_in_between(interp, specs, batch_size=1, **kwargs)
    two = interp_eval.evaluate_in_between(interp, specs, batch_size=2, **kwargs)
    assert one["rows"] == two["rows"]  # a clip's noise is its own, whatever the batch
    assert [(s["factor"], s["method"]) for s in one["summary"]] == [(f, m) for f in (2, 4) for m in methods]
    for s in one["summary"]:
        assert s["n"] == 2 and s["psnr"]["low"] <= s["psnr"]["mean"] <= s["psnr"]["high"]


def test_autoencoder_ceiling_is_the_round_trip_with_the_given_keys(stand_in):
    from emuvideo.evaluation.autoencoder import reconstruct

    interp = stand_in.interpolation
    spec = interp_eval.held_back_spec(interp_eval.IN_BETWEEN_SEED, 0, 3)
    truth = interp_eval.render_dense(spec, 3, 4, interp.size)  # 9 frames, keys 0, 4, 8
    out = interp_eval.autoencoder_round_trip(interp.vae, truth, 4)
    assert out.shape == truth.shape and out.dtype == np.uint8
    assert np.array_equal(out[::4], truth[::4])  # the keys as given
    in_between = np.ones(len(truth), bool)
    in_between[::4] = False
    assert np.array_equal(out[in_between], reconstruct(interp.vae, truth)[in_between])
    assert not np.array_equal(out[in_between], truth[in_between])  # an untrained VAE does change them


def test_keyframes_and_verdicts_and_run(stand_in):
    specs = interp_eval.held_back_specs(2, interp_eval.KEYFRAME_SEED, 4)
    keyframes = interp_eval.evaluate_keyframes(stand_in, specs, steps=1, seed=0, num_frames=4, progress=False)
    assert len(keyframes["rows"]) == 2 and set(keyframes["summary"]) == {"first + last", "first only"}
    first = keyframes["summary"]["first + last"]["first"]
    assert first["min"] <= first["mean"] and first["at_least_30db"]["n"] == 2
    assert "| first + last | last |" in interp_eval.keyframe_table(keyframes["summary"])

    prompts = canonical_prompts()[:2]
    verdicts = interp_eval.evaluate_verdicts(stand_in, prompts, steps=1, seed=0, progress=False)
    assert [r["prompt"] for r in verdicts["rows"]] == [p["prompt"] for p in prompts]
    row = verdicts["rows"][0]
    assert row["unchanged"]["both"] == (row["before"]["direction"] == row["after"]["direction"]
                                        and row["before"]["speed"] == row["after"]["speed"])
    assert verdicts["summary"]["unchanged"]["both"]["n"] == 2

    config = interp_eval.InterpolationEvalConfig(clips=0, keyframe_clips=1, prompts_limit=1, steps=1, gif=None)
    printed = []
    result = interp_eval.evaluate_interpolation(stand_in, config, progress=False, meta={"command": "x"},
                                           echo=printed.append)
    assert {"keyframes", "verdicts"} <= set(result) and "in_between" not in result and "strip" not in result
    assert result["meta"]["seconds"] >= 0 and result["meta"]["command"] == "x"
    assert len(printed) == 2 and "| first + last | last |" in printed[0] and "unchanged both" in printed[1]
    json.dumps(result, allow_nan=False)  # what --json writes is plain JSON


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        interp_eval.InterpolationEvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="prompts_limit must be >= 0, got -1"):
        interp_eval.InterpolationEvalConfig(prompts_limit=-1)


def test_strip_pictures():
    from emuvideo.evaluation.interpolation import BASELINES

    truth = _quick_clip(4, keys=3)
    keys = truth[::4]
    panels = {"ground truth": truth, **{m: f(keys, 4, 8) for m, f in BASELINES.items()}}
    video = strip.strip_video(panels, 4)
    assert video.shape[0] == 9 and video.shape[2] == 4 * 128 + 3 * strip.GAP
    still = strip.filmstrip(panels, 4)
    assert still.ndim == 3 and still.shape[0] == 4 * (128 + strip.LABEL_HEIGHT) + 3 * strip.GAP
