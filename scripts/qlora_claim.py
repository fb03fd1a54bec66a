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
from pathlib import Path

from gpu_smoke import run_logged  # scripts/gpu_smoke.py: a child process to a log, its time and peak memory

from emuvideo.experiments import spread
from emuvideo.experiments.qlora_claim import METHODS, evaluate, finetune_command, render_data, table


def train(method: str, data: Path, run: Path, steps: int, batch_size: int, seed: int, lr: float,
          model: str | None = None) -> dict:
    """`emuvideo finetune` in a child process, so that its wall time and peak resident set are its own (a run
    stopped part way resumes; its seconds are then those after the resume)."""
    command = finetune_command(method, data, run, steps, batch_size, seed, lr, model)
    log_path = Path(run).parent / f"{Path(run).name}.log"
    code, seconds, peak_rss = run_logged(command, log_path, append=True)
    if code != 0:
        raise SystemExit(f"{method}: emuvideo finetune failed; see {log_path}")
    return {"command": " ".join(command), "seconds": round(seconds, 1), "peak_rss_mib": round(peak_rss / 2**20, 1)}


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
    old_prompts = spread(load_prompt_set("canonical"), args.old_prompts)

    for method in [None, *args.methods]:
        name = method or "base (no fine-tune)"
        entry = result["models"].setdefault(name, {})
        run = None if method is None else out / method
        if method is not None and "train" not in entry:
            if (run / "final").exists():
                raise SystemExit(f"{run} has a final/ but no record in {json_path}: remove it or the JSON's settings changed")
            print(f"training {method} ...", flush=True)
            entry["train"] = train(method, data, run, args.steps, args.batch_size, args.train_seed, args.lr,
                                   model=args.model)
            save()
        if "new_concept" not in entry:
            print(f"judging {name} ...", flush=True)
            entry.update(evaluate(method, run, old_prompts, args.seeds, model=args.model,
                                  video_steps=args.video_steps, image_steps=args.image_steps))
            save()
    print(table(result))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
