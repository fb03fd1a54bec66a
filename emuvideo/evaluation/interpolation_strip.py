"""The interpolation evaluation's pictures: one held-back clip as a GIF strip (ground truth | model | linear blend |
minterpolate | repetition, side by side) and a PNG filmstrip of its first two key intervals beside it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..data.shapes import REFERENCE_FPS, ShapeSpec
from ..utils.files import atomic_path
from ..utils.video import write_video
from .interpolation import ffmpeg_minterpolate, linear_blend, repeat_frames
from .interpolation_eval import IN_BETWEEN_SEED, caption_of, clip_seed, held_back_spec, interpolate, render_dense

STRIP_LABELS = ("ground truth", "model", "linear blend", "minterpolate", "repetition")
SCALE, LABEL_HEIGHT, GAP = 2, 14, 2


def strip_panels(interp, spec: ShapeSpec, factor: int, num_keys: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """{label: (N, H, W, 3) uint8} for one clip: the truth and what each method makes of its key frames (`seed`: the
    clip's noise seed, so the model's panel is the in-between table's output for that clip)."""
    truth = render_dense(spec, num_keys, factor, interp.size)
    keys = truth[::factor]
    model = interpolate(interp, [keys], [caption_of(spec)], factor, steps, [seed])[0]
    made = (model, linear_blend(keys, factor), ffmpeg_minterpolate(keys, factor, REFERENCE_FPS),
            repeat_frames(keys, factor))
    return dict(zip(STRIP_LABELS, (truth, *made)))


def _labelled(image: np.ndarray, text: str, width: int | None = None) -> np.ndarray:
    """`image` (H, W, 3) under a black bar with `text` in white."""
    bar = PIL.Image.new("RGB", (width or image.shape[1], LABEL_HEIGHT))
    PIL.ImageDraw.Draw(bar).text((2, 1), text, fill=(255, 255, 255))
    bar = np.asarray(bar)
    if bar.shape[1] != image.shape[1]:
        image = np.pad(image, ((0, 0), (0, bar.shape[1] - image.shape[1]), (0, 0)))
    return np.concatenate([bar, image])


def _hstack(images: list[np.ndarray]) -> np.ndarray:
    gap = np.full((images[0].shape[0], GAP, 3), 80, np.uint8)
    return np.concatenate([x for im in images for x in (im, gap)][:-1], axis=1)


def strip_video(panels: dict[str, np.ndarray], factor: int) -> np.ndarray:
    """Side by side, each panel 2x (nearest) under its label, a frame counter (key frames marked) below."""
    n = len(next(iter(panels.values())))
    frames = []
    for i in range(n):
        row = _hstack([_labelled(v[i].repeat(SCALE, 0).repeat(SCALE, 1), k) for k, v in panels.items()])
        caption = f"frame {i}/{n - 1}" + ("  key" if i % factor == 0 else "")
        counter = _labelled(np.zeros((0, row.shape[1], 3), np.uint8), caption)
        frames.append(np.concatenate([row, counter]))
    return np.stack(frames)


def filmstrip(panels: dict[str, np.ndarray], factor: int, intervals: int = 2) -> np.ndarray:
    """A still: one row per method, columns the frames of the first `intervals` key intervals."""
    columns = range(min(intervals * factor + 1, len(next(iter(panels.values())))))
    rows = []
    for label, v in panels.items():
        cells = [_labelled(v[i].repeat(SCALE, 0).repeat(SCALE, 1), f"{i}" + (" key" if i % factor == 0 else ""))
                 for i in columns]
        name = _labelled(np.zeros((cells[0].shape[0] - LABEL_HEIGHT, 90, 3), np.uint8), label)
        rows.append(_hstack([name, *cells]))
    gap = np.full((GAP, rows[0].shape[1], 3), 80, np.uint8)
    return np.concatenate([x for r in rows for x in (r, gap)][:-1])


def write_strip(interp, path: str | Path, factor: int, num_keys: int, steps: int, seed: int, gif_fps: int) -> dict:
    """The GIF strip at `path` and its filmstrip beside it (same name, .png), for the first held-back clip that moves
    quickly (at 1 px per 8 fps frame the methods look alike)."""
    index = 0
    while (spec := held_back_spec(IN_BETWEEN_SEED, index, num_keys)).speed != "quickly":
        index += 1
    panels = strip_panels(interp, spec, factor, num_keys, steps, clip_seed(seed, index))
    gif = write_video(path, strip_video(panels, factor), gif_fps)
    png = gif.with_suffix(".png")
    with atomic_path(png) as tmp:
        PIL.Image.fromarray(filmstrip(panels, factor)).save(tmp, format="PNG")
    return {"gif": str(gif), "png": str(png), "clip": index, "prompt": caption_of(spec), "factor": factor,
            "gif_fps": gif_fps, "spec": dataclasses.asdict(spec)}
