"""Quality against sampler steps: the strict judge's all-correct rate for each sampler and step count, per stage.

For the video stage, the video sampler and its steps vary while the image stage stays at the model's own
sampler and 25 steps; for the image stage, the other way round. Every point is `emuvideo eval` on the same
prompts and seeds (`emuvideo.evaluation.evaluate.evaluate_pipeline`: each prompt x seed its own noise, the
strict judge, a Wilson 95% interval). The reference is 25-step DDIM on both stages; per stage and sampler the
script picks the fewest steps whose rate is within the reference's interval (at or above its low end), and
over all samplers the fewest steps (ties: the higher rate).

Writes the points to JSON after each one (`--resume` skips the points a JSON of the same settings holds) and
a PNG plot; prints a table.

Usage:
    python scripts/sampler_curve.py                                    # all samplers, 4..25 steps, both stages
    python scripts/sampler_curve.py --prompts-limit 24 --seeds 3 --stage video --out curve.json --plot curve.png
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from emuvideo.experiments import spread
from emuvideo.experiments.sampler_curve import check_samplers, plot, run_curve, table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--prompts", default="canonical", help="prompt set or file (default: canonical)")
    parser.add_argument("--prompts-limit", type=int, help="use this many prompts, spread over the set (default: all)")
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every sampler of SAMPLERS")
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 6, 8, 12, 16, 25],
                        help="step counts (default: 4 6 8 12 16 25)")
    parser.add_argument("--seeds", type=int, default=3, help="noise draws per prompt (default: 3)")
    parser.add_argument("--stage", choices=("video", "image", "both"), default="both", help="default: both")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per pipeline call (default: 8)")
    parser.add_argument("--device", default="cpu", help="default: cpu")
    parser.add_argument("--out", default="sampler_curve.json", help="default: sampler_curve.json")
    parser.add_argument("--plot", default="sampler_curve.png", help="default: sampler_curve.png")
    parser.add_argument("--resume", action="store_true", help="keep the points --out already holds for these settings")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    from emuvideo.evaluation.prompt_sets import load_prompt_set
    from emuvideo.pipelines.loading import load_pipeline
    from emuvideo.schedules import SAMPLERS, sampler_name
    from emuvideo.utils.files import atomic_path

    samplers = args.samplers or list(SAMPLERS)
    try:
        check_samplers(samplers)
    except ValueError as err:
        parser.error(str(err))
    for name, values in (("--steps", args.steps), ("--seeds", [args.seeds]), ("--batch-size", [args.batch_size]),
                         ("--prompts-limit", [args.prompts_limit or 1])):
        if min(values) < 1:
            parser.error(f"{name} must be >= 1")
    stages = ["video", "image"] if args.stage == "both" else [args.stage]
    prompts = spread(load_prompt_set(args.prompts), args.prompts_limit)

    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    meta = {"model": args.model or "default", "prompts": args.prompts, "prompts_used": len(prompts),
            "seeds": args.seeds, "videos_per_point": len(prompts) * args.seeds, "batch_size": args.batch_size,
            "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "default_sampler": sampler_name(pipe.scheduler)}
    points: dict[str, dict] = {}
    if args.resume and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        same = all(old["meta"].get(k) == meta[k] for k in ("model", "prompts", "prompts_used", "seeds", "device"))
        points = old.get("points", {}) if same else {}
    result = {"meta": meta, "points": points}

    def save() -> None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))

    echo = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    run_curve(pipe, prompts, samplers, args.steps, args.seeds, stages, result, args.batch_size, save=save, echo=echo)
    print(table(result))
    print(f"\n{args.out}\n{plot(result, args.plot)}")
    return result


if __name__ == "__main__":
    main()
