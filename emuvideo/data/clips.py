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
- rotated phone clips: the container's display matrix is honoured, frames come out upright;
- decoding: each read opens its own container (thread- and worker-safe), streams frames and stops
  as soon as it has enough, so a long clip is never held in memory;
- a clip that breaks after the scan raises `ClipDecodeError` naming the file;
- a path that leaves the folder (a metadata row `../x.mp4` or `/abs/x.mp4`, a symlink pointing out, a caption
  `.txt` linking out) is skipped and named like any unusable clip ("outside folder"), and never opened.

Layouts: numpy videos are (T, H, W, 3) uint8 (the edge of the library); dataset items are float
tensors (3, T, H, W) in [-1, 1], so a batch is (B, 3, T, H, W) as diffusers' UNet3D expects.
"""

import csv
import json
import logging
import math
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

if not hasattr(av.VideoFrame, "rotation"):  # without it, rotated phone clips would decode sideways
    raise ImportError(f"emuvideo.data.clips needs PyAV with VideoFrame.rotation (>= 14), found {av.__version__}")

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".gif", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SAMPLINGS = ("fps", "even", "head")
CROPS = ("center", "random")
# Bump when decoding/resizing changes what a clip turns into, so latent caches keyed on the
# dataset (`ClipDataset.cache_fields`) are rebuilt instead of silently reused.
DECODE_VERSION = 1

_PATH_KEYS = ("video_path", "file_name", "path")
_CAPTION_KEYS = ("caption", "text")
# Order of the reason categories in the summary line; others follow alphabetically.
_REASON_ORDER = ("corrupt", "too short", "no caption", "missing file", "outside folder", "too small", "image")
_EXIF_ROTATION = {3: 180, 6: 270, 8: 90}  # EXIF orientation -> counter-clockwise degrees
_EPS = 1e-6  # seconds; timestamps are floats derived from exact rationals
# What a broken file raises while probing/decoding (PIL's UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


class ClipDecodeError(RuntimeError):
    """A clip could not be decoded into the frames asked for; the message names the file."""


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


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise display rotation in degrees -> number of np.rot90 quarter turns."""
    return int(round(rotation / 90)) % 4


def _declared_duration(container, stream) -> Optional[float]:
    """Duration from the container's header (no decoding); None when it does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _count_packets(path: Path) -> tuple[int, float]:
    """Frame count and duration by demuxing (reads the file, decodes nothing): the fallback for
    containers whose header does not say (some mkv/webm)."""
    count, start, end = 0, math.inf, 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:  # flush packet
                continue
            count += 1
            start = min(start, float(packet.pts * stream.time_base))
            end = max(end, float((packet.pts + (packet.duration or 0)) * stream.time_base))
    return count, (end - start if count else 0.0)


@dataclass
class _Probe:
    width: int  # upright
    height: int
    duration: float
    fps: float
    frames: int  # native
    rotation: int


def _probe_video(path: Path) -> _Probe:
    """Container/stream info plus the first decoded frame (which proves the clip decodes and
    carries the display rotation); never decodes the whole clip."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        first = next(container.decode(stream), None)
        if first is None:
            raise ValueError("no decodable video frames")
        rate = stream.average_rate or stream.guessed_rate
        duration = _declared_duration(container, stream)
        frames = stream.frames
    if duration is None or frames <= 0:
        counted, counted_duration = _count_packets(path)
        frames = frames if frames > 0 else counted
        duration = duration if duration is not None else counted_duration
    turns = _quarter_turns(first.rotation)
    width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
    return _Probe(width, height, duration, float(rate) if rate else 0.0, frames, 90 * turns)


def _probe_image(path: Path) -> _Probe:
    with Image.open(path) as image:
        width, height = image.size
        rotation = _EXIF_ROTATION.get(image.getexif().get(0x0112, 1), 0)
    if rotation in (90, 270):
        width, height = height, width
    return _Probe(width, height, 0.0, 0.0, 1, rotation)


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
        probe = _probe_image(path) if is_image else _probe_video(path)
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
# Decoding
# ---------------------------------------------------------------------------------------------


class _Upright:
    """A decoded frame, converted to an upright RGB array once, on first use."""

    def __init__(self, frame):
        self.frame, self._rgb = frame, None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            rgb = self.frame.to_ndarray(format="rgb24")  # (H, W, 3) as stored
            # `frame.rotation` is FFmpeg's display-matrix angle: the stored picture is shown turned
            # that many degrees counter-clockwise (ffmpeg's autorotate does the same).
            turns = _quarter_turns(self.frame.rotation)
            self._rgb = np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
            self.frame = None  # free the decoder buffer
        return self._rgb


