import random

import numpy as np
import pytest
import torch

from emuvideo.data.motion import frame_differences, motion_score, select_high_motion
from emuvideo.data.shapes import SHAPES, ShapesDataset, ShapeSpec, render_clip, sample_spec


def clip(speed: str, shape: str = "square", seed: int = 0, size: int = 64) -> np.ndarray:
    spec = sample_spec(random.Random(seed), 16, 8, shape=shape, colour="green", direction="right", speed=speed)
    return render_clip(spec, 16, 8, size=size)


def static_clip() -> np.ndarray:
    frame = render_clip(ShapeSpec("red", "circle", "left", "slowly", 18.0, 32.0, 32.0), 1)
    return np.repeat(frame, 16, axis=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_quick_motion_scores_higher_than_slow(shape):
    for seed in range(3):
        slow, quick = motion_score(clip("slowly", shape, seed)), motion_score(clip("quickly", shape, seed))
        assert 0 < slow < quick
        assert quick > 1.8 * slow  # 2.5x the displacement


def test_static_clip_scores_zero():
    assert motion_score(static_clip()) == 0.0


@pytest.mark.parametrize("flash_at", [0, 7, 15])
def test_a_single_flash_or_cut_does_not_make_a_static_clip_high_motion(flash_at):
    frames = static_clip()
    frames[flash_at] = 255  # one white frame
    flashing = motion_score(frames)
    slow = motion_score(clip("slowly"))
    assert flashing < 0.1 * slow
    # Without the sliding-window minimum the flash would dominate.
    assert frame_differences(frames).mean() > frame_differences(clip("slowly")).mean()

    cut = static_clip()
    cut[flash_at:] = np.roll(cut[flash_at:], 20, axis=2)  # a scene cut: the object jumps once
    assert motion_score(cut) < 0.1 * slow


def test_tensor_and_numpy_inputs_agree():
    item = ShapesDataset("video", num_frames=8, fps=8, length=1, seed=0)[0]
    spec = ShapeSpec(**item["spec"])
    from_tensor = motion_score(item["pixel_values"])  # (3, T, H, W) in [-1, 1]
    from_numpy = motion_score(render_clip(spec, 8, 8))
    assert from_tensor == pytest.approx(from_numpy, rel=1e-4)
    gray = item["pixel_values"].mean(dim=0, keepdim=True)  # (1, T, H, W) also accepted
    assert motion_score(gray) > 0


def test_score_is_resolution_independent():
    for speed in ("slowly", "quickly"):
        assert motion_score(clip(speed, size=256)) == pytest.approx(motion_score(clip(speed)), rel=0.05)


def test_short_clips():
    frames = clip("quickly")
    # Gradient-normalised, a solid object's score is half its displacement: 2.5 px per frame -> 1.25.
    assert motion_score(frames[:2]) == pytest.approx(2.5 / 2, rel=0.1)
    with pytest.raises(ValueError, match="at least 2 frames"):
        motion_score(frames[:1])
    with pytest.raises(ValueError, match="uint8"):
        motion_score(frames.astype(np.float32))
    with pytest.raises(ValueError, match="tensor"):
        motion_score(torch.zeros(4, 8, 16, 16))


def test_select_high_motion():
    scores = [0.1, 0.5, 0.3, 0.9, 0.5]
    assert select_high_motion(scores, 0.4) == [1, 3]  # ties broken by the lower index
    assert select_high_motion(scores, 0.5) == [1, 3, 4]  # ceil(2.5) = 3
    assert select_high_motion(scores, 1.0) == [0, 1, 2, 3, 4]
    assert select_high_motion(scores, 0.01) == [3]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            select_high_motion(scores, bad)


def test_selection_picks_the_fast_clips():
    clips = [clip("quickly" if i % 3 == 0 else "slowly", seed=i) for i in range(9)]
    chosen = select_high_motion([motion_score(c) for c in clips], 1 / 3)
    assert chosen == [0, 3, 6]
