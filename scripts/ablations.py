"""The paper's ablations at equal compute: video models trained from the shipped image model, judged, compared.

Every arm starts from the shipped IMAGE model (the image U-Net, VAE and image scheduler of
emuvideo/weights/default, copied into OUT/image_base/), inflated to a video U-Net, and trains with the same
steps, batch size, clips, lr, warm-up and seed (`emuvideo train`, configs/experiments/ablations/); each arm
differs from the baseline in one thing:

- baseline: the shipped recipe's video stage: zero terminal SNR + v, factorized, spatial layers trained,
  16 frames at 8 fps;
- epsilon: the standard schedule + epsilon-prediction (sampled with it: the run's final/scheduler);
- direct: direct text-to-video: the image condition always dropped in training (zeros, mask 0) and sampled
  from the text alone with the same zero condition (`DirectTextToVideo`), no first frame from the image model;
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
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from emuvideo.models.conditioning import known_frames_conditioning
from emuvideo.pipelines.common import (
    DEFAULT_STEPS,
    check_finite,
    check_output_type,
    check_prompts,
    decode_frames,
    encode_prompt,
    frames_to_output,
    step_kwargs,
    vae_scale_factor,
)
from emuvideo.evaluation.strict_judge import STRICT_ATTRIBUTES
from emuvideo.pipelines.image_to_video import EmuVideoPipelineOutput

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "experiments" / "ablations"
BASE_CONFIG = CONFIG_DIR / "baseline.yaml"
IMAGE_MODEL_PARTS = ("vae", "image_unet", "image_scheduler")  # what an image stage's final/ holds
STRICT_CHECKS = tuple(a for a in STRICT_ATTRIBUTES if a != "all")  # the 8 checks a strict score counts
# What must match for a run in OUT or an evaluation in the JSON to be reused.
SETTINGS = ("steps", "batch_size", "clips", "high_motion_steps", "prompts", "prompts_limit", "seeds",
            "steps_sample", "image_steps", "eval_batch_size")


@dataclass(frozen=True)
class Arm:
    """One arm: `config` (a YAML of overrides of baseline.yaml, or None), `direct` (sampled from the text alone)
    and `finetune` (the overrides apply to the last k steps only, from the baseline's model at step N - k)."""

    config: str | None = None
    direct: bool = False
    finetune: bool = False


ARMS = {
    "baseline": Arm(),
    "epsilon": Arm("epsilon.yaml"),
    "direct": Arm("direct.yaml", direct=True),
    "frozen": Arm("frozen.yaml"),
    "high_motion": Arm("high_motion.yaml", finetune=True),
}


# ---------------------------------------------------------------------------------------------- configs
def flatten(tree: dict, prefix: str = "") -> dict:
    """`{"data": {"fps": 8}}` -> `{"data.fps": 8}`: the keys `emuvideo train --set` takes."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def arm_overrides(name: str) -> dict:
    """The dotted keys (and values) in which arm `name` differs from baseline.yaml."""
    from emuvideo.config import read_yaml

    arm = ARMS[name]
    return {} if arm.config is None else flatten(read_yaml(CONFIG_DIR / arm.config))


def set_args(overrides: dict) -> list[str]:
    # JSON scalars are YAML scalars: `--set` parses them back to the same value (1.25e-4, true, 0.75).
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


# ---------------------------------------------------------------------------------------------- training
def install_image_base(out: Path) -> Path:
    """OUT/image_base: the shipped model's image stage (vae/, image_unet/, image_scheduler/), the folder an
    image stage's final/ is, which `emuvideo train` inflates into a fresh video U-Net."""
    from emuvideo.pipelines.loading import default_model_dir

    folder = out / "image_base"
    if not folder.is_dir():
        tmp = out / ".image_base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for part in IMAGE_MODEL_PARTS:
            shutil.copytree(default_model_dir() / part, tmp / part)
        os.replace(tmp, folder)
    return folder


def trained_to(run: Path) -> int | None:
    """The step of a run's newest checkpoint (None: none yet)."""
    from emuvideo.training.checkpoints import checkpoints

    found = checkpoints(run)
    return json.loads((found[-1] / "trainer_state.json").read_text())["step"] if found else None


def is_trained(run: Path, steps: int) -> bool:
    """final/ holds the run up to `steps` (a final/ without checkpoints counts as finished)."""
    step = trained_to(run)
    return (run / "final" / "model_index.json").is_file() and (step is None or step >= steps)


def check_run_settings(run: Path, batch_size: int, clips: int) -> None:
    """A run folder left by other settings is not continued."""
    from emuvideo.config import load_config
    from emuvideo.training.config import TrainConfig

    if (run / "config.yaml").is_file():
        saved = load_config(TrainConfig, run / "config.yaml")
        if (saved.batch_size, saved.data.num_clips) != (batch_size, clips):
            raise SystemExit(f"{run} was trained with batch size {saved.batch_size} and {saved.data.num_clips} "
                             f"clips, not {batch_size} and {clips}: choose another --out")


def train(run: Path, init: Path, steps: int, args, overrides: dict) -> float:
    """`emuvideo train` of baseline.yaml + `overrides` into `run` up to `steps` (resuming); its wall time."""
    check_run_settings(run, args.batch_size, args.clips)
    sets = {"output_dir": str(run), "batch_size": args.batch_size, "data.num_clips": args.clips, **overrides}
    if args.cache_dir:
        sets["data.cache_dir"] = args.cache_dir
    cmd = [sys.executable, "-m", "emuvideo.cli", "train", "--config", str(BASE_CONFIG), "--model", str(init),
           "--max-steps", str(steps), "--resume", "latest", *set_args(sets)]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"training {run} failed (exit {done.returncode}); run the script again to resume")
    return round(time.perf_counter() - start, 1)