def _take_head(frames: Iterator, num_frames: int) -> list[np.ndarray]:
    out = []
    for frame in frames:
        out.append(_Upright(frame).rgb())
        if len(out) == num_frames:
            break
    return out


def _take_indices(frames: Iterator, indices: Sequence[int]) -> list[np.ndarray]:
    wanted, out = set(indices), []
    for i, frame in enumerate(frames):
        if i in wanted:
            out.append(_Upright(frame).rgb())
            if len(out) == len(wanted):
                break
    return out


def _take_at_times(frames: Iterator, targets: Sequence[float], end: Optional[float]) -> list[np.ndarray]:
    """For each target time (seconds from the first frame) the last frame whose pts <= it.

    Frames are streamed: a frame is kept only while it may still be picked, and decoding stops at
    the first frame past the last target. Targets after the last frame's pts are filled with it
    while they fall before the clip's end (`end`, or the last frame's pts + duration).
    """
    out, k, prev, t0, last_end = [], 0, None, None, 0.0
    for frame in frames:
        if frame.pts is None:
            raise ValueError(f"frame {len(out)} has no timestamp")
        t = float(frame.time)
        t0 = t if t0 is None else t0
        t -= t0
        while k < len(targets) and prev is not None and t > targets[k] + _EPS:
            out.append(prev.rgb())
            k += 1
        if k == len(targets):
            return out
        duration = getattr(frame, "duration", None)  # in time_base units; None when unknown
        frame_duration = float(duration * frame.time_base) if duration else 0.0
        prev, last_end = _Upright(frame), t + frame_duration
    end = max(end or 0.0, last_end)
    while k < len(targets) and prev is not None and targets[k] < end - _EPS:
        out.append(prev.rgb())
        k += 1
    return out


def _read_image(path: Path, num_frames: int) -> np.ndarray:
    with Image.open(path) as image:
        rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    # An image asked for as T frames is a still clip.
    return np.repeat(rgb[None], num_frames, axis=0)


def read_video(path, num_frames: int, fps: Optional[float] = None, sampling: str = "fps") -> np.ndarray:
    """Decode `num_frames` upright RGB frames of a clip.

    Args:
        path: a video (any of `VIDEO_EXTENSIONS`) or an image (a still clip).
        num_frames: T, the number of frames returned.
        fps: for sampling="fps", the target rate: frame k is the last frame whose presentation
            time is <= k / fps (right for variable-frame-rate clips). None takes native frames.
        sampling: "fps" (above), "even" (T frames evenly spaced over the whole clip, first and
            last included) or "head" (the first T frames).

    Returns:
        (T, H, W, 3) uint8, H x W the upright (displayed) size.

    Raises:
        ClipDecodeError: naming the file, when it cannot be decoded or is too short.
    """
    path = Path(path)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if fps is not None and sampling != "fps":
        raise ValueError(f"fps is only used with sampling='fps', got sampling={sampling!r}")
    try:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return _read_image(path, num_frames)
        native = _probe_video(path).frames if sampling == "even" else None
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            decoded = container.decode(stream)
            if sampling == "even":
                how = "evenly spaced"
                indices = np.linspace(0, native - 1, num_frames).round().astype(int).tolist()
                frames = _take_indices(decoded, indices) if num_frames <= native else []
            elif sampling == "fps" and fps is not None:
                how = f"at {fps:g} fps"
                frames = _take_at_times(decoded, [k / fps for k in range(num_frames)],
                                        _declared_duration(container, stream))
            else:
                how = "(native frames)"
                frames = _take_head(decoded, num_frames)
    except _DECODE_ERRORS as e:
        raise ClipDecodeError(f"could not decode {path}: {type(e).__name__}: {e}") from e
    if len(frames) < num_frames:
        raise ClipDecodeError(f"could not decode {path}: asked for {num_frames} frames {how}, "
                              f"the clip yields only {len(frames)}")
    return np.stack(frames)


