#!/usr/bin/env python
"""The CLI end to end at real size, timed and measured per phase (issue 18).

One run: a Stable-Diffusion-style folder with random weights built from configs alone (sd21 by default: the
video U-Net inflated from it has 1.2B parameters, trained on an NF4 spatial base), shapes-world clips rendered
at the training size (`emuvideo render`), `emuvideo train` with configs/video/sd_stage1 -> 2 -> 3 for a few
steps each (stage 1 stopped with Ctrl+C after its first checkpoint and resumed with `--resume latest`), each
stage sampling once and exporting its model folder, then `emuvideo generate` from the last stage's folder.

Every phase is the real CLI in its own process. Per phase, printed and written to OUT/results.json: wall time;
on CUDA the process's `torch.cuda.max_memory_allocated` and `max_memory_reserved` at its exit (its peaks, over
model loading, latent caching, steps, sampling and export) and the card's used memory (nvidia-smi, highest over
the phase); on a CPU the process's peak resident memory; beside each training phase, `emuvideo estimate-memory
--config ... --model ...`'s peak and whole-card need for the same config and shape (one training step).
Checked on the way (the run fails if not): the interrupted stage 1 stopped before max_steps with a checkpoint,
the resumed run ended at max_steps with every step logged once, every stage wrote final/, the video has the
frames asked for. Output lines of each phase: OUT/logs/PHASE.log.

    # GPU: the configs' own frames and sizes (stage 1: 8 x 256², stages 2-3: 16 x 512²), a 16 x 512² video
    python scripts/gpu_smoke.py --out runs/gpu_smoke
    # CPU: the real parameter count, 4 frames at 64² (checks RAM first; docs/scaling.md)
    OMP_NUM_THREADS=2 python scripts/gpu_smoke.py --device cpu --tiny --out runs/cpu_smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 2**30
# import name -> what to install (the GPU image carries wheels in .whl/: pip install --no-index --find-links .whl)
REQUIRED = {"torch": "torch", "diffusers": "diffusers", "transformers": "transformers", "accelerate": "accelerate",
            "peft": "peft", "bitsandbytes": "bitsandbytes", "safetensors": "safetensors", "av": "av",
            "PIL": "Pillow", "einops": "einops", "yaml": "pyyaml", "tensorboard": "tensorboard",
            "emuvideo": "emuvideo (pip install --no-deps -e .)"}
PROMPT = "a red circle moving right slowly"
# Runs a CLI command (`emuvideo.cli.main`) and, at its exit, writes the process's CUDA allocator peaks to argv[1].
CHILD = """import json, sys
from emuvideo.cli import main
try:
    code = main(sys.argv[2:])
finally:
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_initialized()
    peaks = {"max_memory_allocated": torch.cuda.max_memory_allocated(),
             "max_memory_reserved": torch.cuda.max_memory_reserved()} if cuda else {}
    open(sys.argv[1], "w").write(json.dumps(peaks))
