"""Measure frame interpolation and keyframes (issue 9): the model against real baselines, on held-back clips.

Usage:
    python scripts/eval_interpolation.py --model runs/default/interpolation/final --json interpolation.json
    python scripts/eval_interpolation.py --model DIR --clips 4 --keyframe-clips 2 --prompts-limit 4 --steps 5  # a look

Four parts, all in one run (a part with 0 clips / prompts is skipped): in-between quality against linear
blending, frame repetition and FFmpeg's minterpolate; first/last keyframe PSNR; the strict judge's verdicts
before and after `--interpolate 2`; a GIF strip and a PNG filmstrip. The design, seeds and statistics are
`emuvideo.evaluation.interpolation_eval`'s docstring; this script parses the flags, runs it, prints and writes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

from emuvideo.evaluation.interpolation_eval import InterpolationEvalConfig, evaluate_interpolation


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, InterpolationEvalConfig]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder with an interpolation_unet (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps of every stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=64, help="held-back clips for the in-between table (0: skip)")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--keys", type=int, default=9, help="key frames (8 fps) per held-back clip")
    parser.add_argument("--keyframe-clips", type=int, default=64, help="clips for first/last-frame PSNR (0: skip)")
    parser.add_argument("--prompts-limit", type=int, help="only the first N of the 120 canonical prompts (0: skip)")
    parser.add_argument("--gif", default="docs/interpolation_strip.gif", help="the GIF strip (and a .png beside it)")
    parser.add_argument("--no-gif", action="store_true", help="write no strip")
    parser.add_argument("--gif-fps", type=int, default=8, help="the strip's playback rate (8: slowed by the factor)")
    parser.add_argument("--json", help="write every number and per-clip row here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        config = InterpolationEvalConfig(
            steps=args.steps, seed=args.seed, batch_size=args.batch_size, clips=args.clips,
            factors=tuple(args.factors), keys=args.keys, keyframe_clips=args.keyframe_clips,
            prompts_limit=args.prompts_limit, gif=None if args.no_gif else args.gif, gif_fps=args.gif_fps)
    except ValueError as err:  # "batch_size must be >= 1, got 0": name the flag
        name, _, rest = str(err).partition(" ")
        parser.error(f"--{name.replace('_', '-')} {rest}")
    return args, config


def main(argv: list[str] | None = None) -> int:
    from emuvideo.pipelines.loading import load_pipeline
    from emuvideo.utils.files import atomic_path

    args, config = parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        pipe = load_pipeline(args.model, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        meta = {"command": shlex.join(["python", *sys.argv]), "model": args.model or "default"}
        result = evaluate_interpolation(pipe, config, progress=not args.quiet, meta=meta, echo=print)
    except ValueError as err:  # bad input: one line, exit 2 (as the CLI)
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\n{result['meta']['seconds']:.0f} s")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
