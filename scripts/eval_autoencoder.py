"""Reconstruction PSNR of an autoencoder on frames of the shapes world.

Usage: python scripts/eval_autoencoder.py runs/default/autoencoder/final/vae [more vae folders] [--n 64]
The same frames (seeded) for every folder, so the rows compare.
"""

import argparse
import random

import numpy as np
from diffusers import AutoencoderKL

from emuvideo.data.shapes import render_clip, sample_spec
from emuvideo.evaluation.autoencoder import psnr_per_frame


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