sys.exit(code)
"""
BUILD = "import sys; from emuvideo.models.sd_folder import save_random_sd_folder as s; s(sys.argv[1], sys.argv[2])"
COUNTS = "import json, sys; from emuvideo.models.sd_folder import parameter_counts as p; print(json.dumps(p(sys.argv[1])))"


def check_imports() -> None:
    missing = [name for module, name in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise SystemExit(f"gpu_smoke: missing packages: {', '.join(missing)}; install them first (the GPU image: "
                         "pip install --no-index --find-links .whl NAME ...)")


# ---------------------------------------------------------------------------------------------- measuring
class CardPoller:
    """The card's used memory (nvidia-smi, all processes), highest over the phase, in bytes; None without it."""

    def __init__(self, device: str):
        index = device.split(":")[1] if ":" in device else "0"
        self.cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", index]
        self.peak, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                used = int(subprocess.run(self.cmd, capture_output=True, text=True, timeout=10).stdout.split()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self.peak = max(self.peak or 0, used * 2**20)
            self._stop.wait(0.25)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _default_sigint() -> None:
    # A background job inherits SIGINT ignored, and Python then keeps ignoring it: the trainer must see Ctrl+C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_logged(command: list[str], log_path: Path, append: bool = False, interrupt_when=None) -> tuple[int, float, int]:
    """Run `command` in a child process, its stdout and stderr into `log_path` (appended to with `append`);
    returns (exit code, wall seconds, the child's peak resident set in bytes: `ru_maxrss`, its own alone).

    The child starts with SIGINT's default action (see `_default_sigint`). With `interrupt_when`, a callable polled
    while it runs: the first time it returns True the child gets SIGINT (Ctrl+C). scripts/qlora_claim.py runs its
    fine-tunes with it too (a child process can only be started from scripts/: tests/test_security.py)."""
    started, interrupted = time.perf_counter(), False
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if interrupt_when is not None and not interrupted and interrupt_when():
                proc.send_signal(signal.SIGINT)
                interrupted = True
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss * 1024  # Linux: ru_maxrss in KiB


def run_phase(name: str, code: str, args: list[str], out: Path, device: str, interrupt_when=None) -> dict:
    """Run `python -c code *args` as phase `name`; returns its row (rc, wall time, memory). With `interrupt_when`,
    a callable polled while it runs: the first time it returns True the process gets SIGINT (Ctrl+C)."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    peaks_file = logs / f"{name}.memory.json"
    peaks_file.unlink(missing_ok=True)
    argv = [sys.executable, "-c", code, *([str(peaks_file)] if code is CHILD else []), *args]
    print(f"[{name}] {' '.join(args)}", flush=True)
    with CardPoller(device) if device.startswith("cuda") else _Nothing() as card:
        rc, seconds, peak_rss = run_logged(argv, logs / f"{name}.log", interrupt_when=interrupt_when)
    peaks = json.loads(peaks_file.read_text()) if peaks_file.is_file() else {}
    row = {"phase": name, "rc": rc, "wall_s": round(seconds, 1),
           "peak_rss": peak_rss, **peaks, "card_used": getattr(card, "peak", None)}
    print(f"[{name}] exit {row['rc']} after {row['wall_s']} s", flush=True)
    return row


class _Nothing:
    peak = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def estimate(config: Path, model: Path, sets: list[str], out: Path, name: str) -> dict:
    """`emuvideo estimate-memory --config CONFIG --model MODEL --set ...` (its plain mode), read from its --json."""
    path = out / "logs" / f"{name}.estimate.json"
    args = ["estimate-memory", "--config", str(config), "--model", str(model), *_flags(sets), "--json", str(path)]
    row = run_phase(f"{name}.estimate", CHILD, args, out, "cpu")
    if row["rc"] != 0 or not path.is_file():
        return {"error": f"estimate-memory exit {row['rc']} (see logs/{name}.estimate.log)"}
    found = json.loads(path.read_text())
    found = found[0] if isinstance(found, list) else found
    return {key: found.get(key) for key in ("peak_bytes", "card_bytes", "reserved_bytes") if key in found}


# ---------------------------------------------------------------------------------------------- the run
def _flags(sets: list[str]) -> list[str]:
    return [arg for pair in sets for arg in ("--set", pair)]


def stage_sets(args, stage: int, out: Path) -> list[str]:
    """The `--set` overrides of a stage: few steps, one sample at the end, the shape asked for."""
    sets = [f"output_dir={out / f'stage{stage}'}", f"max_steps={args.steps}", f"checkpoint_every={args.checkpoint_every}",
            f"sample_every={args.steps}", "gradient_accumulation_steps=1", "optim.warmup_steps=1", "log_every=1",
            f"data.cache_dir={out / 'cache'}"]
    if args.frames:
        sets.append(f"data.num_frames={args.frames}")
    if args.size:
        sets.append(f"data.resolution={args.size}")
    return sets


def logged_steps(run: Path) -> list[int]:
    path = run / "losses.csv"
    return [int(line.split(",")[0]) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def check(rows: list[dict], ok: bool, what: str) -> None:
    rows[-1].setdefault("checks", []).append(f"{'ok' if ok else 'FAILED'}: {what}")
    if not ok:
        raise RuntimeError(what)


def run(args, out: Path, rows: list[dict]) -> None:
    """The phases, each appended to `rows` as it ends; a failed check raises RuntimeError naming it."""
    from emuvideo.training.checkpoints import trained_to  # the step of a run's newest checkpoint (no torch)

    sd = out / "sd"
    rows.append(run_phase("build", BUILD, [str(sd), args.preset], out, args.device))
    check(rows, rows[-1]["rc"] == 0 and (sd / "model_index.json").is_file(), f"{args.preset} folder written")
    frames = max(args.frames or 16, 2)  # the clips cover the longest stage (16 frames at 8 fps)
    clips = out / "clips"
    render = ["render", "--out", str(clips), "--clips", str(args.clips), "--frames", str(frames),
              "--size", str(args.size or 512), "--format", "mp4", "-q"]
    rows.append(run_phase("render", CHILD, render, out, args.device))
    check(rows, rows[-1]["rc"] == 0, f"{args.clips} clips rendered")

    model = sd
    for stage in args.stages:
        config = args.configs / f"sd_stage{stage}.yaml"
        sets = stage_sets(args, stage, out)
        run_dir = out / f"stage{stage}"
        guess = None if args.skip_estimate else estimate(config, model, sets, out, f"stage{stage}")
        train = ["train", "--config", str(config), "--model", str(model), "--data", str(clips), *_flags(sets)]
        if stage == args.stages[0]:  # Ctrl+C after the first checkpoint, then --resume latest
            first = lambda: any((run_dir / "checkpoints").glob("checkpoint-*"))  # noqa: E731 (renamed in whole)
            rows.append(run_phase(f"stage{stage}", CHILD, train, out, args.device, interrupt_when=first))
            stopped = rows[-1]["stopped_at"] = trained_to(run_dir)
            rows[-1]["estimate"] = guess
            check(rows, rows[-1]["rc"] == 130 and stopped is not None and stopped < args.steps,
                  f"Ctrl+C stopped stage {stage} at step {stopped} of {args.steps} with a checkpoint (exit 130)")
            rows.append(run_phase(f"stage{stage}-resume", CHILD, [*train, "--resume", "latest"], out, args.device))
            steps = logged_steps(run_dir)
            check(rows, rows[-1]["rc"] == 0 and steps == list(range(1, args.steps + 1)),
                  f"resumed from step {stopped} to {args.steps}, each step logged once (logged: {steps})")
        else:
            rows.append(run_phase(f"stage{stage}", CHILD, train, out, args.device))
        rows[-1]["estimate"] = guess
        check(rows, rows[-1]["rc"] == 0 and (run_dir / "final" / "model_index.json").is_file(),
              f"stage {stage} wrote final/ at step {trained_to(run_dir)}")
        if not args.keep and model != sd:  # the previous stage's folders (~10 GB at sd21) are read no more
            shutil.rmtree(model.parent)
        model = run_dir / "final"

    video = out / "video.mp4"
    frames, size = args.frames or 16, args.size or 512
    generate = ["generate", "--model", str(model), "--prompt", PROMPT, "--output", str(video), "--num-frames",
                str(frames), "--height", str(size), "--width", str(size), "--steps", str(args.generate_steps),
                "--device", args.device, "-q"]
    rows.append(run_phase("generate", CHILD, generate, out, args.device))
    check(rows, rows[-1]["rc"] == 0 and video.is_file(), f"{frames} x {size}² video written")
    from emuvideo.utils.video import read_frames  # PyAV only, no torch

    shape = read_frames(video)[0].shape
    check(rows, shape[:3] == (frames, size, size), f"video of {shape[0]} frames at {shape[2]}x{shape[1]}")


# ---------------------------------------------------------------------------------------------- checks, report
def fits(args, out: Path) -> None:
    """Refuse a run this machine cannot hold, before anything starts: RAM on a CPU, disk everywhere."""
    proc = subprocess.run([sys.executable, "-c", COUNTS, args.preset], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_smoke: --preset {args.preset!r}: {proc.stderr.strip().splitlines()[-1]}")
    n = json.loads(proc.stdout.strip().splitlines()[-1])
    sd_bytes = 4 * (n["unet"] + n["vae"] + n["text_encoder"])  # fp32 safetensors
    folder = sd_bytes + 4 * n["video_unet"]  # a stage's final/: the SD folder's models and the video U-Net
    # Two stages' folders at a time (the next reads the last) + the SD folder + checkpoints (bf16 + 8-bit Adam).
    disk = sd_bytes + 2 * folder + 2 * 4 * (n["video_unet"] - n["unet"])
    free = shutil.disk_usage(out).free
    print(f"parameters: video U-Net {n['video_unet'] / 1e9:.2f}B, image U-Net {n['unet'] / 1e9:.2f}B, text encoder "
          f"{n['text_encoder'] / 1e6:.0f}M, VAE {n['vae'] / 1e6:.0f}M; disk needed ~{disk / GiB:.0f} GiB, "
          f"free {free / GiB:.0f} GiB")
    if free < disk:
        raise SystemExit(f"gpu_smoke: {out} has {free / GiB:.0f} GiB free, the run needs ~{disk / GiB:.0f} GiB")
    if args.device != "cpu":
        return
    # Writing final/ re-reads the base in fp32 (its spatial weights) while the trained pipeline is alive.
    ram = 2 * folder - 4 * n["video_unet"] + 2 * GiB
    available = _available_ram()
    print(f"RAM: the CPU run needs ~{ram / GiB:.1f} GiB (export: the base re-read beside the trained pipeline), "
          f"available {available / GiB:.1f} GiB")
    if available < ram:
        raise SystemExit(f"gpu_smoke: ~{ram / GiB:.1f} GiB of RAM needed, {available / GiB:.1f} GiB available; "
                         "try a smaller --preset (sd15, default, tiny)")


def _available_ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(value) -> str:
    return f"{value / GiB:.2f}" if isinstance(value, (int, float)) else "-"


def table(rows: list[dict]) -> str:
    head = ("phase", "exit", "wall s", "alloc GiB", "reserved GiB", "card GiB", "RSS GiB", "est. peak", "est. card")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        guess = r.get("estimate") or {}
        cells = (r["phase"], r["rc"], r["wall_s"], _gib(r.get("max_memory_allocated")),
                 _gib(r.get("max_memory_reserved")), _gib(r.get("card_used")), _gib(r.get("peak_rss")),
                 _gib(guess.get("peak_bytes")), _gib(guess.get("card_bytes")))
        lines.append(" | ".join(str(c) for c in cells))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gpu_smoke"), help="a new or empty folder (default: runs/gpu_smoke)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu")
    p.add_argument("--preset", default="sd21", help="model size of the random folder: sd21 (default), sd15, default, tiny")
    p.add_argument("--tiny", action="store_true", help="4 frames at 64² (the CPU run; --frames/--size win)")
    p.add_argument("--frames", type=int, help="frames of every stage and of the video (default: each config's; 16)")
    p.add_argument("--size", type=int, help="frame side of every stage and of the video (default: each config's; 512)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per stage (default: 4)")
    p.add_argument("--checkpoint-every", type=int, default=2, help="steps between checkpoints (default: 2)")
    p.add_argument("--stages", default="1,2,3", help="which of configs/video/sd_stage{1,2,3} run, in order (default: 1,2,3)")
    p.add_argument("--clips", type=int, default=8, help="clips rendered (default: 8)")
    p.add_argument("--generate-steps", type=int, default=16, help="sampler steps of generate (default: 16)")
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "video", help="where sd_stage*.yaml are")
    p.add_argument("--skip-estimate", action="store_true", help="no estimate-memory beside the training phases")
    p.add_argument("--keep", action="store_true", help="keep every stage's folder (default: a stage's folder is "
                   "removed once the next stage has run)")
    args = p.parse_args(argv)
    if args.tiny:
        args.frames, args.size = args.frames or 4, args.size or 64
    args.stages = [int(s) for s in args.stages.split(",") if s.strip()]
    if not args.stages or any(s not in (1, 2, 3) for s in args.stages):
        p.error(f"--stages takes 1, 2, 3 (comma-separated), got {args.stages}")
    if args.steps <= args.checkpoint_every or args.checkpoint_every < 1:
        p.error("--steps must exceed --checkpoint-every >= 1: stage 1 is stopped after its first checkpoint")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out {str(args.out)!r} is not empty: choose a new folder")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    check_imports()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    fits(args, out)
    started, failure = time.perf_counter(), None
    rows: list[dict] = []
    try:
        run(args, out, rows)
    except RuntimeError as err:
        failure = str(err)
    result = {"device": args.device, "preset": args.preset, "frames": args.frames, "size": args.size,
              "steps": args.steps, "stages": args.stages, "seconds": round(time.perf_counter() - started, 1),
              "failure": failure, "phases": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(f"{out / 'results.json'}; total {result['seconds']} s")
    if failure:
        print(f"gpu_smoke: FAILED: {failure} (see {out / 'logs'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
