"""The paper's ablations at equal compute: video models trained from the shipped image model, judged, compared.

Every arm starts from the shipped IMAGE model (the image U-Net, VAE and image scheduler of
emuvideo/weights/default, copied into OUT/image_base/), inflated to a video U-Net, and trains with the same
steps, batch size, clips, lr, warm-up and seed (`emuvideo train`, configs/experiments/ablations/); each arm
differs from the baseline in one thing:

- baseline: the shipped recipe's video stage: zero terminal SNR + v, factorized, spatial layers trained,
  16 frames at 8 fps;
- epsilon: the standard schedule + epsilon-prediction (sampled with it: the run's final/scheduler);
- direct: direct text-to-video: the image condition always dropped in training (zeros, mask 0) and sampled
  from the text alone with the same zero condition (`pipe.image_to_video` with no image), no first frame from the image model;
- frozen: spatial layers frozen (paper §3.1);
- high_motion: the baseline's first N - k steps, then k steps of the high-motion fine-tune (stage 3's data
  and lr ratio); the baseline run is stopped at N - k once, its model kept as the fine-tune's start, and
  resumed to N (a resume continues the run exactly).

Each arm is judged as `emuvideo eval` judges (the strict and the lenient judge, each prompt x seed its own
noise) on canonical prompts spread over the 120, through text -> image -> video (the shipped image U-Net makes
the first frame; `direct` has none). Reported per arm: the strict all-correct rate (Wilson 95% interval), the
lenient rate, the strict direction and speed rates, and the win rate over the baseline: over prompt x seed
pairs, 1 where the arm's video passes more of the 8 strict checks than the baseline's, 0.5 on a tie, 0 else,
with a 95% percentile bootstrap interval over pairs (`emuvideo.evaluation.stats.bootstrap_win_rate`); the
JSON holds every pair of arms.

Resumable: an arm whose final/ holds the whole run is not trained again (a stopped run resumes from its
newest checkpoint), and an arm whose evaluation is in the JSON is not evaluated again; the JSON is written
after each arm (atomically), with the settings, versions, hardware and each video's scores. A JSON or an
OUT of other settings is refused.

Usage:
    python scripts/ablations.py                                  # every arm: 300 steps x batch 8, 40 prompts x 2 seeds
    python scripts/ablations.py --arms baseline direct --out runs/ablations --json runs/ablations/results.json
    python scripts/ablations.py --steps 4 --batch-size 2 --clips 16 --prompts-limit 4 --seeds 1 \\
        --steps-sample 4 --image-steps 4 --out /tmp/abl_smoke    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from emuvideo.experiments import spread
from emuvideo.experiments.ablations import (
    ARMS, SETTINGS, TrainingSettings, arm_evaluation, arm_overrides, environment, install_image_base, table,
    train_arm, win_rates,
)


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_arm(name: str, model: Path, prompts: list[dict], args) -> dict:
    """Judge arm `name`'s model as `emuvideo eval` does; rates, and each video's verdicts and strict score."""
    from emuvideo.evaluation.evaluate import evaluate_pipeline
    from emuvideo.pipelines.loading import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline(model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    direct = ARMS[name].direct
    report = evaluate_pipeline(
        pipe.image_to_video if direct else pipe, prompts, seeds=args.seeds, batch_size=args.eval_batch_size,
        num_inference_steps=args.steps_sample, image_num_inference_steps=None if direct else args.image_steps,
        progress=not args.quiet, meta={"model": str(model), "arm": name, "sampling": "direct" if direct else "factorized",
                                       "video_scheduler": dict(pipe.scheduler.config)},
    )
    return arm_evaluation(report, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                        help="arms to run (default: all); the baseline always runs, as every win rate is against it")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every arm, N (default: 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size (default: 8)")
    parser.add_argument("--clips", type=int, default=2048, help="training clips, data.num_clips (default: 2048)")
    parser.add_argument("--high-motion-steps", type=int, help="high_motion: its last k steps (default: N // 4)")
    parser.add_argument("--prompts-limit", type=int, default=40,
                        help="canonical prompts judged, spread over the 120 (default: 40)")
    parser.add_argument("--seeds", type=int, default=2, help="noise draws per prompt (default: 2)")
    parser.add_argument("--steps-sample", type=int, help="video stage sampler steps (default: the pipeline's)")
    parser.add_argument("--image-steps", type=int, help="image stage sampler steps (default: --steps-sample's)")
    parser.add_argument("--eval-batch-size", type=int, default=8, help="videos per pipeline call (default: 8)")
    parser.add_argument("--cache-dir", help="data.cache_dir of the runs (default: the config's, the user cache)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="evaluation device (default: cuda when there is one)")
    parser.add_argument("--out", default="runs/ablations", help="a folder per arm (default: runs/ablations)")
    parser.add_argument("--json", help="results (default: OUT/results.json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no evaluation progress bar")
    args = parser.parse_args(argv)
    if args.high_motion_steps is None:
        args.high_motion_steps = args.steps // 4
    for name in ("steps", "batch_size", "clips", "prompts_limit", "seeds", "eval_batch_size", "steps_sample",
                 "image_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 0 <= args.high_motion_steps < args.steps or ("high_motion" in args.arms and not args.high_motion_steps):
        parser.error(f"--high-motion-steps must be in [1, --steps) (0: no high_motion arm), got {args.high_motion_steps}")
    args.arms = ["baseline"] + [a for a in ARMS if a in args.arms and a != "baseline"]
    args.json = args.json or str(Path(args.out) / "results.json")
    args.prompts = "canonical"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from emuvideo.evaluation.prompt_sets import load_prompt_set
    from emuvideo.utils.files import atomic_path

    out = Path(args.out).absolute()
    settings = {key: getattr(args, key) for key in SETTINGS}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    result = {"settings": settings, **environment(commit.stdout.strip() or None), "arms": {}, "win_rates": {}}
    if Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        differ = [k for k in SETTINGS if old["settings"].get(k) != settings[k]]
        if differ:
            raise SystemExit(f"{args.json} holds results of other settings ({', '.join(differ)}): choose another --json")
        result["arms"] = old["arms"]

    def save() -> None:
        result["win_rates"] = win_rates(result["arms"])
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))

    prompts = spread(load_prompt_set(args.prompts), args.prompts_limit)
    training = TrainingSettings(args.steps, args.batch_size, args.clips, args.high_motion_steps, args.cache_dir)
    image_base = install_image_base(out)
    for name in args.arms:
        arm = result["arms"].setdefault(name, {})
        arm.update(changes=arm_overrides(name), sampling="direct" if ARMS[name].direct else "factorized")
        arm["train"] = train_arm(name, training, out, image_base, arm.get("train", {}),
                                 launch=lambda cmd: subprocess.run(cmd).returncode)
        save()
        if "eval" not in arm:
            print(f"\nevaluating {name}: {len(prompts)} prompts x {args.seeds} seeds", flush=True)
            arm["eval"] = evaluate_arm(name, out / name / "final", prompts, args)
            save()
    print("\n" + table(result))
    print(f"\n{args.json}")
    return result


if __name__ == "__main__":
    main()
