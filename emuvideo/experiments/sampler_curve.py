"""Quality against sampler steps (scripts/sampler_curve.py runs it): the strict judge's all-correct rate for each
sampler and step count, per stage.

For the video stage, the video sampler and its steps vary while the image stage stays at the model's own sampler
and `DEFAULT_STEPS`; for the image stage, the other way round. Every point is `emuvideo eval` on the same prompts
and seeds (`evaluate_pipeline`: each prompt x seed its own noise, the strict judge, a Wilson 95% interval). The
reference is `REFERENCE` (25-step DDIM) on both stages; per stage and sampler `pick` takes the fewest steps whose
rate is within the reference's interval (at or above its low end), and over all samplers the fewest steps (ties:
the higher rate).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..utils.files import atomic_path

REFERENCE = ("ddim", 25)  # the sampler and steps every point is compared with
DEFAULT_STEPS = 25  # the other stage's steps while one stage varies


def check_samplers(samplers: list[str]) -> None:
    """Refuse a sampler name that `EmuVideoPipeline.set_sampler` does not know, naming it."""
    from ..schedules import SAMPLERS

    for name in samplers:
        if name not in SAMPLERS:
            raise ValueError(f"--samplers: {name!r} is not one of {', '.join(SAMPLERS)}")


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


def run_curve(pipe, prompts: list[dict], samplers: list[str], step_counts: list[int], seeds: int, stages: list[str],
              result: dict, batch_size: int = 8, save: Callable[[], None] = lambda: None,
              echo: Callable[[str], None] = lambda text: None) -> dict:
    """Every point of the curves of `stages` on `pipe`, into `result` ({"meta", "points"}: points already there,
    from a resumed run, are not run again): adds "reference", "curves" and "picks". `save` is called after each new
    point, `echo` gets a line per point. The pipeline's schedulers are restored at the end."""
    from ..evaluation.evaluate import evaluate_pipeline
    from ..schedules import sampler_name

    check_samplers(samplers)
    points = result["points"]
    original = {"image": pipe.image_scheduler, "video": pipe.scheduler}
    default_sampler = sampler_name(pipe.scheduler)
    if default_sampler is None or sampler_name(pipe.image_scheduler) != default_sampler:
        raise SystemExit(f"the model's schedulers ({type(pipe.image_scheduler).__name__}, "
                         f"{type(pipe.scheduler).__name__}) are not one SAMPLERS name")

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
        report = evaluate_pipeline(pipe, prompts, seeds=seeds, batch_size=batch_size, progress=False,
                                   num_inference_steps=video_steps, image_num_inference_steps=image_steps)
        strict = report.rates("strict", "all")["all"]
        points[key] = {**strict, "seconds": round(time.perf_counter() - start, 1)}
        echo(f"{key}: {strict['k']}/{strict['n']} strict all-correct ({points[key]['seconds']:.0f} s)")
        save()
        return points[key]

    try:
        result["reference"] = run_point(REFERENCE[0], REFERENCE[1], REFERENCE[0], REFERENCE[1])
        result["curves"] = {}
        for stage in stages:
            result["curves"][stage] = {
                sampler: [{"steps": steps, **run_point(*settings_for(stage, sampler, steps, default_sampler))}
                          for steps in step_counts]
                for sampler in samplers
            }
    finally:
        pipe.image_scheduler, pipe.scheduler = original["image"], original["video"]
    result["picks"] = {stage: pick(curve, result["reference"]) for stage, curve in result["curves"].items()}
    save()
    return result
