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
import time
from pathlib import Path

REFERENCE = ("ddim", 25)  # the sampler and steps every point is compared with
DEFAULT_STEPS = 25  # the other stage's steps while one stage varies


def spread(prompts: list, limit: int | None) -> list:
    """`limit` prompts spread evenly over the set (every attribute mix, not the first pairs only)."""
    if limit is None or limit >= len(prompts):
        return prompts
    return [prompts[i * len(prompts) // limit] for i in range(limit)]


def point_key(image_sampler: str, image_steps: int, video_sampler: str, video_steps: int) -> str:
    return f"image={image_sampler}x{image_steps} video={video_sampler}x{video_steps}"


def settings_for(stage: str, sampler: str, steps: int, default_sampler: str) -> tuple[str, int, str, int]:
    """(image sampler, image steps, video sampler, video steps) of one point of `stage`'s curve."""
    if stage == "video":
        return default_sampler, DEFAULT_STEPS, sampler, steps
    return sampler, steps, default_sampler, DEFAULT_STEPS


def pick(curve: dict[str, list[dict]], reference: dict) -> dict:
    """Per sampler, the fewest steps whose strict rate is at or above the reference's interval low end; and the
    fewest of those over all samplers (ties: the higher rate, then the order given)."""
    per_sampler = {}
    for sampler, points in curve.items():
        enough = [p for p in sorted(points, key=lambda p: p["steps"]) if p["rate"] is not None
                  and p["rate"] >= reference["low"]]
        per_sampler[sampler] = enough[0] if enough else None
    found = [(p["steps"], -p["rate"], i, s) for i, (s, p) in enumerate(per_sampler.items()) if p is not None]
    best = min(found) if found else None
    return {
        "rule": "fewest steps with strict rate >= low end of the 25-step DDIM Wilson 95% interval",
        "per_sampler": {s: (None if p is None else p["steps"]) for s, p in per_sampler.items()},
        "sampler": None if best is None else best[3],
        "steps": None if best is None else best[0],
    }


def plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emuvideo.utils.files import atomic_path

    stages = list(result["curves"])
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), dpi=100, squeeze=False)
    ref = result["reference"]
    for ax, stage in zip(axes[0], stages):
        ax.axhspan(ref["low"], ref["high"], color="grey", alpha=0.2, label=f"{REFERENCE[0]} x {REFERENCE[1]} steps, 95% interval")
        for sampler, points in result["curves"][stage].items():
            points = sorted(points, key=lambda p: p["steps"])
            x = [p["steps"] for p in points]
            y = [p["rate"] for p in points]
            err = [[p["rate"] - p["low"] for p in points], [p["high"] - p["rate"] for p in points]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=sampler)
        ax.set_xscale("log")
        ax.set_xticks(sorted({p["steps"] for pts in result["curves"][stage].values() for p in pts}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(f"{stage} stage sampler steps (other stage: {result['meta']['default_sampler']}, "
                      f"{DEFAULT_STEPS} steps)")
        ax.set_ylabel("strict all-correct rate")
        ax.set_ylim(0, 1)
        ax.set_title(f"{stage} stage, {result['meta']['videos_per_point']} videos a point")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def table(result: dict) -> str:
    lines = []
    ref = result["reference"]
    lines.append(f"reference: ddim x {REFERENCE[1]} on both stages: {100 * ref['rate']:.1f}% "
                 f"({100 * ref['low']:.0f}-{100 * ref['high']:.0f}), n = {ref['n']}")
    for stage, curve in result["curves"].items():
        steps = sorted({p["steps"] for points in curve.values() for p in points})
        lines += ["", f"{stage} stage: strict all-correct rate (95% interval)",
                  "| sampler | " + " | ".join(map(str, steps)) + " |", "|---" * (len(steps) + 1) + "|"]
        for sampler, points in curve.items():
            by_steps = {p["steps"]: p for p in points}
            cells = [f"{100 * by_steps[s]['rate']:.1f}% ({100 * by_steps[s]['low']:.0f}-{100 * by_steps[s]['high']:.0f})"
                     if s in by_steps else "" for s in steps]
            lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
        chosen = result["picks"][stage]
        lines.append(f"pick: {chosen['sampler']} x {chosen['steps']} steps "
                     f"(per sampler: {', '.join(f'{s} {n}' for s, n in chosen['per_sampler'].items())})")
    return "\n".join(lines)


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

    from emuvideo.evaluation.evaluate import evaluate_pipeline
    from emuvideo.evaluation.prompt_sets import load_prompt_set
    from emuvideo.pipelines.loading import load_pipeline
    from emuvideo.schedules import SAMPLERS, sampler_name
    from emuvideo.utils.files import atomic_path

    samplers = args.samplers or list(SAMPLERS)
    for name in samplers:
        if name not in SAMPLERS:
            parser.error(f"--samplers: {name!r} is not one of {', '.join(SAMPLERS)}")
    for name, values in (("--steps", args.steps), ("--seeds", [args.seeds]), ("--batch-size", [args.batch_size]),
                         ("--prompts-limit", [args.prompts_limit or 1])):
        if min(values) < 1:
            parser.error(f"{name} must be >= 1")
    stages = ["video", "image"] if args.stage == "both" else [args.stage]
    prompts = spread(load_prompt_set(args.prompts), args.prompts_limit)

    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    original = {"image": pipe.image_scheduler, "video": pipe.scheduler}
    default_sampler = sampler_name(pipe.scheduler)
    if default_sampler is None or sampler_name(pipe.image_scheduler) != default_sampler:
        raise SystemExit(f"the model's schedulers ({type(pipe.image_scheduler).__name__}, "
                         f"{type(pipe.scheduler).__name__}) are not one SAMPLERS name")
    meta = {"model": args.model or "default", "prompts": args.prompts, "prompts_used": len(prompts),
            "seeds": args.seeds, "videos_per_point": len(prompts) * args.seeds, "batch_size": args.batch_size,
            "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "default_sampler": default_sampler}
    points: dict[str, dict] = {}
    if args.resume and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        same = all(old["meta"].get(k) == meta[k] for k in ("model", "prompts", "prompts_used", "seeds", "device"))
        points = old.get("points", {}) if same else {}

    def run_point(image_sampler, image_steps, video_sampler, video_steps) -> dict:
        key = point_key(image_sampler, image_steps, video_sampler, video_steps)
        if key in points:
            return points[key]
        pipe.image_scheduler, pipe.scheduler = original["image"], original["video"]
        if image_sampler != default_sampler:
            pipe.set_sampler(image_sampler, stage="image")
        if video_sampler != default_sampler:
            pipe.set_sampler(video_sampler, stage="video")
        start = time.perf_counter()
        report = evaluate_pipeline(pipe, prompts, seeds=args.seeds, batch_size=args.batch_size, progress=False,
                                   num_inference_steps=video_steps, image_num_inference_steps=image_steps)
        strict = report.rates("strict", "all")["all"]
        points[key] = {**strict, "seconds": round(time.perf_counter() - start, 1)}
        if not args.quiet:
            print(f"{key}: {strict['k']}/{strict['n']} strict all-correct ({points[key]['seconds']:.0f} s)", flush=True)
        save()
        return points[key]

    result = {"meta": meta, "points": points}

    def save() -> None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))

    try:
        ref = run_point(REFERENCE[0], REFERENCE[1], REFERENCE[0], REFERENCE[1])
        result["reference"] = ref
        result["curves"] = {}
        for stage in stages:
            result["curves"][stage] = {
                sampler: [{"steps": steps, **run_point(*settings_for(stage, sampler, steps, default_sampler))}
                          for steps in args.steps]
                for sampler in samplers
            }
    finally:
        pipe.image_scheduler, pipe.scheduler = original["image"], original["video"]
    result["picks"] = {stage: pick(curve, result["reference"]) for stage, curve in result["curves"].items()}
    save()
    print(table(result))
    print(f"\n{args.out}\n{plot(result, args.plot)}")
    return result


if __name__ == "__main__":
    main()
