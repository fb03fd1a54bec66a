"""The paper's ablations at equal compute (scripts/ablations.py runs them): the arms, how each is trained with
`emuvideo train` from the shipped image model, and the statistics and table that compare them.

Every arm starts from the shipped IMAGE model, inflated to a video U-Net, and trains with the same steps, batch
size, clips, lr, warm-up and seed (configs/experiments/ablations/); each differs from the baseline in one thing
(`ARMS`): baseline (the shipped recipe's video stage), epsilon (standard schedule + epsilon-prediction), direct
(image condition always dropped, sampled from the text alone), frozen (spatial layers frozen, paper §3.1),
high_motion (the baseline's first N - k steps, then k steps of the high-motion fine-tune). The win rate of an arm
over another: over prompt x seed pairs, 1 where its video passes more of the 8 strict checks, 0.5 on a tie, 0
else, with a 95% percentile bootstrap interval over pairs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import CONFIGS_DIR
from ..evaluation.strict_judge import STRICT_ATTRIBUTES
from ..training.checkpoints import trained_to
from ..utils.files import atomic_dir

CONFIG_DIR = CONFIGS_DIR / "experiments" / "ablations"
BASE_CONFIG = CONFIG_DIR / "baseline.yaml"
IMAGE_MODEL_PARTS = ("vae", "image_unet", "image_scheduler")  # what an image stage's final/ holds
STRICT_CHECKS = tuple(a for a in STRICT_ATTRIBUTES if a != "all")  # the 8 checks a strict score counts
# What must match for a run in OUT or an evaluation in the JSON to be reused.
SETTINGS = ("steps", "batch_size", "clips", "high_motion_steps", "prompts", "prompts_limit", "seeds",
            "steps_sample", "image_steps", "eval_batch_size")


@dataclass(frozen=True)
class TrainingSettings:
    """What every arm trains with: N `steps` (high_motion: its last `high_motion_steps` = k of them),
    `batch_size`, `clips` (data.num_clips) and the runs' `cache_dir` (None: the config's)."""

    steps: int
    batch_size: int
    clips: int
    high_motion_steps: int
    cache_dir: str | None = None


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
    from ..config import read_yaml

    arm = ARMS[name]
    return {} if arm.config is None else flatten(read_yaml(CONFIG_DIR / arm.config))


def set_args(overrides: dict) -> list[str]:
    # JSON scalars are YAML scalars: `--set` parses them back to the same value (1.25e-4, true, 0.75).
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


# ---------------------------------------------------------------------------------------------- training
def install_image_base(out: Path) -> Path:
    """OUT/image_base: the shipped model's image stage (vae/, image_unet/, image_scheduler/), the folder an
    image stage's final/ is, which `emuvideo train` inflates into a fresh video U-Net."""
    from ..pipelines.loading import default_model_dir

    folder = out / "image_base"
    if not folder.is_dir():
        with atomic_dir(folder) as tmp:
            for part in IMAGE_MODEL_PARTS:
                shutil.copytree(default_model_dir() / part, tmp / part)
    return folder


def is_trained(run: Path, steps: int) -> bool:
    """final/ holds the run up to `steps` (a final/ without checkpoints counts as finished)."""
    step = trained_to(run)
    return (run / "final" / "model_index.json").is_file() and (step is None or step >= steps)


def check_run_settings(run: Path, batch_size: int, clips: int) -> None:
    """A run folder left by other settings is not continued."""
    from ..config import load_config
    from ..training.config import TrainConfig

    if (run / "config.yaml").is_file():
        saved = load_config(TrainConfig, run / "config.yaml")
        if (saved.batch_size, saved.data.num_clips) != (batch_size, clips):
            raise SystemExit(f"{run} was trained with batch size {saved.batch_size} and {saved.data.num_clips} "
                             f"clips, not {batch_size} and {clips}: choose another --out")


Launch = Callable[[list[str]], int]  # runs a command line, returns its exit code (the script runs a child process)


def train(run: Path, init: Path, steps: int, settings: TrainingSettings, overrides: dict, launch: Launch) -> float:
    """`emuvideo train` of baseline.yaml + `overrides` into `run` up to `steps` (resuming), as a command line run
    by `launch` (a child process, so each arm's time and memory are its own); its wall time."""
    check_run_settings(run, settings.batch_size, settings.clips)
    sets = {"output_dir": str(run), "batch_size": settings.batch_size, "data.num_clips": settings.clips, **overrides}
    if settings.cache_dir:
        sets["data.cache_dir"] = settings.cache_dir
    cmd = [sys.executable, "-m", "emuvideo.cli", "train", "--config", str(BASE_CONFIG), "--model", str(init),
           "--max-steps", str(steps), "--resume", "latest", *set_args(sets)]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    code = launch(cmd)
    if code != 0:
        raise SystemExit(f"training {run} failed (exit {code}); run the script again to resume")
    return round(time.perf_counter() - start, 1)


