"""Judge a model on the 120 canonical shapes-world prompts (factorized text -> image -> video).

Usage: python scripts/eval_shapes.py [--model DIR] [--steps 25] [--out eval_shapes.json]
Prints a markdown table (overall, video-trained pairs, held-out pairs) and writes the per-prompt JSON.

This is the lenient judge on one seed, kept so the README's first numbers stay reproducible (and for
`--animate`). For strict and lenient verdicts over several seeds, held-out phrasings and 95% intervals, use
`emuvideo eval` (emuvideo/evaluation/evaluate.py).
"""

import argparse
import json
import time

import torch

from emuvideo.evaluation.shapes_eval import evaluate_animate, evaluate_shapes, report_json
from emuvideo.pipelines.loading import load_pipeline
from emuvideo.utils.files import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N prompts (quick look)")
    parser.add_argument("--animate", action="store_true", help="also judge `animate` on rendered first frames")
    parser.add_argument("--no-pin", dest="pin_known_frames", action="store_false",
                        help="let the model reproduce frame 0 itself (pin_known_frames=False)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="eval_shapes.json")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    sampling = dict(num_inference_steps=args.steps, pin_known_frames=args.pin_known_frames)
    report = evaluate_shapes(pipe, seed=args.seed, batch_size=args.batch_size, limit=args.limit, **sampling)
    seconds = time.perf_counter() - start
    print(report.table())
    print(f"\n{len(report.rows)} prompts in {seconds:.0f} s ({args.steps} steps, seed {args.seed})")
    meta = dict(model=args.model or "default", device=str(pipe.device), seed=args.seed, seconds=round(seconds, 1), **sampling)
    result = report_json(report, **meta)
    if args.animate:
        animate = evaluate_animate(pipe, seed=args.seed, batch_size=args.batch_size, limit=args.limit, **sampling)
        print(f"\nanimate ({animate['n']} rendered first frames): direction right {100 * animate['direction']:.1f}%, "
              f"all four right {100 * animate['all']:.1f}%, frame-0 PSNR mean {animate['psnr_frame0_mean']:.1f} dB "
              f"(min {animate['psnr_frame0_min']:.1f}), >= 30 dB: {100 * animate['frame0_at_least_30db']:.1f}%")
        result["animate"] = animate
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