def train_arm(name: str, args, out: Path, image_base: Path, record: dict) -> dict:
    """Train arm `name` unless its final/ holds the whole run; its "train" record (kept from `record` when
    nothing was trained now)."""
    run, n, k = out / name, args.steps, args.high_motion_steps
    if name == "baseline":
        legs = list(record.get("legs", [None, None]))
        if k:  # stopped at N - k once: its model there starts the high_motion fine-tune
            if not is_trained(run, n - k):
                legs[0] = train(run, image_base, n - k, args, {})
            snapshot = out / f"baseline_step{n - k}"
            if not snapshot.is_dir():
                if trained_to(run) != n - k:
                    raise SystemExit(f"{run} went past step {n - k} without its model there being kept "
                                     f"({snapshot}); remove {run} to train it again")
                tmp = out / f".{snapshot.name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(run / "final", tmp)
                os.replace(tmp, snapshot)
        if not is_trained(run, n):
            legs[1] = train(run, image_base, n, args, {})
        seconds = None if None in legs[int(not k):] else sum(x for x in legs if x is not None)
        return {"steps": n, "seconds": seconds, "legs": legs, "from": str(image_base)}
    start, steps = (out / f"baseline_step{n - k}", k) if ARMS[name].finetune else (image_base, n)
    if not is_trained(run, steps):
        # a run stopped part way resumes: its seconds are then those after the resume
        resumed = trained_to(run)
        record = {"steps": steps, "seconds": train(run, start, steps, args, arm_overrides(name)),
                  **({"resumed_from_step": resumed} if resumed else {})}
    return {**record, "from": str(start), **({"after_baseline_steps": n - k} if ARMS[name].finetune else {})}


