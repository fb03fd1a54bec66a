"""A strict judge of the shapes world: a video is right only if it shows what the prompt says, all the time.

The lenient judge (`judge.py`) asks "is this roughly the prompt?": the object need be found in half the
frames, colour and shape are majority votes, direction accepts ~27 degrees off-axis and speed is one cut
at 1.58 px/frame. A diagonal path, a random walk, a shape that turns into another half-way and an
object missing in 7 of 16 frames all pass it. This judge measures the same frames (the same object
finder, `judge._observe`) and asks for a clip of the world as `data/shapes.py` renders it:

- visible: the object is found in every frame but at most `MAX_MISSING_FRAMES`;
- single: no second object (a bright blob of `MIN_AREA` px or more) in more than `MAX_CROWDED_FRAMES`;
- colour, shape: one value in >= `MIN_AGREEMENT` of the frames that show the object;
- size: the object's area (total coverage) varies by at most `MAX_SIZE_RATIO` (max / min);
- path: the centroids stay within `MAX_PATH_RMS` px (RMS) of a constant-velocity line;
- direction: that velocity is within `MAX_ANGLE_DEGREES` of the asked axis (or diagonal, `shapes.DIAGONALS`);
- speed: the velocity along the axis, over the whole clip and over each half separately (so an object
  that stops half-way fails), is within a factor `SPEED_BAND` of the asked speed: 1.0 px/frame
  ("slowly") or 2.5 px/frame ("quickly") at 8 fps, scaled to the clip's fps as the world renders it
  (`data.shapes.displacement_per_frame`).

Each frame's shape comes from the lenient judge's features with two changes, so that renders blurred
(gaussian sigma 1.5) *and* noisy (sigma 20) are still named right in >= 99% of frames, which a
per-frame agreement of 90% needs: the width and height are the median of the 3 widest rows/columns
(one row widened by noise does not set them), and the cuts lie midway between what the shapes measure
under that degradation (fill: circles <= 0.85, squares >= 0.91, cut 0.88; skew: circles and squares
within +-0.07, triangles <= -0.31, cut -0.2).

Distances are world pixels (frames are resized to 64 px first); speeds are px/frame at the clip's fps
unless named `*_at_reference_fps`.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..data.shapes import _DIRECTION_VECTORS, DIAGONALS, DIRECTIONS, REFERENCE_FPS, SPEEDS
from .judge import MIN_AREA, MIN_MOTION, _brightness, _check_frames, _classify_shape, _observe, _to_world_size

MAX_MISSING_FRAMES = 1
MAX_CROWDED_FRAMES = 1  # a one-frame flicker is forgiven, as one missing frame is
MIN_AGREEMENT = 0.9
# Rendered clips stay under 1.19 even blurred and noisy; a circle that turns into a square of its width grows 4/pi = 1.27.
MAX_SIZE_RATIO = 1.25
MAX_PATH_RMS = 1.0  # px; rendered clips stay under 0.15 even blurred and noisy
MAX_ANGLE_DEGREES = 15.0
SPEED_BAND = 1.25  # measured / asked speed must lie in [1 / 1.25, 1.25]: slowly 0.8-1.25, quickly 2.0-3.125
TOP_ROWS = 3
SQUARE_MIN_FILL = 0.88
TRIANGLE_MAX_SKEW = -0.2

STRICT_ATTRIBUTES = ("colour", "shape", "direction", "speed", "visible", "single", "size", "path", "all")

# The four axes and the four diagonals (image y grows down). The diagonals, 45 degrees from the axes, change
# no verdict on an axis prompt: a velocity within MAX_ANGLE_DEGREES of an axis is nearer it than any diagonal.
_AXES = {name: _DIRECTION_VECTORS[name] for name in DIRECTIONS + DIAGONALS}
_classify_strict_shape = functools.partial(
    _classify_shape, top_rows=TOP_ROWS, triangle_max_skew=TRIANGLE_MAX_SKEW, square_min_fill=SQUARE_MIN_FILL
)


@dataclass
class StrictJudgement:
    """What the strict judge measured in a video.

    Attributes:
        colour, shape: the value shown in >= `MIN_AGREEMENT` of the object frames, else None.
        direction: the axis within `MAX_ANGLE_DEGREES` of the fitted velocity, else None (also when static).
        speed: "slowly" / "quickly" when the whole clip and both halves move inside that speed's band, else None.
        num_frames, num_object_frames: T and the frames in which the object was found.
        num_crowded_frames: frames that show a second object.
        colour_agreement, shape_agreement: share of the object frames showing the most common value.
        colour_votes, shape_votes: per-frame values (None = unclear) and their counts.
        size_ratio: largest / smallest object area over the object frames (1 = constant).
        path_rms: RMS distance (px) of the centroids from the fitted constant-velocity line.
        angle_degrees: angle between the velocity and the nearest axis.
        speed_at_reference_fps: speed along `direction`'s axis in px/frame at 8 fps, whole clip.
        half_speeds_at_reference_fps: the same for the first and the second half of the clip.
        centroids: (T, 2) (x, y) per frame, NaN where the object is missing.
        areas: (T,) object area per frame, NaN where missing.
    """

    colour: Optional[str] = None
    shape: Optional[str] = None
    direction: Optional[str] = None
    speed: Optional[str] = None
    num_frames: int = 0
    num_object_frames: int = 0
    num_crowded_frames: int = 0
    colour_agreement: float = 0.0
    shape_agreement: float = 0.0
    colour_votes: dict = field(default_factory=dict)
    shape_votes: dict = field(default_factory=dict)
    size_ratio: float = math.inf
    path_rms: float = math.inf
    angle_degrees: float = math.nan
    speed_at_reference_fps: float = math.nan
    half_speeds_at_reference_fps: tuple[float, float] = (math.nan, math.nan)
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def visible(self) -> bool:
        return self.num_frames > 0 and self.num_frames - self.num_object_frames <= MAX_MISSING_FRAMES

    @property
    def single(self) -> bool:
        return self.num_crowded_frames <= MAX_CROWDED_FRAMES

    @property
    def size_stable(self) -> bool:
        return self.size_ratio <= MAX_SIZE_RATIO

    @property
    def straight(self) -> bool:
        return self.path_rms <= MAX_PATH_RMS


def _consensus(votes: list) -> tuple[Optional[str], float, dict]:
    """(value shown in >= MIN_AGREEMENT of the votes or None, agreement of the top value, counts)."""
    counts = Counter(votes)
    value, count = counts.most_common(1)[0]
    agreement = count / len(votes)
    return (value if agreement >= MIN_AGREEMENT else None), agreement, dict(counts)


def _speed_band(speed_at_reference_fps: float) -> Optional[str]:
    for name, nominal in SPEEDS.items():
        if nominal / SPEED_BAND <= speed_at_reference_fps <= nominal * SPEED_BAND:
            return name
    return None


def judge_video_strict(frames: np.ndarray, fps: float) -> StrictJudgement:
    """Judge a (T, H, W, 3) uint8 video sampled at `fps` frames per second (see module docstring)."""
    _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    world = _to_world_size(frames)  # (T, 64, 64, 3)
    observations = [_observe(image, b, _classify_strict_shape) for image, b in zip(world, _brightness(world))]
    present = [i for i, o in enumerate(observations) if o is not None]
    j = StrictJudgement(num_frames=len(frames), num_object_frames=len(present))
    j.centroids = np.full((len(frames), 2), np.nan)
    j.areas = np.full(len(frames), np.nan)
    for i in present:
        j.centroids[i], j.areas[i] = observations[i].centroid, observations[i].area
    # A frame without the object cannot show a second one; a second blob next to it can.
    j.num_crowded_frames = sum(observations[i].other_area >= MIN_AREA for i in present)
    if not present:
        return j
    j.colour, j.colour_agreement, j.colour_votes = _consensus([observations[i].colour for i in present])
    j.shape, j.shape_agreement, j.shape_votes = _consensus([observations[i].shape for i in present])
    j.size_ratio = float(j.areas[present].max() / j.areas[present].min())
    if len(present) < 2:
        return j

    # Constant-velocity fit x(t), y(t) over the object frames.
    t = np.asarray(present, dtype=np.float64)
    points = j.centroids[present]  # (N, 2)
    (velocity, offset) = np.polyfit(t, points, deg=1)  # each (2,): px per frame, px at t = 0
    residual = points - (offset + t[:, None] * velocity)
    j.path_rms = float(np.sqrt((residual**2).sum(axis=1).mean()))

    axis_name = max(_AXES, key=lambda name: np.dot(_AXES[name], velocity))
    axis = np.asarray(_AXES[axis_name])
    to_reference = fps / REFERENCE_FPS  # px/frame at fps -> px/frame at 8 fps
    along = float(np.dot(axis, velocity))
    across = float(abs(axis[1] * velocity[0] - axis[0] * velocity[1]))
    j.angle_degrees = math.degrees(math.atan2(across, along))
    j.speed_at_reference_fps = along * to_reference
    # Each half separately: an object that stops (or turns back) half-way is not moving at one speed.
    halves = (t < len(frames) / 2, t >= len(frames) / 2)
    if all(h.sum() >= 2 for h in halves):
        j.half_speeds_at_reference_fps = tuple(
            float(np.dot(axis, np.polyfit(t[h], points[h], deg=1)[0])) * to_reference for h in halves
        )
    else:  # too short to split: the whole clip stands for both halves
        j.half_speeds_at_reference_fps = (j.speed_at_reference_fps, j.speed_at_reference_fps)

    if j.speed_at_reference_fps >= MIN_MOTION and j.angle_degrees <= MAX_ANGLE_DEGREES:
        j.direction = axis_name
    bands = {_speed_band(s) for s in (j.speed_at_reference_fps, *j.half_speeds_at_reference_fps)}
    j.speed = bands.pop() if len(bands) == 1 else None
    return j


def score_strict(j: StrictJudgement, target: dict) -> dict[str, bool]:
    """Compare a strict judgement with a target (a `canonical_prompts()` entry or `parse_caption` output).

    A target speed of None (the prompt did not say) accepts either speed, but not a speed outside both bands.

    Returns:
        {"colour", "shape", "direction", "speed", "visible", "single", "size", "path", "all"} -> bool;
        "all" is the conjunction.
    """
    missing = [k for k in ("colour", "shape", "direction") if k not in target]
    if missing:
        raise ValueError(f"target is missing {missing}; got keys {sorted(target)}")
    result = {k: getattr(j, k) is not None and getattr(j, k) == target[k] for k in ("colour", "shape", "direction")}
    result["speed"] = j.speed is not None and target.get("speed") in (None, j.speed)
    result.update(visible=j.visible, single=j.single, size=j.size_stable, path=j.straight)
    result["all"] = all(result.values())
    return result


def explain_strict(j: StrictJudgement, target: dict) -> list[str]:
    """One line per failed attribute, saying what was measured against what was asked (empty if right)."""
    result, lines = score_strict(j, target), []
    if not result["visible"]:
        lines.append(f"visible: object in {j.num_object_frames} of {j.num_frames} frames (at most {MAX_MISSING_FRAMES} missing)")
    if not result["single"]:
        lines.append(f"single: a second object in {j.num_crowded_frames} frames (at most {MAX_CROWDED_FRAMES})")
    for name in ("colour", "shape"):
        if not result[name]:
            votes = getattr(j, f"{name}_votes")
            lines.append(f"{name}: asked {target[name]}, frames show {votes} (need {MIN_AGREEMENT:.0%} agreement)")
    if not result["size"]:
        lines.append(f"size: largest / smallest area x{j.size_ratio:.3f} (at most x{MAX_SIZE_RATIO})")
    if not result["path"]:
        lines.append(f"path: {j.path_rms:.2f} px RMS from a straight constant-speed line (at most {MAX_PATH_RMS})")
    if not result["direction"]:
        lines.append(
            f"direction: asked {target['direction']}, moves {j.direction or 'off-axis or not at all'} "
            f"({j.angle_degrees:.0f} deg off the nearest axis, {j.speed_at_reference_fps:.2f} px/frame at 8 fps)"
        )
    if not result["speed"]:
        asked = target.get("speed")
        band = " or ".join(
            f"{s} {SPEEDS[s] / SPEED_BAND:.2f}-{SPEEDS[s] * SPEED_BAND:.2f}" for s in SPEEDS if asked in (None, s)
        )
        first, second = j.half_speeds_at_reference_fps
        lines.append(
            f"speed: {j.speed_at_reference_fps:.2f} px/frame at 8 fps (halves {first:.2f}, {second:.2f}), "
            f"asked {band}"
        )
    return lines


__all__ = ["STRICT_ATTRIBUTES", "StrictJudgement", "explain_strict", "judge_video_strict", "score_strict"]
