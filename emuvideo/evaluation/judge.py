"""An automatic judge of the shapes world (`emuvideo.data.shapes`).

Scores generated videos against their prompt: which colour and shape the object has, which way it
moves and how fast. Generated videos are imperfect (blurry, slightly off colours, a noisy
background), so every step is chosen to degrade gracefully:

- frames are resized to the 64 px world, so displacements are measured in world pixels;
- the object is the largest connected blob brighter than a threshold halfway between the
  background and object levels (found with Otsu's method on the per-pixel max channel);
- colour is the palette entry closest in hue (cosine similarity) to the median colour of the
  blob's interior after subtracting the background colour, so dimming and offsets do not matter;
- shape comes from the blob's coverage map: how its area fills its widest row x tallest column
  (square ~1, circle ~pi/4) and whether its mass is skewed towards the bottom (the apex-up triangle);
- direction and speed come from a straight-line fit to the blob's centroid over the clip,
  converted to px per frame at the world's reference 8 fps.

An attribute is None when there is no clear answer (no object, an off-palette colour, a blob of
no known shape, no motion); `score` counts None as wrong.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shapes import COLOURS, FRAME_SIZE, REFERENCE_FPS, SPEEDS


# The object must be this much brighter (max channel, 0-255) than the background: palette colours
# have a max channel >= 190, a dark or empty frame stays far below.
MIN_CONTRAST = 60.0
# Smallest blob that counts as the object (px at 64 px; the smallest triangle covers ~98 px) and
# largest (a blob covering half the frame is not "one object on black").
MIN_AREA = 30
MAX_AREA = FRAME_SIZE * FRAME_SIZE // 2
# Hue match needed to name a colour (palette pairs are at most 0.88 similar to each other).
MIN_COLOUR_SIMILARITY = 0.95
# Shape thresholds: vertical skewness of the mass (apex-up triangle -0.57, others 0) and how the
# area fills width x height (square 1, circle pi/4 = 0.785, triangle 1/2).
TRIANGLE_MAX_SKEW = -0.3
SQUARE_MIN_FILL = 0.9
CIRCLE_MIN_FILL = 0.65
MAX_ASPECT = 1.4  # every shape of the world is as wide as it is tall
# Motion thresholds, in px per frame at REFERENCE_FPS: between "slowly" (1.0) and "quickly" (2.5)
# at their geometric mean; below MIN_MOTION the object is considered static.
SPEED_THRESHOLD = float(np.sqrt(SPEEDS["slowly"] * SPEEDS["quickly"]))
MIN_MOTION = 0.4
MAX_CROSS_MOTION_RATIO = 0.5  # motion along the minor axis / major axis; larger is "diagonal"

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.asarray([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float64)
_PALETTE_UNIT = _PALETTE / np.linalg.norm(_PALETTE, axis=1, keepdims=True)


@dataclass
class Judgement:
    """What the judge saw in a video.

    Attributes:
        colour, shape, direction, speed: canonical values (see `emuvideo.data.shapes`) or None.
        num_frames: T.
        num_object_frames: frames in which a clear object was found.
        centroids: (T, 2) array of the object's (x, y) in 64 px world pixels, NaN where absent.
        velocity: (vx, vy) in px per frame of this clip from the line fit, or None.
        displacement_at_reference_fps: |velocity| along the dominant axis converted to px per
            frame at 8 fps (1.0 for "slowly", 2.5 for "quickly"), or None.
        colour_votes, shape_votes: per-frame votes behind `colour` and `shape`.
    """

    colour: Optional[str]
    shape: Optional[str]
    direction: Optional[str]
    speed: Optional[str]
    num_frames: int = 0
    num_object_frames: int = 0
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    velocity: Optional[tuple[float, float]] = None
    displacement_at_reference_fps: Optional[float] = None
    colour_votes: dict = field(default_factory=dict)
    shape_votes: dict = field(default_factory=dict)


@dataclass
class _FrameObservation:
    colour: Optional[str]
    shape: Optional[str]
    centroid: tuple[float, float]
    area: float = 0.0  # total coverage of the object, px at 64 px
    other_area: int = 0  # px of the largest bright blob apart from the object (a second object), 0 if none


def _to_world_size(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 64, 64, 3) float32, resized so distances are world pixels."""
    if frames.shape[1] == FRAME_SIZE and frames.shape[2] == FRAME_SIZE:
        return frames.astype(np.float32)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    mode = "area" if frames.shape[1] > FRAME_SIZE else "bilinear"
    video = F.interpolate(video, size=(FRAME_SIZE, FRAME_SIZE), mode=mode)
    return video.permute(0, 2, 3, 1).numpy()


def _brightness(images: np.ndarray) -> np.ndarray:
    """Max over the trailing RGB axis (written out: numpy's reduction over a length-3 axis is slow)."""
    return np.maximum(np.maximum(images[..., 0], images[..., 1]), images[..., 2])