# ---------------------------------------------------------------------------------------------- direct sampling
def direct_conditioning(shape: tuple, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditioning `(B, C, T, h, w)`, mask `(B, 1, T, h, w)`) of a video with no known frame: all zeros, what
    training gives a sample whose image condition is dropped (`video_training_loss`, image_dropout)."""
    b, _, t = shape[:3]
    return known_frames_conditioning(torch.zeros(shape, device=device, dtype=dtype),
                                     torch.zeros(b, t, dtype=torch.bool, device=device))


class DirectTextToVideo:
    """The `direct` arm at inference: text -> video with the video U-Net alone, no image stage.

    The video U-Net gets the condition `image_dropout: 1.0` trained it with: no known frame, conditioning
    video and mask all zeros (`direct_conditioning`). With no image, the paper's two-condition guidance
    X(∅) + w_i·(X(I) − X(∅)) + w_p·(X(I, p) − X(I)) has X(I) = X(∅) and is X(∅) + w_p·(X(p) − X(∅)): one batch
    of two per step instead of three. Called as `EmuVideoPipeline` is by `emuvideo.evaluation.evaluate`.
    """

    def __init__(self, pipe):
        self.pipe = pipe  # an EmuVideoPipeline: its video U-Net, scheduler, VAE and text encoder

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_text: float = 7.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
    ) -> EmuVideoPipelineOutput:
        """Videos `(B, T, H, W, 3)` uint8 ("np") at the video model's frame count, size and fps."""
        # Copied from emuvideo.pipelines.image_to_video.EmuImageToVideoPipeline.__call__ with no known frame
        # 1. check inputs
        pipe, video = self.pipe, self.pipe.image_to_video
        prompts = check_prompts(prompt)
        check_output_type(output_type)
        if output_type == "latent":
            raise ValueError("DirectTextToVideo decodes its videos: output_type 'latent' is not supported")
        device, dtype = pipe._execution_device, pipe.unet.dtype
        side = video.default_size // vae_scale_factor(pipe.vae)
        shape = (len(prompts), pipe.vae.config.latent_channels, video.config.default_num_frames, side, side)

        # 2. the condition: no known frame
        conditioning, mask = direct_conditioning(shape, device, dtype)
        cond_2, mask_2 = torch.cat([conditioning] * 2), torch.cat([mask] * 2)

        # 3. encode prompts: X(∅), X(p)
        text_2 = encode_prompt(pipe.tokenizer, pipe.text_encoder, [""] * len(prompts) + prompts, device).to(dtype)

        # 4. timesteps and starting noise
        scheduler = pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        from diffusers.utils.torch_utils import randn_tensor

        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma

        # 5. denoise
        for t in pipe.progress_bar(scheduler.timesteps):
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            x_none, x_text = pipe.unet(x, t, text_2, conditioning=cond_2, conditioning_mask=mask_2).sample.chunk(2)
            guided = x_none + guidance_text * (x_text - x_none)
            latents = scheduler.step(guided, t, latents, **step_kwargs(scheduler, generator)).prev_sample

        # 6. decode
        check_finite(latents, "the video latents")
        frames = frames_to_output(decode_frames(pipe.vae, latents), output_type)
        return EmuVideoPipelineOutput(frames=frames, images=None, fps=video.config.default_fps)


