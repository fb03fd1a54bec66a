"""Reconstruction PSNR of an autoencoder on frames of the shapes world.

Usage: python scripts/eval_autoencoder.py runs/default/autoencoder/final/vae [more vae folders] [--n 64]
The same frames (seeded) for every folder, so the rows compare.
"""

import argparse
import random

import numpy as np
import torch
from diffusers import AutoencoderKL

from emuvideo.data.shapes import render_clip, sample_spec
from emuvideo.pipelines.common import decode_frames, encode_frames, to_uint8


def psnr_per_frame(vae: AutoencoderKL, frames: np.ndarray) -> np.ndarray:
    """frames: (N, H, W, 3) uint8 -> PSNR (dB) of each frame's reconstruction."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, N, H, W)
    with torch.no_grad():
        recon = to_uint8(decode_frames(vae, encode_frames(vae, x)))[0].astype(np.float64)
    mse = ((recon - frames.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255**2 / np.maximum(mse, 1e-10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vae", nargs="+", help="vae/ folders (diffusers AutoencoderKL)")
    parser.add_argument("--n", type=int, default=64, help="frames")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    frames = np.stack([render_clip(sample_spec(rng, 1, 8), 1, 8)[0] for _ in range(args.n)])
    print("| autoencoder | PSNR mean | min |\n|---|---|---|")
    for folder in args.vae:
        psnr = psnr_per_frame(AutoencoderKL.from_pretrained(folder).eval(), frames)
        print(f"| {folder} | {psnr.mean():.1f} dB | {psnr.min():.1f} dB |")


if __name__ == "__main__":
    main()