def _levels(brightness: np.ndarray) -> Optional[tuple[float, float]]:
    """(background level, object level) of a frame's brightness, or None if it is uniform.

    Otsu's method splits the 0-255 histogram where the between-class variance is largest; each
    level is the median of its class, read off the same histogram.
    """
    hist = np.bincount(np.clip(np.rint(brightness), 0, 255).astype(np.int64).ravel(), minlength=256)
    counts = np.cumsum(hist).astype(np.float64)  # pixels at or below each level
    sums = np.cumsum(hist * np.arange(256, dtype=np.float64))
    high = counts[-1] - counts
    between = counts * high * (sums / np.maximum(counts, 1) - (sums[-1] - sums) / np.maximum(high, 1)) ** 2
    split = int(np.argmax(between))  # background <= split < object
    if between[split] <= 0:
        return None
    background = np.searchsorted(counts, counts[split] / 2)
    obj = np.searchsorted(counts, counts[split] + high[split] / 2)
    return float(background), float(obj)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a 2-D boolean mask (union-find over row runs)."""
    steps = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    starts = np.argwhere(steps == 1)  # (row, first column) of each run, row-major order
    ends = np.argwhere(steps == -1)[:, 1]  # one past each run's last column, same order
    rows, cols = starts[:, 0], starts[:, 1]
    # Runs on consecutive rows that overlap in columns touch.
    touching = (rows[None, :] == rows[:, None] + 1) & (cols[None, :] < ends[:, None]) & (cols[:, None] < ends[None, :])
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(*np.nonzero(touching)):
        parent[find(a)] = find(b)
    roots = np.asarray([find(i) for i in range(len(rows))], dtype=np.int64)
    out = np.zeros_like(mask, dtype=bool)
    if len(rows) == 0:
        return out
    largest = np.argmax(np.bincount(roots, weights=ends - cols))
    for i in np.flatnonzero(roots == largest):
        out[rows[i], cols[i] : ends[i]] = True
    return out


def _grow(mask: np.ndarray) -> np.ndarray:
    """Mask dilated by one pixel (4-neighbourhood)."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _classify_colour(rgb: np.ndarray) -> Optional[str]:
    norm = np.linalg.norm(rgb)
    if norm < MIN_CONTRAST:
        return None
    similarity = _PALETTE_UNIT @ (rgb / norm)
    best = int(np.argmax(similarity))
    return _PALETTE_NAMES[best] if similarity[best] >= MIN_COLOUR_SIMILARITY else None


def _classify_shape(
    coverage: np.ndarray,
    top_rows: int = 1,
    triangle_max_skew: float = TRIANGLE_MAX_SKEW,
    square_min_fill: float = SQUARE_MIN_FILL,
) -> Optional[str]:
    """Shape from an (H, W) map of how much of each pixel the object covers (0..1).

    Works on coverage rather than a binary mask so that one noisy edge pixel cannot change the
    answer: the object's area is the total coverage and its width/height are the largest row/column
    sums, both of which average noise out. With `top_rows` > 1 the width (height) is the median of
    the `top_rows` largest row (column) sums, so one row widened by noise does not set it.
    """
    area = coverage.sum()
    width = float(np.median(np.sort(coverage.sum(axis=1))[-top_rows:]))  # widest row(s)
    height = float(np.median(np.sort(coverage.sum(axis=0))[-top_rows:]))  # tallest column(s)
    if max(width, height) > MAX_ASPECT * min(width, height):
        return None
    # Skewness of the mass along y: an apex-up triangle's width grows linearly downward, which
    # gives -0.57 (a long tail towards the apex); circles and squares are symmetric (0).
    profile = coverage.sum(axis=1) / area
    y = np.arange(len(profile), dtype=np.float64)
    mean = (profile * y).sum()
    var = (profile * (y - mean) ** 2).sum()
    skew = (profile * (y - mean) ** 3).sum() / var**1.5
    if skew <= triangle_max_skew:
        return "triangle"
    fill = area / (width * height)  # square 1, circle pi/4
    if fill >= square_min_fill:
        return "square"
    if fill >= CIRCLE_MIN_FILL:
        return "circle"
    return None


