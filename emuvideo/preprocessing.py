"""One preprocessing path for images and videos, used by training (`emuvideo.data.clips`) and inference
(`animate --image`, `interpolate`, `eval --videos`, images passed to the pipelines) alike, so that a file
gives the same pixels both ways.

- reading: images with Pillow (`load_image`), videos with PyAV (`read_video`; PyAV is imported only when a
  video is probed or read), each read opening its own container and stopping once it has enough frames;
- rotation: a photo's EXIF orientation and a clip's display matrix are applied: frames come out upright;
- mode and bit depth: palette, grey, CMYK, 1-bit ... become 8-bit RGB; 16- and 32-bit greys are rescaled
  (Pillow's own conversion clips them); float greys are read in [0, 1];
- alpha: composited **on white** (a transparent PNG trains and animates on the same background);
- resize and crop: scaled to cover the target size (aspect kept) with Pillow's antialiased filters (Lanczos
  when shrinking, bicubic when enlarging), then cropped (`resize_and_crop`).

Layouts: frames are `(T, H, W, 3)` uint8 (the edge of the library); `to_pixels` makes the float tensor
`(3, T, H, W)` in [-1, 1] a dataset item holds, and that the pipelines take with a batch axis in front.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps

if TYPE_CHECKING:  # torch is imported by `to_pixels` alone: reading and writing videos (utils.video) stays PyAV only
    import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SAMPLINGS = ("fps", "even", "head")
CROPS = ("center", "random")
_EXIF_ROTATION = {3: 180, 6: 270, 8: 90}  # EXIF orientation -> counter-clockwise degrees
_EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations whose upright picture is the stored one turned a quarter
_EPS = 1e-6  # seconds; timestamps are floats derived from exact rationals


class ClipDecodeError(RuntimeError):
    """A clip could not be decoded into the frames asked for; the message names the file."""


def _av():
    import av  # PyAV (FFmpeg) loads only where a video is probed or read

    if not hasattr(av.VideoFrame, "rotation"):  # without it, rotated phone clips would decode sideways
        raise ImportError(f"emuvideo needs PyAV with VideoFrame.rotation (>= 14) to read videos, found {av.__version__}")
    return av


def decode_errors() -> tuple[type[BaseException], ...]:
    """What a broken file raises while probing or decoding (PIL's UnidentifiedImageError is an OSError)."""
    return (_av().FFmpegError, OSError, ValueError, EOFError, IndexError, PIL.Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------
# Images: mode, bit depth, alpha, EXIF orientation
# ---------------------------------------------------------------------------------------------


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any Pillow image -> 8-bit RGB, as a viewer shows it.

    - EXIF orientation is applied (a phone photo taken upright comes out upright);
    - 16-bit ("I;16*") and 32-bit integer ("I") greys are rescaled from [0, 65535], float ("F") from
      [0, 1], to [0, 255] (Pillow's own conversion clips them, so a 16-bit mid-grey would turn white);
    - transparency (RGBA, LA, PA, a palette's or a single colour's tRNS, a 16-bit grey's tRNS) is
      composited on white;
    - palette, CMYK, YCbCr, 1-bit and the rest go through Pillow's `convert("RGB")`.
    """
    image = PIL.ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        peak = 1.0 if mode == "F" else 65535.0
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.nan_to_num(values / peak * 255.0), 0, 255).round().astype(np.uint8)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int) and mode != "F":  # a grey PNG's tRNS: that one value is see-through
            grey[values == transparent] = 255
        image = PIL.Image.fromarray(grey)
    elif image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, rgba)
    try:
        return image.convert("RGB")
    except ValueError as err:  # e.g. LAB or HSV without a colour-management profile
        raise ValueError(f"image mode {mode!r} cannot be converted to RGB: {err}") from None


def array_to_image(array: np.ndarray) -> PIL.Image.Image:
    """An `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` array -> a Pillow image, by dtype:
    uint8 as is, uint16 from [0, 65535], bool as black/white, float from [0, 1] (as diffusers' image
    processor takes numpy images). Anything else is refused with its shape and dtype."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or 0 in a.shape:
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        check_unit_floats(a, "a float image array")
        a = (a * 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, uint16, bool or float in [0, 1], got {a.dtype}")
    return PIL.Image.fromarray(a)


def check_unit_floats(a: np.ndarray, what: str) -> None:
    """Refuse float pixels that are not finite values in [0, 1] (diffusers' numpy images and "np" videos), naming `what`."""
    if not np.isfinite(a).all():
        raise ValueError(f"{what} must hold finite values in [0, 1], got NaN or inf")
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"{what} must hold values in [0, 1], got min {a.min()} max {a.max()}")


def load_image(path: str | Path) -> PIL.Image.Image:
    """An 8-bit RGB image from a file, as it looks (see `to_rgb`), or a one-line error naming the path.

    Refused: a missing file, a folder, what is not an image, a truncated image, and a decompression bomb
    (more pixels than `PIL.Image.MAX_IMAGE_PIXELS`, which Pillow only warns about below twice that).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, inside this try
                return to_rgb(image)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise ValueError(f"image {str(path)!r} is refused as a possible decompression bomb: {err}") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises SyntaxError for some bad headers
        raise ValueError(f"image {str(path)!r} cannot be read: {err}") from None


# ---------------------------------------------------------------------------------------------
# Probing (header + first frame, never the whole clip)
# ---------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What a file holds: the upright (displayed) size, `rotation` in counter-clockwise degrees (0, 90, 180
    or 270), the duration in seconds, the native average frame rate (0 for images) and frame count."""

    width: int
    height: int
    duration: float
    fps: float
    frames: int
    rotation: int


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise display rotation in degrees -> number of np.rot90 quarter turns."""
    return int(round(rotation / 90)) % 4


def _declared_duration(container, stream) -> Optional[float]:
    """Duration from the container's header (no decoding); None when it does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / _av().time_base
    return None


def _count_packets(path: Path) -> tuple[int, float]:
    """Frame count and duration by demuxing (reads the file, decodes nothing): the fallback for
    containers whose header does not say (some mkv/webm)."""
    count, start, end = 0, math.inf, 0.0
    with _av().open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:  # flush packet
                continue
            count += 1
            start = min(start, float(packet.pts * stream.time_base))
            end = max(end, float((packet.pts + (packet.duration or 0)) * stream.time_base))
    return count, (end - start if count else 0.0)


def probe_video(path: str | Path) -> Probe:
    """Container/stream info plus the first decoded frame (which proves the clip decodes and carries the
    display rotation)."""
    with _av().open(str(path)) as container:
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
        counted, counted_duration = _count_packets(Path(path))
        frames = frames if frames > 0 else counted
        duration = duration if duration is not None else counted_duration
    turns = _quarter_turns(first.rotation)
    width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
    return Probe(width, height, duration, float(rate) if rate else 0.0, frames, 90 * turns)


def probe_image(path: str | Path) -> Probe:
    """An image's upright size (its EXIF orientation applied, as `to_rgb` does), without decoding it. An image
    `load_image` refuses as a decompression bomb raises `PIL.Image.DecompressionBombError` here already."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            with PIL.Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(0x0112, 1)
        except PIL.Image.DecompressionBombWarning as err:
            raise PIL.Image.DecompressionBombError(str(err)) from None
    if orientation in _EXIF_TRANSPOSED:
        width, height = height, width
    return Probe(width, height, 0.0, 0.0, 1, _EXIF_ROTATION.get(orientation, 0))


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


def _take_head(frames: Iterator, num_frames: Optional[int]) -> list[np.ndarray]:
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


def read_video(path: str | Path, num_frames: Optional[int] = None, fps: Optional[float] = None,
               sampling: str = "fps") -> np.ndarray:
    """Decode upright RGB frames of a clip.

    Args:
        path: a video, or an image (`IMAGE_EXTENSIONS`: a still clip, read by `load_image`).
        num_frames: T, the number of frames returned; None returns every native frame.
        fps: for sampling="fps", the target rate: frame k is the last frame whose presentation
            time is <= k / fps (right for variable-frame-rate clips). None takes native frames.
        sampling: "fps" (above), "even" (T frames evenly spaced over the whole clip, first and
            last included) or "head" (the first T frames).

    Returns:
        (T, H, W, 3) uint8, H x W the upright (displayed) size.

    Raises:
        ClipDecodeError: naming the file, when it cannot be decoded or is too short.
    """
    return read_video_and_rate(path, num_frames, fps, sampling)[0]


def read_video_and_rate(path: str | Path, num_frames: Optional[int] = None, fps: Optional[float] = None,
                        sampling: str = "fps") -> tuple[np.ndarray, Optional[float]]:
    """`read_video`'s frames, and the clip's average frame rate read from the same open container (as
    `probe_video(path).fps`: FFmpeg's guess when the file does not say it, else 0); None for an image."""
    path = Path(path)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if fps is not None and sampling != "fps":
        raise ValueError(f"fps is only used with sampling='fps', got sampling={sampling!r}")
    if num_frames is None and (fps is not None or sampling == "even"):
        raise ValueError(f"num_frames=None reads every native frame: it takes no fps (got {fps}) and no sampling='even'")
    try:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            # An image asked for as T frames is a still clip.
            return np.repeat(np.asarray(load_image(path))[None], num_frames or 1, axis=0), None
        native = probe_video(path).frames if sampling == "even" else None
        with _av().open(str(path)) as container:
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
            rate = stream.average_rate or stream.guessed_rate
    except decode_errors() as e:
        raise ClipDecodeError(f"could not decode {path}: {type(e).__name__}: {e}") from e
    if len(frames) < (num_frames or 1):
        raise ClipDecodeError(f"could not decode {path}: asked for {num_frames or 'all'} frames {how}, "
                              f"the clip yields only {len(frames)}")
    return np.stack(frames), float(rate) if rate else 0.0


# ---------------------------------------------------------------------------------------------
# Resizing, cropping, tensors
# ---------------------------------------------------------------------------------------------


def cover_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) an h x w picture is scaled to so that it covers height x width, aspect kept."""
    scale = max(height / h, width / w)
    return max(height, round(h * scale)), max(width, round(w * scale))


def resize_and_crop(frames: np.ndarray, height: int, width: int, crop: str = "center",
                    rng: Optional[np.random.Generator] = None, allow_upscale: bool = True) -> np.ndarray:
    """Scale (T, H, W, 3) uint8 frames to cover height x width (aspect kept), then crop to it.

    The one resizer of training and inference: Pillow's Lanczos when shrinking (antialiased: every source
    pixel counts, no aliasing of fine patterns), bicubic when enlarging.

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
    new_h, new_w = cover_size(h, w, height, width)
    if (new_h, new_w) != (h, w):
        resample = PIL.Image.Resampling.LANCZOS if scale < 1 else PIL.Image.Resampling.BICUBIC
        frames = np.stack([np.asarray(PIL.Image.fromarray(f).resize((new_w, new_h), resample)) for f in frames])
    if crop == "center":
        top, left = (new_h - height) // 2, (new_w - width) // 2
    else:
        rng = rng if rng is not None else np.random.default_rng()
        top, left = int(rng.integers(0, new_h - height + 1)), int(rng.integers(0, new_w - width + 1))
    return np.ascontiguousarray(frames[:, top:top + height, left:left + width])


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> float32 (3, T, H, W) in [-1, 1], the layout of a dataset item."""
    import torch

    # np.array copies: `frames` may be a read-only view of a Pillow image, which torch will not wrap.
    return torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
