"""Video and image files at the library's edge: `(T, H, W, 3)` uint8 in, files out (and back)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

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
    """All frames `(T, H, W, 3)` uint8 and the average frame rate of a video file (for tests and evaluation)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        fps = float(stream.average_rate) if stream.average_rate else 0.0
    return frames, fps


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


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any Pillow image -> 8-bit RGB, as a viewer shows it.

    - EXIF orientation is applied (a phone photo taken upright comes out upright);
    - 16-bit ("I;16*") and 32-bit integer ("I") greys are rescaled from [0, 65535], float ("F") from
      [0, 1], to [0, 255] (Pillow's own conversion clips them, so a 16-bit mid-grey would turn white);
    - transparency (RGBA, LA, PA, a palette's or a single colour's tRNS) is composited on white;
    - palette, CMYK, YCbCr, 1-bit and the rest go through Pillow's `convert("RGB")`.
    """
    image = PIL.ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        peak = 1.0 if mode == "F" else 65535.0
        grey = np.asarray(image, dtype=np.float64) / peak * 255.0
        image = PIL.Image.fromarray(np.clip(np.nan_to_num(grey), 0, 255).round().astype(np.uint8))
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
        if not np.isfinite(a).all():
            raise ValueError("a float image array must hold finite values in [0, 1], got NaN or inf")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"a float image array must hold values in [0, 1], got min {a.min()} max {a.max()}")
        a = (a * 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, uint16, bool or float in [0, 1], got {a.dtype}")
    return PIL.Image.fromarray(a)


def save_image(path: str | Path, image: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        PIL.Image.fromarray(image).save(tmp, format=PIL.Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return Path(path)
