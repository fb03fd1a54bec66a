"""Regenerate the README's gallery in samples/ from the shipped default model.

Usage: python scripts/make_samples.py [--model DIR] [--out samples]
Writes one GIF per prompt (text -> image -> video, seed 0), one animation of a rendered first frame, one
first -> last video (the first and last frames of a rendered clip), the same generation at 8 fps and
interpolated to 16 fps, and prints the markdown that the README embeds.
"""

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from emuvideo.data.shapes import render_clip, sample_spec
from emuvideo.pipelines.common import numpy_to_uint8
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
FIRST_LAST = ("a yellow circle moving up slowly", dict(colour="yellow", shape="circle", direction="up", speed="slowly"))
INTERPOLATE = "a green triangle moving left quickly"


def upscale(frames: np.ndarray, factor: int = 2) -> np.ndarray:
    """Nearest-neighbour enlargement so 64 px clips are visible on a page; a pipeline's "np" frames (float in
    [0, 1]) become the uint8 a file holds."""
    frames = numpy_to_uint8(frames) if frames.dtype != np.uint8 else frames
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

    prompt, spec_kwargs = FIRST_LAST  # the end points of a clip the world renders; the model makes the rest
    clip = render_clip(sample_spec(random.Random(1), 16, 8, **spec_kwargs), 16, 8)
    save_image(out / "first_last_input.png", upscale(np.concatenate([clip[0], clip[-1]], axis=1)[None])[0])
    video = pipe.image_to_video(clip[0], prompt, last_image=clip[-1], generator=torch.Generator().manual_seed(0))
    path = write_video(out / "first_last.gif", upscale(video.frames[0]), video.fps)
    print(f"{path}: first -> last, '{prompt}'")

    for factor in (None, 2):  # the same seed: the 8 fps clip, then its frame rate doubled
        video = pipe(INTERPOLATE, generator=torch.Generator().manual_seed(0), interpolate=factor)
        path = write_video(out / f"interpolate_{factor or 1}x.gif", upscale(video.frames[0]), video.fps)
        print(f"{path}: '{INTERPOLATE}', {len(video.frames[0])} frames at {video.fps} fps")
    print("\n" + "".join(lines))


if __name__ == "__main__":
    main()
