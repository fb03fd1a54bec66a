"""Measuring frame interpolation: PSNR, SSIM, and the baselines an interpolation model must beat.

Every function here takes frames at the library's edge, uint8 `(T, H, W, 3)`. A baseline takes K key frames
and a factor and returns `(K-1)·factor + 1` frames with key frame i at index `i·factor`, as
`EmuInterpolationPipeline` does:

- `linear_blend`: each in-between frame the linear mix of its two neighbouring keys, weighted by time;
- `repeat_frames`: each in-between frame a copy of the key before it (what a player does at a higher rate);
- `ffmpeg_minterpolate`: FFmpeg's motion-compensated interpolation (the `minterpolate` filter, through
  PyAV's filter graph): a real tool no one here wrote.

`psnr` and `ssim` compare two frames (or two stacks of frames, as one number); `bootstrap_interval` puts a
95% interval on a mean over clips.
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0  # identical frames: the MSE is floored at 255² · 1e-10, so PSNR stays finite (and averages)
# Wang et al. 2004 (IEEE TIP 13(4)), "Image quality assessment: from error visibility to structural similarity".
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Wang et al.'s ssim_index is run on greyscale images
# minterpolate's motion-compensated mode (`mi_mode=mci`) with adaptive overlapped block motion compensation,
# bidirectional motion estimation and variable-size block MC (the settings usually given for its best quality).
MINTERPOLATE_OPTIONS = "mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1"
MINTERPOLATE_MIN_SIZE = 32  # measured with FFmpeg 8.1 (PyAV 18): smaller frames fail to configure the filter


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"frames must be two (..., H, W, 3) arrays of one shape, got {a.shape} and {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB, peak 255) of uint8 `(..., H, W, 3)` arrays: one number over all pixels.

    Capped at `PSNR_CAP_DB` (identical arrays), so that means over frames stay finite.
    """
    a, b = _check_pair(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 255.0**2 * 10 ** (-PSNR_CAP_DB / 10))))


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # (11,): the 11x11 window is its outer product (separable)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004) of uint8 `(..., H, W, 3)` arrays, on luma, as one number.

    The standard definition: an 11x11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, L = 255, local means,
    variances and covariance weighted by the window (population form), over the positions where the window lies
    inside the image ("valid", as Wang's `ssim_index.m`); the SSIM map averaged over those positions and over
    frames. Luma is BT.601 (0.299 R + 0.587 G + 0.114 B), unrounded. Frames must be at least 11x11.
    """
    a, b = _check_pair(a, b)
    h, w = a.shape[-3:-1]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {w}x{h}")
    luma = torch.tensor(LUMA, dtype=torch.float64)
    x, y = (torch.from_numpy(v.reshape(-1, h, w, 3)).double() @ luma for v in (a, b))  # (N, H, W)
    x, y = x[:, None], y[:, None]  # (N, 1, H, W)
    g = _gaussian_window()

    def blur(z: torch.Tensor) -> torch.Tensor:  # the window-weighted local mean, valid positions only
        return F.conv2d(F.conv2d(z, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


def _check_keys(keys: np.ndarray, factor: int) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.dtype != np.uint8 or keys.ndim != 4 or keys.shape[-1] != 3:
        raise ValueError(f"key frames must be uint8 (T, H, W, 3), got {keys.dtype} {keys.shape}")
    if keys.shape[0] < 2:
        raise ValueError(f"interpolation needs at least 2 key frames, got {keys.shape[0]}")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    return keys


def linear_blend(keys: np.ndarray, factor: int) -> np.ndarray:
    """In-between frame j of the gap after key i: ((factor - j)·key_i + j·key_(i+1)) / factor, rounded.

    Args: keys `(K, H, W, 3)` uint8, factor. Returns `((K-1)·factor + 1, H, W, 3)` uint8, keys unchanged.
    """
    keys = _check_keys(keys, factor)
    w = (np.arange(factor, dtype=np.float64) / factor)[None, :, None, None, None]  # (1, factor, 1, 1, 1)
    k = keys.astype(np.float64)
    gaps = (1 - w) * k[:-1, None] + w * k[1:, None]  # (K-1, factor, H, W, 3): j = 0 is key i itself
    frames = np.concatenate([gaps.reshape(-1, *keys.shape[1:]), k[-1:]])
    return np.rint(frames).astype(np.uint8)


def repeat_frames(keys: np.ndarray, factor: int) -> np.ndarray:
    """Each in-between frame a copy of the key before it. Returns `((K-1)·factor + 1, H, W, 3)` uint8."""
    keys = _check_keys(keys, factor)
    return np.concatenate([np.repeat(keys[:-1], factor, axis=0), keys[-1:]])


def ffmpeg_minterpolate(keys: np.ndarray, factor: int, fps: int, options: str = MINTERPOLATE_OPTIONS) -> np.ndarray:
    """FFmpeg's `minterpolate` filter raising `keys` from `fps` to `fps·factor`, through PyAV's filter graph.

    The graph is buffer (rgb24) -> format=yuv444p -> minterpolate=fps={fps·factor}:{options} -> format=rgb24 ->
    buffersink. minterpolate works in YUV; 4:4:4 keeps full colour resolution, and the key frames come back
    through the two conversions at ~60 dB (not bit-exact). Key i is pushed with pts i in time base 1/fps, so
    output frame n (pts n in 1/(fps·factor)) lies at time n / (fps·factor) and output `i·factor` is key i.

    minterpolate emits an output frame only once the input frame after it has arrived, so the last key alone
    would never come out: a copy of it is pushed one key interval later, and the frames interpolated towards
    that copy (past the last key) are dropped.

    Returns `((K-1)·factor + 1, H, W, 3)` uint8.
    """
    keys = _check_keys(keys, factor)
    if not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be an integer >= 1, got {fps!r}")
    t, h, w, _ = keys.shape
    if h < MINTERPOLATE_MIN_SIZE or w < MINTERPOLATE_MIN_SIZE:  # FFmpeg refuses the graph with a bare EINVAL
        side = MINTERPOLATE_MIN_SIZE
        raise ValueError(f"minterpolate needs frames of at least {side}x{side} px, got {w}x{h}")
    time_base = Fraction(1, fps)
    graph = av.filter.Graph()
    nodes = [
        graph.add_buffer(width=w, height=h, format="rgb24", time_base=time_base),
        graph.add("format", "yuv444p"),
        graph.add("minterpolate", f"fps={fps * factor}:{options}"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    graph.link_nodes(*nodes)
    graph.configure()

    out: list[av.VideoFrame] = []

    def drain() -> None:
        while True:
            try:
                out.append(graph.vpull())
            except (av.error.BlockingIOError, av.error.EOFError):  # nothing more until the next push / the end
                return

    for i, key in enumerate([*keys, keys[-1]]):  # the last key twice: see the docstring
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(key), format="rgb24")
        frame.pts, frame.time_base = i, time_base
        graph.vpush(frame)
        drain()
    graph.vpush(None)  # end of stream: flush
    drain()

    total = (t - 1) * factor + 1
    pts = [f.pts for f in out[:total]]
    if pts != list(range(total)) or any(f.time_base != Fraction(1, fps * factor) for f in out[:total]):
        base = out[0].time_base if out else None
        raise RuntimeError(f"minterpolate returned frames at pts {pts[:8]}... (time base {base}); "
                           f"expected 0..{total - 1} in 1/{fps * factor}")
    return np.stack([f.to_ndarray(format="rgb24") for f in out[:total]])


BASELINES = {
    "linear blend": lambda keys, factor, fps: linear_blend(keys, factor),
    "minterpolate": ffmpeg_minterpolate,
    "repetition": lambda keys, factor, fps: repeat_frames(keys, factor),
}


def in_between_scores(frames: np.ndarray, truth: np.ndarray, factor: int) -> dict[str, float]:
    """Mean per-frame PSNR and SSIM of `frames` against `truth` (both `(N, H, W, 3)` uint8) over the in-between
    frames only (indices not divisible by `factor`; the key frames are given, not interpolated)."""
    frames, truth = _check_pair(frames, truth)
    between = [n for n in range(frames.shape[0]) if n % factor]
    if not between:
        raise ValueError(f"no in-between frame in {frames.shape[0]} frames at factor {factor}")
    return {
        "psnr": float(np.mean([psnr(frames[n], truth[n]) for n in between])),
        "ssim": float(np.mean([ssim(frames[n], truth[n]) for n in between])),
    }


def bootstrap_interval(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one per clip): resample clips with replacement.

    Deterministic (seeded). One value gives (value, value); none gives NaNs.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    means = v[np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


__all__ = [
    "BASELINES", "MINTERPOLATE_OPTIONS", "PSNR_CAP_DB", "bootstrap_interval", "ffmpeg_minterpolate",
    "in_between_scores", "linear_blend", "psnr", "repeat_frames", "ssim",
]
