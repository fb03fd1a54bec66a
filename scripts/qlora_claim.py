"""QLoRA's claim on video: does a 4-bit NF4 base + LoRA learn a new concept as well as LoRA and full fine-tuning?

QLoRA (Dettmers et al. 2023) reports that a frozen 4-bit NF4 base with LoRA adapters matches 16-bit
fine-tuning. This script tests the claim on the shipped video model with one command: it teaches the model
**diagonal motion** ("a red circle moving up-left slowly"), which no training set of the shapes world holds
(`data.shapes.DIAGONALS`), with four methods on the same clips, steps, batch, learning rate and seeds:

- `full`: every weight of the temporal layers and conv_in (configs/finetune/full.yaml's choice), fp32, AdamW;
- `lora`: LoRA rank 16 on the temporal layers' attention, fp32 base, AdamW (configs/finetune/lora.yaml);
- `qlora`: the same LoRA on an NF4 (double-quantized) base, AdamW;
- `qlora_paged`: `qlora` with paged 8-bit AdamW (configs/finetune/qlora.yaml's optimizer).

Why diagonal motion: the fine-tune trains the video model (the image-to-video U-Net). Colour and shape come
from the first frame, drawn by the image model, so a new colour or shape would test the image model; motion
is what the video model alone carries, and a diagonal is a motion it has never seen, made of the two axes it
knows. The judge measures it exactly (`strict_judge`: within 15 degrees of the diagonal, speed in band).

Each run is `emuvideo finetune` on a folder of rendered clips (GIF + caption, as a user's data would be) in
its own subprocess, so its peak memory (the child's peak resident set, `ru_maxrss`) and wall time are its
own. Every model (the base included) is then judged:

- **new concept**: 48 diagonal prompts (4 diagonals x 2 speeds x 6 colour-shape pairs) x `--seeds`, each
  animated from a rendered first frame of that prompt (`pipe.image_to_video`), so the image model's
  placement of an object it was never asked to move diagonally does not enter; strict all-correct rate;
- **old prompts** (forgetting): `--old-prompts` canonical prompts spread over the 120 x `--seeds`, text ->
  image -> video as `emuvideo eval` does; strict all-correct rate.

Rates come with Wilson 95% intervals. Results are written to `--json` after every step; a rerun with the
same `--out` skips finished runs (their `final/` exists) and judged models.

Usage:
    python scripts/qlora_claim.py --out runs/qlora_claim --json docs/eval/qlora_claim.json
    python scripts/qlora_claim.py --steps 20 --clips 32 --seeds 1 --old-prompts 4 --out /tmp/qc  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "experiments" / "qlora_claim"
METHODS = ("full", "lora", "qlora", "qlora_paged")


def config_path(method: str) -> Path:
    """configs/experiments/qlora_claim/claim_METHOD.yaml (named apart from the packaged configs lora, qlora, full)."""
    return CONFIGS / f"claim_{method}.yaml"

CONCEPT_PAIRS = (("red", "circle"), ("green", "square"), ("blue", "triangle"),
                 ("yellow", "circle"), ("white", "square"), ("red", "triangle"))  # one held-out video pair
NUM_FRAMES, FPS = 16, 8


def render_data(folder: Path, clips: int, seed: int) -> None:
    """`clips` diagonal clips of the video pairs as GIF + caption (random phrasings), written once."""
    from emuvideo.data.shapes import DIAGONALS, SPEEDS, VIDEO_PAIRS, random_caption, render_clip, sample_spec
    from emuvideo.utils.video import write_video

    done = folder / "DONE"
    if done.is_file() and done.read_text() == f"{clips} {seed}":
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(clips):
        spec = sample_spec(rng, NUM_FRAMES, FPS, pairs=VIDEO_PAIRS, direction=rng.choice(DIAGONALS),
                           speed=rng.choice(list(SPEEDS)))
        write_video(folder / f"clip{i:05d}.gif", render_clip(spec, NUM_FRAMES, FPS), FPS)
        (folder / f"clip{i:05d}.txt").write_text(random_caption(spec, rng, style="simple") + "\n")
    done.write_text(f"{clips} {seed}")


def concept_prompts() -> list[dict]:
    from emuvideo.data.shapes import DIAGONALS, SPEEDS, VIDEO_HELD_OUT_PAIRS, canonical_caption

    return [{"colour": c, "shape": s, "direction": d, "speed": sp, "prompt": canonical_caption(c, s, d, sp),
             "held_out": (c, s) in VIDEO_HELD_OUT_PAIRS}
            for c, s in CONCEPT_PAIRS for d in DIAGONALS for sp in SPEEDS]


def train(method: str, args, data: Path, run: Path) -> dict:
    """`emuvideo finetune` in a child process; its wall time and peak resident set."""
    command = [sys.executable, "-m", "emuvideo.cli", "finetune", "--data", str(data),
               "--config", str(config_path(method)), "--output-dir", str(run),
               "--max-steps", str(args.steps), "--set", f"batch_size={args.batch_size}",
               "--set", f"seed={args.train_seed}", "--set", f"optim.lr={args.lr}"]
    if args.model:
        command += ["--model", args.model]
    start = time.perf_counter()
    with open(run.parent / f"{run.name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{method}: emuvideo finetune failed; see {run.parent / f'{run.name}.log'}")
    return {"command": " ".join(command), "seconds": round(seconds, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # Linux: kilobytes


def load(method: str | None, run: Path | None, args):
    from emuvideo.loaders import apply_loras
    from emuvideo.pipelines.loading import load_pipeline

    if method == "full":
        return load_pipeline(run / "final")
    pipe = load_pipeline(args.model)
    if method is not None:  # LoRA and QLoRA: the adapter on the full-precision base, as a user loads it
        apply_loras(pipe, [(str(run / "final"), 1.0)])
    return pipe


def judge_concept(pipe, prompts: list[dict], seeds: int, sampling: dict, batch_size: int = 8) -> list[dict]:
    """Animate a rendered first frame of each prompt x seed; the strict verdicts, one row per video."""
    import torch
    from tqdm import tqdm

    from emuvideo.data.shapes import render_clip, sample_spec
    from emuvideo.evaluation.evaluate import _row, prompt_seed

    rows = []
    jobs = [(p, seed) for seed in range(seeds) for p in prompts]
    with tqdm(total=len(jobs), desc="new concept", unit="video") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            firsts = []
            for p, seed in chunk:
                rng = random.Random(prompt_seed(p["prompt"], seed))
                spec = sample_spec(rng, NUM_FRAMES, FPS, colour=p["colour"], shape=p["shape"],
                                   direction=p["direction"], speed=p["speed"])
                firsts.append(render_clip(spec, 1, FPS)[0])
            generators = [torch.Generator().manual_seed(prompt_seed(p["prompt"], seed)) for p, seed in chunk]
            out = pipe.image_to_video(firsts, [p["prompt"] for p, _ in chunk], generator=generators,
                                      output_type="np", **sampling)
            for (p, seed), frames in zip(chunk, out.frames):
                rows.append(_row(p, seed, None, frames, out.fps))
            bar.update(len(chunk))
    return rows


def rate(rows: list[dict]) -> dict:
    """The strict all-correct rate with its Wilson interval, and four checks' rates (`EvalReport.rates`)."""
    from emuvideo.evaluation.evaluate import EvalReport

    r = EvalReport(rows).rates("strict", "all")
    return {"correct": r["all"]["k"], "videos": r["all"]["n"], "rate": r["all"]["rate"], "low": r["all"]["low"],
            "high": r["all"]["high"], **{f"{a}_rate": r[a]["rate"] for a in ("direction", "speed", "path", "visible")}}


