"""A motion score for picking high-motion clips for the high-quality fine-tune.

Emu Video selects its fine-tuning clips partly by a motion score computed from H.264 motion vectors
with a sliding-window minimum. We keep the sliding-window minimum but replace motion vectors with
the mean absolute difference between consecutive grayscale frames, which needs no decoder internals
and works on any clip (it looks at pixels, not at the shapes world's labels).

Each difference is divided by the frames' mean gradient magnitude, so the score reads as displacement
(for a solid object translating v px per frame it is v/2, whatever its colour or contrast): a raw
difference would rank a bright slow object above a dark fast one.

The minimum over windows is what makes the score robust: a single cut or flash produces one or two
large frame differences, which raise the windows containing them but not the quietest window, so a
static clip with a flash still scores low. The score is only high if motion is sustained.
"""

import math
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

# Frames are downsampled so their longer side is at most this, making the score independent of
# resolution (and cheap): a 512 px clip and its 64 px version score about the same.
MAX_SIDE = 64
# Consecutive-frame differences averaged per window before taking the minimum over windows.
WINDOW = 4

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


def _to_gray(frames: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Either input layout -> (T, 1, H, W) float32 grayscale in [0, 1]."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"numpy frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    elif isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[0] not in (1, 3) or not frames.is_floating_point():
            raise ValueError(f"tensor frames must be float (C, T, H, W) with C in (1, 3), got {tuple(frames.shape)} {frames.dtype}")
        video = (frames.detach().float().cpu().transpose(0, 1) + 1.0) / 2.0  # [-1, 1] (C, T, H, W) -> [0, 1] (T, C, H, W)
    else:
        raise ValueError(f"frames must be a numpy array or a torch tensor, got {type(frames).__name__}")
    if video.shape[1] == 3:
        weights = torch.tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
        video = (video * weights).sum(dim=1, keepdim=True)
    return video


def frame_differences(frames: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Mean absolute grayscale difference of each consecutive frame pair, shape (T - 1,), in [0, 1].

    Args:
        frames: (T, H, W, 3) uint8 numpy array, or (C, T, H, W) float tensor in [-1, 1] (C = 1 or 3).
    """
    gray = _small_gray(frames)  # (T, 1, h, w)
    if gray.shape[0] < 2:
        raise ValueError(f"motion needs at least 2 frames, got {gray.shape[0]}")
    return (gray[1:] - gray[:-1]).abs().mean(dim=(1, 2, 3)).numpy()


def _small_gray(frames: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """Grayscale `(T, 1, h, w)` with the longer side at most `MAX_SIDE`."""
    gray = _to_gray(frames)
    height, width = gray.shape[-2:]
    if max(height, width) > MAX_SIDE:
        # Area averaging: every source pixel counts once, so small motions are not aliased away.
        scale = MAX_SIDE / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        gray = F.interpolate(gray, size=size, mode="area")
    return gray


def _gradient_energy(frames: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Mean |dI/dx| + |dI/dy| of each frame (same downsampling as `frame_differences`), shape (T,)."""
    gray = _small_gray(frames)
    dx = (gray[..., :, 1:] - gray[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (gray[..., 1:, :] - gray[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return (dx + dy).numpy()


def motion_score(frames: Union[np.ndarray, torch.Tensor]) -> float:
    """Sustained motion of a clip: the minimum over sliding windows of the mean frame difference.

    Args:
        frames: (T, H, W, 3) uint8 numpy array, or (C, T, H, W) float tensor in [-1, 1] (C = 1 or 3).

    Returns:
        A score >= 0 (about half the displacement in px per frame at <= 64 px): 0 for a static clip (whatever happens in a single frame), larger for
        faster or larger motion. Windows are `WINDOW` consecutive frame pairs, or all pairs when
        the clip is shorter.
    """
    differences = frame_differences(frames)  # (T - 1,)
    energy = _gradient_energy(frames)  # (T,)
    # Normalise by the pair's edge content: displacement rather than brightness change. The floor keeps
    # a flat frame (no edges, e.g. a fade) from dividing by zero.
    differences = differences / np.maximum((energy[1:] + energy[:-1]) / 2, 1e-3)
    window = min(WINDOW, len(differences))
    window_means = np.convolve(differences, np.ones(window) / window, mode="valid")
    return float(window_means.min())


def select_high_motion(scores: Sequence[float], fraction: float) -> list[int]:
    """Indices of the top `fraction` of clips by motion score, in ascending index order.

    `ceil(fraction * len(scores))` clips are kept; ties are broken by the lower index.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    keep = math.ceil(fraction * len(scores))
    order = np.argsort(-scores, kind="stable")  # highest first, stable so ties keep index order
    return sorted(int(i) for i in order[:keep])
