"""The second model's recipe and the equal-compute experiments behind it, in one run (issue 17; docs/evaluation.md).

Every training job is `emuvideo train --config configs/stages/NAME.yaml --set ...`: the stage YAMLs are the recipe,
this script only sizes the jobs (`max_minutes`: each arm of an experiment gets the same wall time on the same
device, running side by side), runs the arms of each experiment at once, and picks each winner by a rule fixed
here, before any result:

A. autoencoder: 8x8x4 (the first model's layout) | 8x8x8 (the paper's channels) | 16x16x4 (4x downsampling).
   Rule: the best held-back reconstruction PSNR among the layouts whose video U-Net forward costs at most 1.5x the
   first model's on a CPU (8x8x8: 0.9x; 16x16x4: 1.7x, so it is measured but cannot ship).
B. text-to-image U-Net on the chosen latents, captions "rich" | "simple" (both arms feed C).
C. video stages 1 -> 2 -> 3, three arms: spatial layers trained + rich captions | frozen + rich | frozen + simple.
   Rule: the best strict all-correct rate on the validation prompts (`emuvideo eval --prompts validation`,
   phrasings held out of training and kept apart from the evaluation sets), 2 seeds.
D. from the winner: keyframes fine-tune and the interpolation model, side by side; the decoder fine-tune of the
   chosen autoencoder runs from the end of A to the end of D.

Usage:
    python scripts/train_second_model.py --out runs/gen2 --budget gpu          # one GPU, ~9 min
    python scripts/train_second_model.py --out /tmp/smoke --budget smoke       # a CPU check of the plumbing (~6 min)
    (`bash scripts/train_default.sh` runs the chosen recipe stage by stage on a CPU)
Writes OUT/summary.json after every phase.

What one run of it showed (commit f8f110b, whose stage YAMLs it ran; one H200) is docs/evaluation.md §6.1: the
autoencoder table, and video arms too short to choose between. The shipped second model came from the CPU runs of
§6.2 instead (configs/stages/08-10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = REPO / "configs" / "stages"

# Wall minutes per job and what the data holds. "gpu" fits one ~9-minute call on one H200 (the tiny models are
# launch-bound there, so arms share the card with little slowdown); "smoke" only proves the plumbing on a CPU.
BUDGETS = {
    "gpu": dict(ae=1.0, image=1.5, video1=0.25, video2=1.6, video3=0.1, keyframes=0.8, interpolation=1.6,
                decoder=6.5, batch=None, clips=None, image_clips=None, in_memory=True, eval_batch=120, seeds=2,
                ae_frames=256, ae_clips=64),
    "smoke": dict(ae=0.15, image=0.15, video1=0.1, video2=0.15, video3=0.1, keyframes=0.1, interpolation=0.1,
                  decoder=0.3, batch=4, clips=64, image_clips=256, in_memory=True, eval_batch=8, seeds=1,
                  ae_frames=16, ae_clips=4, prompts_limit=8),
}
AE_ARMS = {"c4": "default", "c8": "default_c8", "f4": "default_f4"}
AE_COST = {"c4": 1.0, "c8": 0.91, "f4": 1.71}  # video U-Net forward time / the first model's, 2-core CPU
VIDEO_ARMS = {  # name: (freeze_spatial, captions)
    "trained_rich": (False, "rich"),
    "frozen_rich": (True, "rich"),
    "frozen_simple": (True, "simple"),
}


class Run:
    def __init__(self, out: Path, budget: dict, deadline: float):
        self.out, self.budget, self.deadline, self.t0 = out, budget, deadline, time.monotonic()
        self.summary = {"budget": budget, "device": _device_name(), "phases": {}}
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / ".summary.json"
        tmp.write_text(json.dumps(self.summary, indent=1))
        tmp.replace(self.out / "summary.json")

    def train(self, name: str, stage: str, minutes: float, **sets) -> Path:
        """One `emuvideo train` job; returns its final/ folder (raises if the job failed)."""
        b = self.budget
        out_dir = self.out / name
        sets = {"output_dir": str(out_dir), "max_minutes": minutes, "max_steps": 1_000_000, "sample_every": 0,
                "checkpoint_every": 100_000, **sets}
        if b["in_memory"]:  # rendered (autoencoder, image: 25 MB a batch) or read from the latent cache once
            sets.setdefault("data.in_memory", True)
            if stage == "01_image":
                sets.setdefault("data.cache_dir", "null")  # 32K one-frame items: encoding each step costs less
            elif stage not in ("00_autoencoder", "05_decoder_finetune"):  # one cache per arm: arms run at once
                sets.setdefault("data.cache_dir", str(self.out / "cache" / name.split("_stage")[0]))
        if b["batch"]:
            sets.setdefault("batch_size", b["batch"])
        if b["clips"]:
            sets.setdefault("data.num_clips", b["image_clips"] if stage in ("00_autoencoder", "01_image") else b["clips"])
        cmd = [sys.executable, "-m", "emuvideo.cli", "train", "--config", str(STAGES / f"{stage}.yaml")]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        started = time.monotonic()
        with open(self.logs / f"{name}.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_ENV)
        record = {"stage": stage, "sets": sets, "seconds": round(time.monotonic() - started, 1), "exit": code,
                  "steps": _steps(out_dir)}
        self.summary.setdefault("jobs", {})[name] = record
        print(f"[{time.monotonic() - self.t0:6.0f}s] {name}: exit {code}, {record['steps']} steps, "
              f"{record['seconds']} s", flush=True)
        if code != 0 or not (out_dir / "final").is_dir():
            raise RuntimeError(f"{name} failed (exit {code}); see {self.logs / (name + '.log')}")
        return out_dir / "final"

    def evaluate(self, name: str, model: Path, prompts: str) -> dict:
        b = self.budget
        json_path = self.out / "eval" / f"{name}_{prompts}.json"
        json_path.parent.mkdir(exist_ok=True)
        prompt_arg = prompts
        if b.get("prompts_limit"):  # smoke: a few prompts of the set, written to a file
            from emuvideo.evaluation.prompt_sets import load_prompt_set

            few = self.out / "eval" / f"{prompts}_few.txt"
            few.write_text("\n".join(p["prompt"] for p in load_prompt_set(prompts)[: b["prompts_limit"]]) + "\n")
            prompt_arg = str(few)
        cmd = [sys.executable, "-m", "emuvideo.cli", "eval", "--model", str(model), "--prompts", prompt_arg,
               "--seeds", str(b["seeds"]), "--batch-size", str(b["eval_batch"]), "--json", str(json_path), "-q"]
        with open(self.logs / f"eval_{name}_{prompts}.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=_ENV)
        if code != 0:
            raise RuntimeError(f"eval of {name} failed (exit {code})")
        summary = json.loads(json_path.read_text())["summary"]
        return {v: {g: {a: summary[v][g][a] for a in summary[v][g]} for g in summary[v]} for v in ("strict", "lenient")}


# Jobs run side by side: a few CPU threads each (data, collation), no tokenizer threads.
_ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4"), "TOKENIZERS_PARALLELISM": "false"}


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _steps(out_dir: Path) -> int | None:
    losses = out_dir / "losses.csv"
    if not losses.is_file():
        return None
    lines = losses.read_text().strip().splitlines()  # "step,loss" every log_every steps
    return int(lines[-1].split(",")[0]) if lines else 0


def _parallel(jobs: dict):
    """Run callables side by side; {name: result}. Every job runs to its end before an error is raised."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs.items()}
        results, errors = {}, {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as err:  # noqa: BLE001 - collected and raised below, after the others finish
                errors[name] = err
    if errors:
        raise RuntimeError("; ".join(f"{n}: {e}" for n, e in errors.items()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for every run, log and summary.json")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="gpu")
    parser.add_argument("--deadline", type=float, default=560, help="seconds; later phases are shortened to fit")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    b = BUDGETS[args.budget]
    run = Run(out, b, args.deadline)

    # A. autoencoder layouts, side by side
    ae = _parallel({arm: (lambda arm=arm: run.train(f"ae_{arm}", "00_autoencoder", b["ae"], preset=AE_ARMS[arm]))
                    for arm in AE_ARMS})
    import torch
    from diffusers import AutoencoderKL

    from emuvideo.evaluation.autoencoder import autoencoder_report

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reports = {arm: autoencoder_report(AutoencoderKL.from_pretrained(str(f / "vae")).to(device).eval(),
                                       b["ae_frames"], b["ae_clips"]) for arm, f in ae.items()}
    eligible = [arm for arm in AE_ARMS if AE_COST[arm] <= 1.5]
    chosen_ae = max(eligible, key=lambda arm: reports[arm]["psnr_mean"])
    preset = AE_ARMS[chosen_ae]
    run.summary["phases"]["A"] = {"reports": reports, "cost": AE_COST, "chosen": chosen_ae, "preset": preset}
    run.save()
    print(f"A: autoencoder {chosen_ae} ({preset}); PSNR " +
          ", ".join(f"{a} {r['psnr_mean']:.2f}" for a, r in reports.items()), flush=True)

    # B. image U-Nets (rich / simple captions); the decoder fine-tune of the chosen autoencoder runs from here to D's end
    with ThreadPoolExecutor(1) as side:
        decoder = side.submit(run.train, "decoder_finetune", "05_decoder_finetune", b["decoder"],
                              init=str(ae[chosen_ae]), preset=preset)
        images = _parallel({c: (lambda c=c: run.train(f"image_{c}", "01_image", b["image"], init=str(ae[chosen_ae]),
                                                      preset=preset, **{"data.captions": c}))
                            for c in ("rich", "simple")})
        run.summary["phases"]["B"] = {"image": {c: str(f) for c, f in images.items()}}
        run.save()

        # C. video stages 1 -> 2 -> 3 per arm, the arms side by side
        def video_arm(arm: str) -> Path:
            freeze, captions = VIDEO_ARMS[arm]
            common = {"preset": preset, "freeze_spatial": freeze, "data.captions": captions}
            f = run.train(f"{arm}_stage1", "02_video_stage1", b["video1"], init=str(images[captions]), **common)
            f = run.train(f"{arm}_stage2", "03_video_stage2", b["video2"], init=str(f), **common)
            return run.train(f"{arm}_stage3", "04_video_stage3", b["video3"], init=str(f), **common)

        arms = _parallel({arm: (lambda arm=arm: video_arm(arm)) for arm in VIDEO_ARMS})
        scores = _parallel({f"{arm}/{p}": (lambda arm=arm, p=p: run.evaluate(arm, arms[arm], p))
                            for arm in VIDEO_ARMS for p in ("validation", "canonical")})
        def rank(arm):  # strict all-correct, then (a tie) the strict checks' mean pass rate
            rates = scores[f"{arm}/validation"]["strict"]["all"]
            return rates["all"]["rate"], sum(r["rate"] for r in rates.values()) / len(rates)

        winner = max(VIDEO_ARMS, key=rank)
        run.summary["phases"]["C"] = {"arms": {a: str(f) for a, f in arms.items()}, "scores": scores, "winner": winner}
        run.save()
        print(f"C: winner {winner}; validation strict all " + ", ".join(
            f"{a} {scores[a + '/validation']['strict']['all']['all']['rate']:.3f}" for a in VIDEO_ARMS), flush=True)

        # D. keyframes and interpolation from the winner, side by side (shortened if the deadline is near)
        scale = min(1.0, max(0.3, (run.left() - 60) / (60 * max(b["keyframes"], b["interpolation"]))))
        freeze, captions = VIDEO_ARMS[winner]
        common = {"preset": preset, "data.captions": captions}
        final = _parallel({
            "keyframes": lambda: run.train("keyframes", "06_keyframes", b["keyframes"] * scale, init=str(arms[winner]),
                                           **common),
            "interpolation": lambda: run.train("interpolation", "07_interpolation", b["interpolation"] * scale,
                                               init=str(arms[winner]), **common),
        })
        final["decoder"] = decoder.result()
    run.summary["phases"]["D"] = {k: str(v) for k, v in final.items()}
    run.save()
    print(f"done in {time.monotonic() - run.t0:.0f} s: {out / 'summary.json'}", flush=True)


if __name__ == "__main__":
    main()
