"""Video and image files at the library's edge: `(T, H, W, 3)` uint8 in, files out (and back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

# load_image, to_rgb, array_to_image: re-exported, where callers have always imported them from.
from ..preprocessing import (  # noqa: F401
    array_to_image,
    load_image,
    probe_video,
    read_video,
    read_video_and_rate,
    to_rgb,
)
from .files import atomic_path, check_writable_dir

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_video_path(path: str | Path) -> Path:
    """`path` as a `Path` if a video can be written there: a known suffix, not a folder, its folder writable."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"output must end in .mp4 or .gif, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a directory")
    check_writable_dir(path.parent, f"the folder of output {str(path)!r},")
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Write `(T, H, W, 3)` uint8 frames as H.264 `.mp4` or as `.gif`, atomically.

    H.264 (yuv420p) needs even sizes: odd sizes get one repeated edge row/column (keeps the edge colour).
    """
    path = check_video_path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            _write_gif(tmp, frames, fps)
        else:
            _write_mp4(tmp, frames, fps)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av  # PyAV (FFmpeg) loads only where a video file is written or read

    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17", "preset": "medium"}  # near-lossless: these clips are tiny
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    images = [PIL.Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def read_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames `(T, H, W, 3)` uint8 of a video file, upright (its display rotation applied, as training
    reads clips: `emuvideo.preprocessing.read_video`), and its average frame rate (FFmpeg's guess when the file does not say it, else 0)."""
    frames, fps = read_video_and_rate(path)  # one open: the rate is the decoding container's
    return frames, probe_video(path).fps if fps is None else fps  # an image: FFmpeg's rate for it, as before


def save_image(path: str | Path, image: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        PIL.Image.fromarray(image).save(tmp, format=PIL.Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return Path(path)