def evaluate(method, run, args, old_prompts) -> dict:
    from emuvideo.evaluation.evaluate import evaluate_pipeline

    sampling = {k: v for k, v in (("num_inference_steps", args.video_steps),) if v is not None}
    pipe = load(method, run, args)
    start = time.perf_counter()
    concept = rate(judge_concept(pipe, concept_prompts(), args.seeds, sampling))
    report = evaluate_pipeline(pipe, old_prompts, seeds=args.seeds, num_inference_steps=args.video_steps,
                               image_num_inference_steps=args.image_steps)
    old = rate(report.rows)
    return {"new_concept": concept, "old_prompts": old, "eval_seconds": round(time.perf_counter() - start, 1)}


def table(result: dict) -> str:
    def cell(r):
        return f"{100 * r['rate']:.1f}% ({100 * r['low']:.0f}–{100 * r['high']:.0f})"

    lines = ["| method | new concept: diagonal, strict | direction | old prompts, strict | peak RSS MiB | train s |",
             "|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        if "new_concept" not in m:
            continue
        t = m.get("train", {})
        lines.append(f"| {name} | {cell(m['new_concept'])} | {100 * m['new_concept']['direction_rate']:.1f}% | "
                     f"{cell(m['old_prompts'])} | {t.get('peak_rss_mib', '—')} | {t.get('seconds', '—')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/qlora_claim", help="runs, data and logs (default: runs/qlora_claim)")
    parser.add_argument("--json", help="results file (default: OUT/results.json)")
    parser.add_argument("--model", help="base model (default: the shipped one)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--clips", type=int, default=512, help="rendered diagonal clips (default: 512)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default: 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step (default: 8)")
    parser.add_argument("--lr", type=float, default=3e-4, help="one learning rate for every method (default: 3e-4)")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3, help="noise draws per prompt in the evaluation (default: 3)")
    parser.add_argument("--old-prompts", type=int, default=40, help="canonical prompts for forgetting (default: 40)")
    parser.add_argument("--video-steps", type=int, help="video sampler steps (default: the pipeline's)")
    parser.add_argument("--image-steps", type=int, help="image sampler steps (default: the pipeline's)")
    args = parser.parse_args(argv)

    import torch

    from emuvideo import __version__
    from emuvideo.evaluation.prompt_sets import load_prompt_set
    from emuvideo.utils.files import atomic_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json or out / "results.json")
    settings = {k: getattr(args, k) for k in ("model", "clips", "steps", "batch_size", "lr", "train_seed", "seeds",
                                              "old_prompts", "video_steps", "image_steps")}
    result = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if result.get("settings") != settings:
        result = {"settings": settings, "models": {}}
    result["environment"] = {"emuvideo": __version__, "torch": torch.__version__, "machine": platform.processor()
                             or platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                             "python": platform.python_version()}

    def save():
        json_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=1))

    data = out / "data"
    render_data(data, args.clips, seed=12345)
    canonical = load_prompt_set("canonical")
    old_prompts = [canonical[i * len(canonical) // args.old_prompts] for i in range(args.old_prompts)]

    for method in [None, *args.methods]:
        name = method or "base (no fine-tune)"
        entry = result["models"].setdefault(name, {})
        run = None if method is None else out / method
        if method is not None and "train" not in entry:
            if (run / "final").exists():
                raise SystemExit(f"{run} has a final/ but no record in {json_path}: remove it or the JSON's settings changed")
            print(f"training {method} ...", flush=True)
            entry["train"] = train(method, args, data, run)
            save()
        if "new_concept" not in entry:
            print(f"judging {name} ...", flush=True)
            entry.update(evaluate(method, run, args, old_prompts))
            save()
    print(table(result))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
