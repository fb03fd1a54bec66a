"""Regenerate the README's gallery in samples/ from the shipped default model.

Usage: python scripts/make_samples.py [--model DIR] [--out samples]
Writes one GIF per prompt (text -> image -> video, seed 0), one animation of a rendered first frame, and
prints the markdown that the README embeds.
"""

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from emuvideo.data.shapes import render_clip, sample_spec
from emuvideo.pipelines.loading import load_pipeline
from emuvideo.utils.video import save_image, write_video

PROMPTS = [
    "a red circle moving right slowly",
    "a yellow triangle moving up quickly",
    "a green square moving down slowly",
    "a blue triangle moving left quickly",  # a pair held out of video training
    "a white ball drifts to the left",  # a paraphrase
]
ANIMATE = ("a blue square moving right quickly", dict(colour="blue", shape="square", direction="right", speed="quickly"))


def upscale(frames: np.ndarray, factor: int = 2) -> np.ndarray:
    """Nearest-neighbour enlargement so 64 px clips are visible on a page."""
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--out", default="samples")
    args = parser.parse_args()
    out = Path(args.out)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        video = pipe(prompt, generator=torch.Generator().manual_seed(0))
        path = write_video(out / f"generate_{i}.gif", upscale(video.frames[0]), video.fps)
        lines.append(f'<img src="{path.as_posix()}" width="128" title="{prompt}"> ')
        print(f"{path}: {prompt}")

    prompt, spec_kwargs = ANIMATE
    first = render_clip(sample_spec(random.Random(0), 16, 8, **spec_kwargs), 1, 8)[0]
    save_image(out / "animate_input.png", upscale(first[None])[0])
    video = pipe.image_to_video(first, prompt, generator=torch.Generator().manual_seed(0))
    path = write_video(out / "animate.gif", upscale(video.frames[0]), video.fps)
    print(f"{path}: animate, '{prompt}'")
    print("\n" + "".join(lines))


if __name__ == "__main__":
    main()