# ---------------------------------------------------------------------------------------------- evaluation
# Copied from scripts/sampler_curve.py spread
def spread(prompts: list, limit: int | None) -> list:
    """`limit` prompts spread evenly over the set (every attribute mix, not the first pairs only)."""
    if limit is None or limit >= len(prompts):
        return prompts
    return [prompts[i * len(prompts) // limit] for i in range(limit)]


def strict_score(row: dict) -> int:
    """How many of the 8 strict checks a video passes."""
    return sum(bool(row["strict"][check]) for check in STRICT_CHECKS)


def evaluate_arm(name: str, model: Path, prompts: list[dict], args) -> dict:
    """Judge arm `name`'s model as `emuvideo eval` does; rates, and each video's verdicts and strict score."""
    from emuvideo.evaluation.evaluate import evaluate_pipeline
    from emuvideo.pipelines.loading import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline(model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    direct = ARMS[name].direct
    report = evaluate_pipeline(
        DirectTextToVideo(pipe) if direct else pipe, prompts, seeds=args.seeds, batch_size=args.eval_batch_size,
        num_inference_steps=args.steps_sample, image_num_inference_steps=None if direct else args.image_steps,
        progress=not args.quiet, meta={"model": str(model), "arm": name, "sampling": "direct" if direct else "factorized",
                                       "video_scheduler": dict(pipe.scheduler.config)},
    )
    rows = [{"prompt": r["prompt"], "seed": r["seed"], "held_out": r["held_out"], "strict_score": strict_score(r),
             "strict": r["strict"], "lenient": r["lenient"], "why": r["why"]} for r in report.rows]
    return {"seconds": round(time.perf_counter() - start, 1), "meta": report.meta,
            "strict": report.rates("strict", "all"), "lenient": report.rates("lenient", "all"), "rows": rows}


def win_rates(arms: dict) -> dict:
    """{"A vs B": {"rate", "low", "high", "n"}} for every evaluated pair of arms (A before B in `arms`' order)."""
    from emuvideo.evaluation.stats import bootstrap_win_rate

    scored = {name: {(r["prompt"], r["seed"]): r["strict_score"] for r in arm["eval"]["rows"]}
              for name, arm in arms.items() if "eval" in arm}
    out = {}
    names = list(scored)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if scored[a].keys() != scored[b].keys():
                raise SystemExit(f"arms {a} and {b} were judged on different prompt x seed pairs")
            pairs = sorted(scored[a])
            rate, low, high = bootstrap_win_rate([scored[a][p] for p in pairs], [scored[b][p] for p in pairs])
            out[f"{a} vs {b}"] = {"rate": rate, "low": low, "high": high, "n": len(pairs)}
    return out


def _vs_baseline(name: str, wins: dict) -> dict | None:
    if f"baseline vs {name}" not in wins:
        return None
    w = wins[f"baseline vs {name}"]  # A over B is 1 - (B over A), and its interval mirrors
    return {"rate": 1 - w["rate"], "low": 1 - w["high"], "high": 1 - w["low"]}


def table(result: dict) -> str:
    def pct(r: dict | None, interval: bool = True) -> str:
        if r is None or r.get("rate") is None:
            return "–"
        return f"{100 * r['rate']:.1f}%" + (f" ({100 * r['low']:.0f}-{100 * r['high']:.0f})" if interval else "")

    lines = ["| arm | strict all-correct (95% CI) | lenient | direction | speed | win vs baseline (95% CI) | "
             "train s | eval s |", "|---" * 8 + "|"]
    for name, arm in result["arms"].items():
        ev = arm.get("eval")
        strict = ev["strict"] if ev else {}
        win = None if name == "baseline" else _vs_baseline(name, result["win_rates"])
        train_s = arm.get("train", {}).get("seconds")
        eval_s = "–" if ev is None else f"{ev['seconds']:.0f}"
        lines.append(f"| {name} | {pct(strict.get('all'))} | {pct(ev['lenient']['all'], False) if ev else '–'} | "
                     f"{pct(strict.get('direction'), False)} | {pct(strict.get('speed'), False)} | "
                     f"{'—' if name == 'baseline' else pct(win)} | {'–' if train_s is None else f'{train_s:.0f}'} | "
                     f"{eval_s} |")
    n = next((a["eval"]["meta"]["videos"] for a in result["arms"].values() if "eval" in a), 0)
    lines.append(f"\n{n} videos per arm; win rate: over prompt x seed pairs, more of the 8 strict checks passed = 1, "
                 "tie = 0.5; 95% percentile bootstrap over pairs. high_motion's train s: its own last k steps "
                 "(its first N - k are the baseline's); a run resumed after a stop counts its time after the resume.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def environment() -> dict:
    import diffusers
    import transformers

    import emuvideo

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=CONFIG_DIR)
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "emuvideo": getattr(emuvideo, "__version__", None),
                     "git_commit": commit.stdout.strip() or None},
        "hardware": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }


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
    result = {"settings": settings, **environment(), "arms": {}, "win_rates": {}}
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
    image_base = install_image_base(out)
    for name in args.arms:
        arm = result["arms"].setdefault(name, {})
        arm.update(changes=arm_overrides(name), sampling="direct" if ARMS[name].direct else "factorized")
        arm["train"] = train_arm(name, args, out, image_base, arm.get("train", {}))
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
