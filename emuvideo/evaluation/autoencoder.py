"""How well an autoencoder keeps the shapes world: reconstruction PSNR, and the strict judge on reconstructed clips.

A latent diffusion model can draw no better than its autoencoder decodes, so both numbers are ceilings: PSNR for
the interpolation model (docs/interpolation.md), the strict shape and size checks for every generated video.
Held-back frames and clips come from their own seeded streams (`random.Random(seed)`, and
`random.Random(40_000 + i)` per clip), never drawn by a training set (those use `ShapesDataset`'s streams).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..data.shapes import REFERENCE_FPS, canonical_caption, render_clip, sample_spec
from ..models.encoding import decode_frames, encode_frames, to_uint8
from ..preprocessing import to_pixels
from .evaluate import EvalReport, judge_clip
from .interpolation import psnr
from .prompt_sets import target_of


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 frames -> their reconstructions through `vae` (encoder mode, then decoder), uint8."""
    device = next(vae.parameters()).device
    out = []
    for part in np.array_split(frames, max(1, len(frames) // chunk)):
        x = to_pixels(part)[None].to(device)  # (1, 3, N, H, W) in [-1, 1]
        out.append(to_uint8(decode_frames(vae, encode_frames(vae, x)))[0])
    return np.concatenate(out)


def psnr_per_frame(vae, frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 frames -> the PSNR (dB) of each frame's reconstruction through `vae`."""
    return np.array([psnr(r, f) for r, f in zip(reconstruct(vae, frames), frames)])


def autoencoder_report(vae, num_frames: int = 256, num_clips: int = 64, seed: int = 1) -> dict:
    """PSNR over `num_frames` held-back stills and the strict judge's verdicts on `num_clips` reconstructed clips.

    Returns {"psnr_mean", "psnr_min", "frames", "clips", "strict": {attribute: {"k", "n", "rate", "low", "high"}},
    "true_clips_strict_all"}: the last is the judge on the true clips, which any reconstruction rate is read against.
    """
    rng = random.Random(seed)
    stills = np.stack([render_clip(sample_spec(rng, 1, REFERENCE_FPS), 1)[0] for _ in range(num_frames)])
    p = psnr_per_frame(vae, stills)
    report, true_all = EvalReport(), 0
    for i in range(num_clips):
        spec = sample_spec(random.Random(40_000 + i), 16, REFERENCE_FPS)
        clip = render_clip(spec, 16, REFERENCE_FPS)
        target = target_of(canonical_caption(spec.colour, spec.shape, spec.direction, spec.speed))
        report.rows.append({"strict": judge_clip(reconstruct(vae, clip), REFERENCE_FPS, target)["strict"]})
        true_all += judge_clip(clip, REFERENCE_FPS, target)["strict"]["all"]
    return {"psnr_mean": float(p.mean()), "psnr_min": float(p.min()), "frames": num_frames, "clips": num_clips,
            "strict": report.rates("strict", "all"), "true_clips_strict_all": true_all / num_clips}

__all__ = ["autoencoder_report", "psnr_per_frame", "reconstruct"]
