"""Fine-tuning clips: a folder of user videos (and captions) -> fixed-shape training items.

A dataset folder is either

- clips with a same-name caption beside each (`walk.mp4` + `walk.txt`), in any sub-folder, or
- a `metadata.jsonl` / `metadata.csv` whose rows name a clip (`video_path`, `file_name` or `path`,
  relative to the folder) and its caption (`caption` or `text`).

Images (`IMAGE_EXTENSIONS`) are 1-frame clips for the image stage.

What users of other trainers hit, and what this module does about it:

- clips dropped silently (down to "dataset is empty"): every skipped file is named with its reason
  in a warning, one summary line counts the reasons, and zero usable clips is a `ValueError` saying
  why;
- variable-frame-rate clips: frames are picked by presentation timestamp, never by index;
- rotated phone clips and photos, 16-bit and transparent images: read as inference reads them, by
  `emuvideo.preprocessing` (upright, 8-bit RGB, alpha on white, one antialiased resizer);
- decoding: each read opens its own container (thread- and worker-safe), streams frames and stops
  as soon as it has enough, so a long clip is never held in memory;
- a clip that breaks after the scan raises `ClipDecodeError` naming the file;
- a path that leaves the folder (a metadata row `../x.mp4` or `/abs/x.mp4`, a symlink pointing out, a caption
  `.txt` linking out) is skipped and named like any unusable clip ("outside folder"), and never opened.

Layouts: numpy videos are (T, H, W, 3) uint8 (the edge of the library); dataset items are float
tensors (3, T, H, W) in [-1, 1], so a batch is (B, 3, T, H, W) as diffusers' UNet3D expects.
Clips of several sizes and lengths in one dataset: see `emuvideo.data.buckets`.
"""

import csv
import json
import logging
import math
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..preprocessing import (
    CROPS,
    IMAGE_EXTENSIONS,
    SAMPLINGS,
    ClipDecodeError,  # noqa: F401 (what a dataset item raises for a clip that breaks after the scan)
    decode_errors,
    probe_image,
    probe_video,
    read_video,
    resize_and_crop,
    to_pixels,
)
from .buckets import assign_bucket, check_buckets

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".gif", ".avi")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Bump when decoding/resizing changes what a clip turns into, so latent caches keyed on the
# dataset (`ClipDataset.cache_fields`) are rebuilt instead of silently reused.
# 2: images as inference reads them (alpha on white, 16-bit rescaled), Pillow's Lanczos/bicubic resizer.
DECODE_VERSION = 2

_PATH_KEYS = ("video_path", "file_name", "path")
_CAPTION_KEYS = ("caption", "text")
# Order of the reason categories in the summary line; others follow alphabetically.
_REASON_ORDER = ("corrupt", "too short", "no caption", "missing file", "outside folder", "too small", "image")
# What a broken file raises while probing/decoding; importing PyAV here refuses one too old to rotate.
_DECODE_ERRORS = decode_errors()

@dataclass
class ClipRecord:
    """One usable clip, as probed by `scan_clips`.

    `width`/`height` are the upright (displayed) size, after `rotation`; `rotation` is how many
    degrees counter-clockwise the stored frames are turned for display (0, 90, 180 or 270).
    `num_frames` is how many frames the clip yields at the scan's target fps (its native frame
    count when no fps was given); `fps` is the clip's native average rate (0 for images).
    """

    path: Path
    caption: str
    width: int
    height: int
    duration: float
    fps: float
    num_frames: int
    rotation: int
    is_image: bool