def _observe(image: np.ndarray, brightness: np.ndarray, classify_shape=_classify_shape) -> Optional[_FrameObservation]:
    """Find and describe the object in one frame; None if there is none.

    Args:
        image: (64, 64, 3) float frame.
        brightness: (64, 64) its max channel; any palette colour is bright in some channel.
        classify_shape: coverage map -> shape name or None (the strict judge passes its own cuts).
    """
    levels = _levels(brightness)
    if levels is None or levels[1] - levels[0] < MIN_CONTRAST:
        return None
    background_level, object_level = levels
    # Halfway between the two levels, the mask follows the object's true outline even when its
    # edges are anti-aliased or blurred.
    bright = brightness > (object_level + background_level) / 2
    mask = _largest_component(bright)
    area = int(mask.sum())
    if not MIN_AREA <= area <= MAX_AREA:
        return None

    # Everything below looks only at a window around the object (2 px margin for the grown mask).
    full_mask = mask  # before windowing, for finding a second object
    rows, cols = np.nonzero(mask)
    window = (slice(max(rows.min() - 2, 0), rows.max() + 3), slice(max(cols.min() - 2, 0), cols.max() + 3))
    background_rgb = np.median(image[::2, ::2][~mask[::2, ::2]], axis=0)  # a quarter of the pixels is plenty
    image, brightness, mask = image[window], brightness[window], mask[window]

    # Colour from the interior (pixels whose neighbours are all in the mask), where blur has not
    # mixed in black; the background colour is subtracted so a global offset cancels.
    interior = mask & ~_grow(~mask)
    core = interior if interior.sum() >= 4 else mask
    rgb = np.median(image[core], axis=0) - background_rgb

    # Coverage over the mask grown by a pixel, so partially covered (or blurred) edge pixels count
    # and sub-pixel positions are measured, while background noise elsewhere does not.
    coverage = np.where(_grow(mask), np.clip((brightness - background_level) / (object_level - background_level), 0, 1), 0.0)
    total = coverage.sum()
    centroid = (
        window[1].start + float((coverage.sum(axis=0) * (np.arange(coverage.shape[1]) + 0.5)).sum() / total),
        window[0].start + float((coverage.sum(axis=1) * (np.arange(coverage.shape[0]) + 0.5)).sum() / total),
    )
    other_area = int(_largest_component(bright & ~full_mask).sum())
    return _FrameObservation(_classify_colour(rgb), classify_shape(coverage), centroid, float(total), other_area)


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 numpy array, got {type(frames).__name__} {getattr(frames, 'dtype', '')}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] < 1 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"frames must be square with at least one frame, got {frames.shape}")


def _majority(votes: list) -> tuple[Optional[str], dict]:
    """The value more than half of the votes agree on (None votes included), else None."""
    counts = Counter(votes)
    value, count = counts.most_common(1)[0]
    return (value if 2 * count > len(votes) else None), {k: v for k, v in counts.items() if k is not None}


def judge_frame(frame: np.ndarray) -> tuple[Optional[str], Optional[str]]:
    """(colour, shape) of the object in one (H, W, 3) uint8 frame, None where unclear."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ValueError(f"frame must be an (H, W, 3) numpy array, got {getattr(frame, 'shape', type(frame))}")
    _check_frames(frame[None])
    image = _to_world_size(frame[None])[0]
    observation = _observe(image, _brightness(image))
    return (observation.colour, observation.shape) if observation else (None, None)


def judge_video(frames: np.ndarray, fps: float) -> Judgement:
    """Judge a (T, H, W, 3) uint8 video sampled at `fps` frames per second.

    Colour and shape are majority votes over the frames with an object; direction and speed come
    from a least-squares line through the object's centroids (needs >= 2 such frames). Returns an
    all-None judgement when fewer than half of the frames show a clear object.
    """
    _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    world = _to_world_size(frames)  # (T, 64, 64, 3)
    observations = [_observe(image, brightness) for image, brightness in zip(world, _brightness(world))]
    present = [i for i, o in enumerate(observations) if o is not None]
    centroids = np.full((len(frames), 2), np.nan)
    for i in present:
        centroids[i] = observations[i].centroid
    judgement = Judgement(None, None, None, None, len(frames), len(present), centroids)
    if 2 * len(present) < len(frames):
        return judgement

    judgement.colour, judgement.colour_votes = _majority([observations[i].colour for i in present])
    judgement.shape, judgement.shape_votes = _majority([observations[i].shape for i in present])
    if len(present) < 2:
        return judgement

    t = np.asarray(present, dtype=np.float64)
    vx, vy = np.polyfit(t, centroids[present], deg=1)[0]  # slopes in px per frame
    judgement.velocity = (float(vx), float(vy))
    major, minor = max(abs(vx), abs(vy)), min(abs(vx), abs(vy))
    reference = major * fps / REFERENCE_FPS
    judgement.displacement_at_reference_fps = float(reference)
    if reference < MIN_MOTION or minor > MAX_CROSS_MOTION_RATIO * major:
        return judgement
    if abs(vx) >= abs(vy):
        judgement.direction = "right" if vx > 0 else "left"
    else:
        judgement.direction = "down" if vy > 0 else "up"  # image y grows downward
    judgement.speed = "quickly" if reference >= SPEED_THRESHOLD else "slowly"
    return judgement


def score(j: Judgement, target: dict) -> dict[str, bool]:
    """Compare a judgement with a target (e.g. a `canonical_prompts()` entry or `parse_caption` output).

    A target speed of None (the prompt did not say) accepts any judged speed, including none.

    Returns:
        {"colour", "shape", "direction", "speed", "all"} -> bool; "all" is the conjunction.
    """
    missing = [k for k in ("colour", "shape", "direction") if k not in target]
    if missing:
        raise ValueError(f"target is missing {missing}; got keys {sorted(target)}")
    result = {k: getattr(j, k) is not None and getattr(j, k) == target[k] for k in ("colour", "shape", "direction")}
    result["speed"] = target.get("speed") is None or j.speed == target["speed"]
    result["all"] = all(result.values())
    return result
