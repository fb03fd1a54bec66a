"""Memory and speed of the fine-tuning modes, one model and clip size: full vs LoRA vs QLoRA.

    python scripts/bench_finetune.py --preset default                              # CPU
    python scripts/bench_finetune.py --preset sd21 --frames 16 --size 256          # GPU: QLoRA under 16 GB?

Every configuration runs in its own subprocess, so peaks never mix; the parent only collects, prints a
table and writes JSON (`--out`) with ratios against the full fine-tune measured in the same run.

- the U-Net is prepared by `emuvideo.training.stages.video.prepare_unet` (what `emuvideo finetune` runs) from
  the overrides in `CONFIGS`, on top of the CLI's default config (configs/finetune/lora.yaml);
- a step is `video_training_loss` + backward + optimizer step on random latents and text states of the
  model's shapes (`emuvideo.training.memory.step_shapes`): the situation of a run training from the latent
  cache (no VAE or text encoder loaded), without the gradient clipping a run adds (scripts/bench_train_speed.py's
  step has it);
- peak memory: on a GPU `torch.cuda.max_memory_allocated` over the whole child (weights, optimizer state,
  activations); on a CPU the peak resident set over the training steps (Linux VmHWM, reset once the model
  is ready, so building the fp32 model before quantizing it is not counted), also shown above the RSS of
  the interpreter after its imports;
- step time: the median of `--steps` steps after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASELINE = "full (all layers)"
QLORA = {"lora": {"quantize_base": True}, "optim": {"optimizer": "paged_adamw8bit"}}
CONFIGS = {  # name -> TrainConfig overrides on the CLI default (LoRA rank 16 on the temporal layers, AdamW)
    BASELINE: {"mode": "full", "freeze_spatial": False},
    "full + grad ckpt": {"mode": "full", "freeze_spatial": False, "gradient_checkpointing": True},
    "full + 8-bit AdamW": {"mode": "full", "freeze_spatial": False, "optim": {"optimizer": "adamw8bit"}},
    "full (temporal layers)": {"mode": "full", "freeze_spatial": True},
    "LoRA": {},
    "LoRA + 8-bit AdamW": {"optim": {"optimizer": "adamw8bit"}},
    "LoRA + grad ckpt": {"gradient_checkpointing": True},
    "QLoRA, no grad ckpt": QLORA,
    "QLoRA (qlora.yaml: + grad ckpt)": {**QLORA, "gradient_checkpointing": True},
}


def run_child_json(command: list[str], error_chars: int = 200) -> dict:
    """Run `command` (this script or bench_train_speed.py with --child) in its own process and return the JSON of
    its `RESULT {...}` stdout line; {"error": the last stderr line, cut to `error_chars`} when it failed or printed
    none."""
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:error_chars]}
    return json.loads(line.removeprefix("RESULT "))


def child(args) -> dict:
    import resource

    import torch

    from emuvideo.models.presets import build_video_unet
    from emuvideo.schedules import make_train_scheduler
    from emuvideo.training.finetune import finetune_config
    from emuvideo.training.losses import video_training_loss
    from emuvideo.training.memory import step_shapes
    from emuvideo.training.stages.video import prepare_unet
    from emuvideo.training.trainer import make_optimizer
    from emuvideo.utils.benchmark import reset_peak_rss, rss_mib

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import_rss = rss_mib("VmRSS")
    cfg = finetune_config(None, CONFIGS[args.child])
    torch.manual_seed(0)
    unet = build_video_unet(args.preset)  # fp32 on the CPU; QLoRA quantizes it layer by layer onto `device`
    prepare_unet(unet, cfg, device)
    unet.to(device).train()
    optimizer = make_optimizer(unet.parameters(), cfg.optim)
    scheduler = make_train_scheduler(cfg.objective)

    latent_shape, text_shape = step_shapes(args.preset, args.batch, args.frames, args.size)
    latents = torch.randn(latent_shape, device=device)
    text = torch.randn(text_shape, device=device)
    cuda = device.type == "cuda"
    reset = reset_peak_rss() if not cuda else True
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        with autocast:
            loss = video_training_loss(unet, scheduler, latents, text, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    elif reset:
        peak = rss_mib("VmHWM")
    else:  # no VmHWM reset: the whole child's peak (ru_maxrss is in KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    def mib(tensors) -> float:
        return round(sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)) / 2**20, 2)

    return {
        "name": args.child,
        "weights_mb": mib(unet.state_dict().values()),  # 4-bit layers count their packed bytes and scales
        "optimizer_state_mb": mib(v for state in optimizer.state.values() for v in state.values()),
        "trainable_params": unet.num_parameters(only_trainable=True),
        "total_params": unet.num_parameters(),
        "peak_mb": round(peak, 1),
        "import_rss_mb": None if cuda else round(import_rss, 1),
        "step_s": round(statistics.median(times[args.warmup :]), 4),
        "final_loss": round(loss.item(), 4),
    }


def table(results: list[dict], cuda: bool) -> str:
    base = next((r for r in results if r["name"] == BASELINE and "error" not in r), None)
    mem = (lambda r: r["peak_mb"]) if cuda else (lambda r: r["peak_mb"] - r["import_rss_mb"])
    ratio = (lambda a, b: f"{a / b:.2f}x") if base else (lambda a, b: "n/a (baseline failed)")
    head = "peak GPU memory (MiB)" if cuda else "peak RSS (MiB) / above imports"
    lines = [
        f"| config | trainable params | U-Net weights (MiB) | optimizer state (MiB) | {head} | memory vs full "
        "| step (s) | time vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | |")
            continue
        peak = f"{r['peak_mb']:,.0f}" if cuda else f"{r['peak_mb']:,.0f} / {mem(r):,.0f}"
        lines.append(
            f"| {r['name']} | {r['trainable_params']:,} | {r['weights_mb']:,.1f} | {r['optimizer_state_mb']:,.1f} "
            f"| {peak} | {ratio(mem(r), mem(base) if base else 1)} | "
            f"{r['step_s']:.3f} | {ratio(r['step_s'], base['step_s'] if base else 1)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help="tiny, default or sd21")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, help="frame size in pixels (default: the model's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--only", action="append", help="run only these configs (repeatable)")
    parser.add_argument("--out", default="bench_finetune.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from emuvideo.models.presets import get_preset

    preset = get_preset(args.preset)
    if args.size is None:
        args.size = preset.unet["sample_size"] * 2 ** (len(preset.vae["block_out_channels"]) - 1)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    names = args.only or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or BASELINE not in names:
        parser.error(f"unknown config {unknown[0]!r}" if unknown else f"--only must include the baseline {BASELINE!r}")
    results = []
    for name in names:
        cmd = [sys.executable, __file__, "--child", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "only", "out")
        ]
        results.append({"name": name, **run_child_json(cmd, error_chars=160)})
        print(f"{name}: {results[-1]}", file=sys.stderr, flush=True)

    import torch

    from emuvideo.utils.benchmark import device_name

    cuda = args.device.startswith("cuda")
    report = {
        "device": device_name(args.device, args.threads),
        "preset": args.preset, "frames": args.frames, "size": args.size, "batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "mixed_precision": args.mixed_precision,
        "torch": torch.__version__, "baseline": BASELINE, "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    size = f"{args.frames} frames at {args.size}x{args.size}, batch {args.batch}"
    print(f"{report['device']}, preset {args.preset}, {size}")
    print(table(results, cuda))
    return 1 if any("error" in r for r in results) else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