@dataclass
class ScanReport:
    """Clips kept by a scan and `(path, reason)` for every file skipped; a reason reads
    "<category>: <details>", e.g. "too short: 5 frames at 8 fps, need 16"."""

    kept: list[ClipRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Skipped files per reason category, in summary order."""
        counts = Counter(reason.split(":", 1)[0] for _, reason in self.skipped)
        order = [c for c in _REASON_ORDER if c in counts] + sorted(set(counts) - set(_REASON_ORDER))
        return {c: counts[c] for c in order}

    def summary(self) -> str:
        """E.g. "kept 12 clips, skipped 3 (corrupt: 1, no caption: 2)"."""
        line = f"kept {len(self.kept)} clips, skipped {len(self.skipped)}"
        if self.skipped:
            line += " (" + ", ".join(f"{c}: {n}" for c, n in self.counts().items()) + ")"
        return line


# ---------------------------------------------------------------------------------------------
# Listing and probing
# ---------------------------------------------------------------------------------------------


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS


def _read_metadata(meta: Path) -> list[tuple[Path, Optional[str]]]:
    """Rows of a metadata.jsonl/.csv as (clip path, caption or None). A row without a path is a
    broken metadata file, not a bad clip, so it raises."""
    if meta.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(meta.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{meta}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    else:
        with open(meta, newline="", encoding="utf-8-sig") as f:
            rows = list(enumerate(csv.DictReader(f), 2))  # line 1 is the header
    entries = []
    for lineno, row in rows:
        key = next((k for k in _PATH_KEYS if row.get(k)), None)
        if key is None:
            raise ValueError(f"{meta}:{lineno}: no clip path (expected one of {', '.join(_PATH_KEYS)})")
        caption = next((row[k] for k in _CAPTION_KEYS if row.get(k) is not None), None)
        entries.append((meta.parent / str(row[key]), None if caption is None else str(caption)))
    return entries


def _list_entries(root: Path) -> list[tuple[Path, Optional[str], str]]:
    """(clip path, caption or None, where the caption comes from) for every clip of the folder."""
    metas = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if len(metas) > 1:
        raise ValueError(f"{root} has both {metas[0].name} and {metas[1].name}; keep one")
    if metas:
        return [(p, c, metas[0].name) for p, c in _read_metadata(metas[0])]
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or not _is_media(path) or any(p.startswith(".") for p in rel.parts):
            continue
        txt = path.with_suffix(".txt")
        caption = None
        if txt.is_file() and _outside(txt, root) is None:  # a caption linking out is not read (see _scan)
            try:
                caption = txt.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                caption = None
        entries.append((path, caption, txt.name))
    return entries


def _outside(path: Path, root: Path) -> Optional[str]:
    """Where `path` leads when that is outside the folder `root` (symlinks followed, nothing opened), else None."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return f"{path} cannot be resolved ({e})"
    return None if resolved.is_relative_to(root.resolve()) else str(resolved)


def frames_at_fps(duration: float, fps: float) -> int:
    """How many frames sampling at `fps` yields: one per target time k / fps < duration."""
    # Rounding first keeps 1.6 s * 5 fps = 8.000000000000002 at 8 frames.
    return math.ceil(round(duration * fps, 6))


# ---------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------


def _check(path: Path, caption: Optional[str], caption_source: str, min_frames: int, fps: Optional[float],
           include_images: bool):
    """A ClipRecord for a usable clip, else the reason "<category>: <details>" it is skipped."""
    is_image = path.suffix.lower() in IMAGE_EXTENSIONS
    if not path.is_file():
        return f"missing file: listed in {caption_source} but not found"
    if not _is_media(path):
        return f"unsupported: {path.suffix!r} is not a video or image extension"
    if is_image and not include_images:
        return "image: images are 1-frame clips, used only for 1-frame training or with include_images=True"
    if caption is None:
        if caption_source.endswith(".txt"):
            return f"no caption: {caption_source} is missing or not UTF-8 text"
        return f"no caption: its row in {caption_source} has no caption/text"
    if not caption.strip():
        return f"no caption: the caption in {caption_source} is empty"
    try:
        probe = probe_image(path) if is_image else probe_video(path)
    except _DECODE_ERRORS as e:
        return f"corrupt: {type(e).__name__}: {e}"
    num_frames = probe.frames if fps is None or is_image else frames_at_fps(probe.duration, fps)
    if num_frames < min_frames and not is_image:
        at = f" at {fps:g} fps ({probe.duration:.2f} s)" if fps is not None else ""
        return f"too short: {num_frames} frames{at}, need {min_frames}"
    return ClipRecord(path, caption.strip(), probe.width, probe.height, probe.duration, probe.fps,
                      num_frames, probe.rotation, is_image)


def _scan(root: Path, min_frames: int, fps: Optional[float], include_images: Optional[bool]) -> ScanReport:
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not root.is_dir():
        raise ValueError(f"clip folder does not exist or is not a folder: {root}")
    if include_images is None:
        include_images = min_frames == 1
    report = ScanReport()
    entries = []
    # A path that leaves the folder is skipped before anything opens it: a dataset cannot make training read
    # (and learn, and show in samples) files elsewhere on the machine.
    for path, caption, caption_source in _list_entries(root):
        txt = path.with_suffix(".txt") if caption_source.endswith(".txt") else None
        for where in (path, txt):
            target = _outside(where, root) if where is not None else None
            if target is not None:
                report.skipped.append((path, f"outside folder: {where.name} leads to {target}, outside {root}"))
                break
        else:
            entries.append((path, caption, caption_source))
    # Probing is I/O and FFmpeg work that releases the GIL: threads make a 10k-clip scan minutes shorter.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda e: _check(*e, min_frames, fps, include_images), entries))
    for (path, _, _), result in zip(entries, results):
        if isinstance(result, ClipRecord):
            report.kept.append(result)
        else:
            report.skipped.append((path, result))
    return report


def _announce(report: ScanReport, root: Path) -> None:
    """Name every skipped file, log one summary line, refuse an empty dataset."""
    for path, reason in report.skipped:
        warnings.warn(f"skipping {path}: {reason}", stacklevel=3)
    if not report.kept:
        if not report.skipped:
            raise ValueError(f"no usable clips in {root}: no files with extensions "
                             f"{', '.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)} (and no metadata.jsonl/.csv)")
        reasons = ", ".join(f"{c}: {n}" for c, n in report.counts().items())
        raise ValueError(f"no usable clips in {root}: {len(report.skipped)} skipped ({reasons})")
    (logger.warning if report.skipped else logger.info)("%s: %s", root, report.summary())


def scan_clips(root, min_frames: int = 1, fps: Optional[float] = None,
               include_images: Optional[bool] = None) -> ScanReport:
    """Find the usable clips of a dataset folder, probing each cheaply (header + first frame).

    Args:
        root: the dataset folder (captions beside clips, or a metadata.jsonl/.csv).
        min_frames: clips yielding fewer frames (at `fps`) are skipped as too short.
        fps: target frame rate for counting frames; None counts native frames.
        include_images: keep images as 1-frame clips; None means "when min_frames == 1".

    Every skipped file is named with its reason in a warning; one summary line is logged.

    Raises:
        ValueError: when no clip is usable, saying how many were skipped for which reasons.
    """
    root = Path(root)
    report = _scan(root, min_frames, fps, include_images)
    _announce(report, root)
    return report


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


class ClipDataset(torch.utils.data.Dataset):
    """Training items from a folder of captioned clips.

    Each clip is assigned one bucket (num_frames, height, width): the resolution from
    `resolution_buckets` closest in aspect ratio, and the largest of `frame_buckets` it can fill.
    Items of the same bucket stack; batch them with
    `emuvideo.data.buckets.BucketBatchSampler(dataset.buckets, batch_size)`.

    Args:
        root: dataset folder (see module docstring).
        height, width: output size when `resolution_buckets` is None.
        num_frames: frames per item when `frame_buckets` is None (1 trains the image stage).
        fps: target rate for sampling="fps"; None takes native frames.
        sampling: "fps", "even" or "head" (see `read_video`).
        crop: "center" or "random" (random offsets depend on seed, epoch and index only).
        frame_buckets: frame counts a clip may be assigned; must contain num_frames.
        include_images: keep images even when no frame bucket is 1; they become still clips of
            the largest frame bucket. Images are always kept when a frame bucket is 1.
        seed: seed of random crops.
        resolution_buckets: (h, w) sizes a clip may be assigned; default [(height, width)].
        allow_upscale: when False, clips smaller than their bucket are skipped ("too small");
            when True they are upscaled with one warning per clip.

    Items: {"pixel_values": float32 (3, T, H, W) in [-1, 1], "caption": str, "path": str}.
    """

    def __init__(self, root, height: int, width: int, num_frames: int, fps: Optional[float] = None,
                 sampling: str = "fps", crop: str = "center", frame_buckets: Optional[Sequence[int]] = None,
                 include_images: bool = False, seed: int = 0,
                 resolution_buckets: Optional[Sequence[tuple[int, int]]] = None, allow_upscale: bool = True):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if fps is not None and sampling != "fps":
            raise ValueError(f"fps is only used with sampling='fps', got sampling={sampling!r}")
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        frame_counts, resolutions = check_buckets(num_frames, height, width, frame_buckets, resolution_buckets)

        self.root = Path(root)
        self.height, self.width, self.num_frames = height, width, num_frames
        self.fps, self.sampling, self.crop, self.seed = fps, sampling, crop, seed
        self.frame_buckets, self.resolution_buckets = frame_counts, resolutions
        self.include_images = include_images or 1 in frame_counts
        self.allow_upscale = allow_upscale
        self.epoch = 0

        report = _scan(self.root, frame_counts[0], fps if sampling == "fps" else None, self.include_images)
        kept, self.buckets = [], []
        for record in report.kept:
            frames, res_h, res_w = assign_bucket(record, frame_counts, resolutions)
            scale = max(res_h / record.height, res_w / record.width)
            if scale > 1 and not allow_upscale:
                report.skipped.append((record.path, f"too small: {record.width}x{record.height} is smaller "
                                                    f"than its bucket {res_w}x{res_h} and allow_upscale=False"))
                continue
            kept.append(record)
            self.buckets.append((frames, res_h, res_w))
        report.kept = kept
        _announce(report, self.root)
        for record, (_, res_h, res_w) in zip(kept, self.buckets):
            scale = max(res_h / record.height, res_w / record.width)
            if scale > 1:
                warnings.warn(f"upscaling {record.path} x{scale:.2f} from {record.width}x{record.height} "
                              f"to cover {res_w}x{res_h} (allow_upscale=False skips such clips)", stacklevel=2)
        self.records, self.report = kept, report

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Random crops depend on (seed, epoch, index): call once per epoch for fresh crops."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        num_frames, height, width = self.buckets[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.crop == "random" else None
        if record.is_image:  # a still clip: its one frame resized and cropped once (one offset per clip), then repeated
            frames = np.repeat(resize_and_crop(read_video(record.path, 1), height, width, crop=self.crop, rng=rng),
                               num_frames, axis=0)
        else:
            frames = read_video(record.path, num_frames, fps=self.fps, sampling=self.sampling)  # (T, H, W, 3)
            frames = resize_and_crop(frames, height, width, crop=self.crop, rng=rng)
        pixel_values = to_pixels(frames)  # (3, T, H, W) in [-1, 1]
        return {"pixel_values": pixel_values, "caption": record.caption, "path": str(record.path)}

    def cache_fields(self) -> dict:
        """Everything that determines this dataset's items, for `emuvideo.data.cache.cache_key`:
        the options, the decoder version and, per item, the file (size, mtime), caption and bucket."""
        from .cache import fingerprint_files  # cache.py does not import this module

        fingerprints = fingerprint_files([r.path for r in self.records], root=self.root)
        items = [fp + [r.caption, list(b)] for fp, r, b in zip(fingerprints, self.records, self.buckets)]
        return {
            "dataset": "ClipDataset", "decode_version": DECODE_VERSION, "root": str(self.root.resolve()),
            "height": self.height, "width": self.width, "num_frames": self.num_frames, "fps": self.fps,
            "sampling": self.sampling, "crop": self.crop, "frame_buckets": self.frame_buckets,
            "resolution_buckets": [list(r) for r in self.resolution_buckets],
            "include_images": self.include_images, "allow_upscale": self.allow_upscale, "items": items,
        }