def resize_and_crop(frames: np.ndarray, height: int, width: int, crop: str = "center",
                    rng: Optional[np.random.Generator] = None, allow_upscale: bool = True) -> np.ndarray:
    """Scale (T, H, W, 3) uint8 frames to cover height x width (aspect kept), then crop to it.

    Args:
        crop: "center", or "random" (offsets drawn from `rng`, one per clip).
        allow_upscale: when False, a clip smaller than the target raises instead of being
            scaled up.

    Returns:
        (T, height, width, 3) uint8.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    _, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    if scale > 1 and not allow_upscale:
        raise ValueError(f"{w}x{h} frames would need upscaling x{scale:.2f} to cover {width}x{height} "
                         "and allow_upscale=False")
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if crop == "center":
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        rng = rng if rng is not None else np.random.default_rng()
        top, left = int(rng.integers(0, new_h - height + 1)), int(rng.integers(0, new_w - width + 1))
    return np.ascontiguousarray(frames[:, top:top + height, left:left + width])


# ---------------------------------------------------------------------------------------------
# Dataset and bucketing
# ---------------------------------------------------------------------------------------------


def _nearest_resolution(width: int, height: int, resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (h, w) bucket whose aspect ratio is closest to the clip's (in log space: 2:1 and 1:2
    are equally far from 1:1)."""
    aspect = math.log(width / height)
    return min(resolutions, key=lambda hw: abs(math.log(hw[1] / hw[0]) - aspect))


class ClipDataset(torch.utils.data.Dataset):
    """Training items from a folder of captioned clips.

    Each clip is assigned one bucket (num_frames, height, width): the resolution from
    `resolution_buckets` closest in aspect ratio, and the largest of `frame_buckets` it can fill.
    Items of the same bucket stack; batch them with
    `BucketBatchSampler(dataset.buckets, batch_size)`.

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
        frame_counts = sorted(set(frame_buckets)) if frame_buckets is not None else [num_frames]
        if num_frames not in frame_counts or any(not isinstance(t, int) or t < 1 for t in frame_counts):
            raise ValueError(f"frame_buckets must be ints >= 1 containing num_frames={num_frames}, "
                             f"got {frame_buckets}")
        resolutions = [tuple(r) for r in resolution_buckets] if resolution_buckets else [(height, width)]
        if any(len(r) != 2 or min(r) < 1 for r in resolutions):
            raise ValueError(f"resolution_buckets must be (height, width) pairs >= 1, got {resolution_buckets}")

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
            res_h, res_w = _nearest_resolution(record.width, record.height, resolutions)
            scale = max(res_h / record.height, res_w / record.width)
            if scale > 1 and not allow_upscale:
                report.skipped.append((record.path, f"too small: {record.width}x{record.height} is smaller "
                                                    f"than its bucket {res_w}x{res_h} and allow_upscale=False"))
                continue
            fill = [t for t in frame_counts if t <= record.num_frames]
            frames = frame_counts[-1] if record.is_image and 1 not in frame_counts else fill[-1]
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
        frames = read_video(record.path, num_frames, fps=self.fps, sampling=self.sampling)  # (T, H, W, 3)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.crop == "random" else None
        frames = resize_and_crop(frames, height, width, crop=self.crop, rng=rng)
        pixel_values = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (3, T, H, W)
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


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that share a bucket, so every batch stacks.

    Use as `DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset.buckets, batch_size))`.
    The order depends only on (seed, epoch): call `set_epoch` each epoch for a new shuffle.

    Args:
        buckets: one hashable bucket per dataset index, e.g. `ClipDataset.buckets`.
        batch_size: indices per batch.
        shuffle: shuffle within buckets and the order of batches.
        drop_last: drop each bucket's last incomplete batch (warns how many items that drops).
        seed: shuffle seed.
    """

    def __init__(self, buckets: Sequence, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.groups: dict = defaultdict(list)
        for index, bucket in enumerate(buckets):
            self.groups[bucket].append(index)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.epoch = 0
        dropped = {b: len(ix) % batch_size for b, ix in self.groups.items() if len(ix) % batch_size}
        if drop_last and dropped:
            warnings.warn(f"drop_last=True drops {sum(dropped.values())} of {len(buckets)} items every epoch "
                          f"(bucket sizes not a multiple of batch_size={batch_size}: "
                          + ", ".join(f"{b}: {n} left over" for b, n in dropped.items()) + ")", stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for indices in self.groups.values():
            order = [indices[i] for i in rng.permutation(len(indices))] if self.shuffle else indices
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)

    def __len__(self) -> int:
        rounding = (lambda n: n // self.batch_size) if self.drop_last else (lambda n: -(-n // self.batch_size))
        return sum(rounding(len(ix)) for ix in self.groups.values())