def train_arm(name: str, settings: TrainingSettings, out: Path, image_base: Path, record: dict,
              launch: Launch) -> dict:
    """Train arm `name` unless its final/ holds the whole run; its "train" record (kept from `record` when
    nothing was trained now)."""
    run, n, k = out / name, settings.steps, settings.high_motion_steps
    if name == "baseline":
        legs = list(record.get("legs", [None, None]))
        if k:  # stopped at N - k once: its model there starts the high_motion fine-tune
            if not is_trained(run, n - k):
                legs[0] = train(run, image_base, n - k, settings, {}, launch)
            snapshot = out / f"baseline_step{n - k}"
            if not snapshot.is_dir():
                if trained_to(run) != n - k:
                    raise SystemExit(f"{run} went past step {n - k} without its model there being kept "
                                     f"({snapshot}); remove {run} to train it again")
                with atomic_dir(snapshot) as tmp:
                    shutil.copytree(run / "final", tmp, dirs_exist_ok=True)
        if not is_trained(run, n):
            legs[1] = train(run, image_base, n, settings, {}, launch)
        seconds = None if None in legs[int(not k):] else sum(x for x in legs if x is not None)
        return {"steps": n, "seconds": seconds, "legs": legs, "from": str(image_base)}
    start, steps = (out / f"baseline_step{n - k}", k) if ARMS[name].finetune else (image_base, n)
    if not is_trained(run, steps):
        # a run stopped part way resumes: its seconds are then those after the resume
        resumed = trained_to(run)
        record = {"steps": steps, "seconds": train(run, start, steps, settings, arm_overrides(name), launch),
                  **({"resumed_from_step": resumed} if resumed else {})}
    return {**record, "from": str(start), **({"after_baseline_steps": n - k} if ARMS[name].finetune else {})}


# ---------------------------------------------------------------------------------------------- evaluation
def strict_score(row: dict) -> int:
    """How many of the 8 strict checks a video passes."""
    return sum(bool(row["strict"][check]) for check in STRICT_CHECKS)


def arm_evaluation(report, seconds: float) -> dict:
    """The results JSON's record of one arm's `EvalReport`: rates, and each video's verdicts and strict score."""
    rows = [{"prompt": r["prompt"], "seed": r["seed"], "held_out": r["held_out"], "strict_score": strict_score(r),
             "strict": r["strict"], "lenient": r["lenient"], "why": r["why"]} for r in report.rows]
    return {"seconds": round(seconds, 1), "meta": report.meta, "strict": report.rates("strict", "all"),
            "lenient": report.rates("lenient", "all"), "rows": rows}


def win_rates(arms: dict) -> dict:
    """{"A vs B": {"rate", "low", "high", "n"}} for every evaluated pair of arms (A before B in `arms`' order)."""
    from ..evaluation.stats import bootstrap_win_rate

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


def vs_baseline(name: str, wins: dict) -> dict | None:
    """Arm `name`'s win rate over the baseline, with its interval (None: not both evaluated)."""
    if f"baseline vs {name}" not in wins:
        return None
    w = wins[f"baseline vs {name}"]  # A over B is 1 - (B over A), and its interval mirrors
    return {"rate": 1 - w["rate"], "low": 1 - w["high"], "high": 1 - w["low"]}


def table(result: dict) -> str:
    """One row per arm: strict (95% CI), lenient, direction and speed rates, win rate over the baseline, seconds."""
    def pct(r: dict | None, interval: bool = True) -> str:
        if r is None or r.get("rate") is None:
            return "–"
        return f"{100 * r['rate']:.1f}%" + (f" ({100 * r['low']:.0f}-{100 * r['high']:.0f})" if interval else "")

    lines = ["| arm | strict all-correct (95% CI) | lenient | direction | speed | win vs baseline (95% CI) | "
             "train s | eval s |", "|---" * 8 + "|"]
    for name, arm in result["arms"].items():
        ev = arm.get("eval")
        strict = ev["strict"] if ev else {}
        win = None if name == "baseline" else vs_baseline(name, result["win_rates"])
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


def environment(git_commit: str | None = None) -> dict:
    """Versions (and the git commit of a checkout, which the script reads) and hardware, for the results JSON."""
    import diffusers
    import transformers

    from .. import __version__

    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "emuvideo": __version__,
                     "git_commit": git_commit},
        "hardware": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
