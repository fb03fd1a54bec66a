"""Training speed of one config, eager against each speed setting, in one run (issue 18): seconds per step, the
ratio to eager, MFU on a GPU of known peak, and whether the losses stay the same.

    python scripts/bench_train_speed.py --config configs/video/sd_stage2.yaml --preset sd21 --frames 16 --size 512
    python scripts/bench_train_speed.py --config qlora --preset sd21 --frames 16 --size 512           # QLoRA
    python scripts/bench_train_speed.py --config configs/video/sd_stage2.yaml --preset tiny --frames 4 --size 64 \\
        --device cpu --steps 3 --warmup 1                                                              # the plumbing

Each variant is the config with a few `--set` pairs (`VARIANTS`; those that do not apply to the config, or to the
device, are skipped and named) and runs in its own process, so peaks and compiled code never mix:

- a step is what `emuvideo train` runs from the latent cache: the U-Net prepared by `prepare_unet` +
  `apply_speed_settings`, `video_training_loss`, backward, gradient clipping as the config says, the optimizer;
  random latents and text states of the model's shapes, the same in every variant (seed 0), so the losses of
  every step can be compared with eager's: a setting that changes what is computed shows here;
- seconds per step: the median of `--steps` steps after `--warmup` (compilation happens in the warm-up; its
  time is reported apart as `first_step_s`);
- MFU = 3 x forward FLOPs (counted on meta, `emuvideo.training.throughput.forward_flops`) / seconds per step /
  the device's dense bf16 peak (`peak_bf16`: emuvideo/training/gpu_throughput.json's `peak_bf16_flops` for its
  device, `PEAK_BF16` for others, or `--peak-tflops`); NF4 modes use the bf16 count (the counter does
  not see bitsandbytes' 4-bit matmuls), and frozen weights' skipped gradients are not subtracted (the usual
  convention, as in docs/performance.md);
- memory: on a GPU `max_memory_allocated` / `max_memory_reserved`; on a CPU the peak resident set.

Writes `--out` (JSON: device, torch, shape, FLOPs, one row per variant with its losses) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_finetune import run_child_json  # scripts/bench_finetune.py: the same RESULT-line protocol

EAGER = "eager (the config as written)"
# name -> (--set pairs, applies(cfg, cuda) -> reason it does not, or None)
VARIANTS = {
    EAGER: ([], lambda cfg, cuda: None),
    "fused AdamW": (["optim.fused=true"],
                    lambda cfg, cuda: None if cfg.optim.optimizer == "adamw" else f"optimizer is {cfg.optim.optimizer}"),
    "channels-last convs": (["channels_last=true"], lambda cfg, cuda: None),
    "regional compile": (["compile=regional"], lambda cfg, cuda: None),
    "no checkpointing": (["gradient_checkpointing=false"],
                         lambda cfg, cuda: None if cfg.gradient_checkpointing else "checkpointing is off already"),
    "SDPA: flash": ([], lambda cfg, cuda: None if cuda else "CUDA only"),
    "SDPA: cuDNN": ([], lambda cfg, cuda: None if cuda else "CUDA only"),
    "SDPA: memory-efficient": ([], lambda cfg, cuda: None if cuda else "CUDA only"),
}
SDPA = {"SDPA: flash": "FLASH_ATTENTION", "SDPA: cuDNN": "CUDNN_ATTENTION", "SDPA: memory-efficient": "EFFICIENT_ATTENTION"}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by torch.cuda.get_device_name; the device of
# emuvideo/training/gpu_throughput.json (an H200) takes its peak_bf16_flops from there (`peak_bf16`)
PEAK_BF16 = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12}


def peak_bf16(name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of the device `name`: gpu_throughput.json's for its device, else `PEAK_BF16`'s."""
    from emuvideo.training.throughput import load_throughput

    table = load_throughput()
    if table.get("device") == name and table.get("peak_bf16_flops"):
        return float(table["peak_bf16_flops"])
    return PEAK_BF16.get(name)


def load(args, sets: list[str]):
    from emuvideo.config import load_config, parse_overrides
    from emuvideo.training.config import TrainConfig

    return load_config(TrainConfig, args.config, overrides=parse_overrides([*args.set, *sets]))


def child(args) -> dict:
    import contextlib

    import torch

    from emuvideo.models.presets import build_video_unet
    from emuvideo.schedules import make_train_scheduler
    from emuvideo.training.losses import video_training_loss
    from emuvideo.training.memory import step_shapes
    from emuvideo.training.stages.video import WEIGHT_DTYPES, apply_speed_settings, prepare_unet
    from emuvideo.training.trainer import make_optimizer
    from emuvideo.utils.benchmark import peak_rss_mib, reset_peak_rss

    sets, _ = VARIANTS[args.child]
    cfg = load(args, sets)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    unet = build_video_unet(args.preset)
    prepare_unet(unet, cfg, device, fresh=True)
    unet.to(device).train()
    apply_speed_settings(unet, cfg)
    optimizer = make_optimizer(unet.parameters(), cfg.optim)
    scheduler = make_train_scheduler(cfg.objective)
    dtype = WEIGHT_DTYPES[cfg.weight_dtype]
    generator = torch.Generator().manual_seed(1)
    latent_shape, text_shape = step_shapes(args.preset, args.batch, args.frames, args.size)
    batches = [(torch.randn(latent_shape, generator=generator).to(device, dtype),
                torch.randn(text_shape, generator=generator).to(device, dtype))
               for _ in range(args.warmup + args.steps)]
    params = [p for p in unet.parameters() if p.requires_grad]
    if args.child in SDPA:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(getattr(SDPBackend, SDPA[args.child]))
    else:
        kernel = contextlib.nullcontext()
    torch.manual_seed(2)  # the noise and timesteps each step draws
    reset = cuda or reset_peak_rss()
    times, losses = [], []
    with kernel:
        for latents, text in batches:
            start = time.perf_counter()
            loss = video_training_loss(unet, scheduler, latents, text, cfg)
            loss.backward()
            if cfg.optim.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    row = {"name": args.child, "sets": sets, "step_s": statistics.median(times[args.warmup:]),
           "first_step_s": times[0], "losses": losses}
    if cuda:
        row.update(allocated_gib=torch.cuda.max_memory_allocated(device) / 2**30,
                   reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30)
    elif reset:
        row.update(peak_rss_gib=peak_rss_mib() / 1024)
    return row


def table(report: dict) -> str:
    rows = report["rows"]
    eager = next((r for r in rows if r["name"] == EAGER and "step_s" in r), None)
    lines = ["| variant | s / step | vs eager | MFU | first step s | max loss difference vs eager | memory (GiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "step_s" not in r:
            lines.append(f"| {r['name']} | {r.get('skipped') or 'failed: ' + r.get('error', '')} | | | | | |")
            continue
        ratio = f"{eager['step_s'] / r['step_s']:.2f}x" if eager else "n/a"
        mfu = f"{r['mfu']:.0%}" if r.get("mfu") is not None else "n/a"
        diff = f"{r['loss_difference']:.2e}" if r.get("loss_difference") is not None else "n/a"
        memory = (f"{r['allocated_gib']:.2f} / {r['reserved_gib']:.2f} reserved" if "allocated_gib" in r
                  else f"{r['peak_rss_gib']:.2f} RSS" if "peak_rss_gib" in r else "n/a")
        lines.append(f"| {r['name']} | {r['step_s']:.3f} | {ratio} | {mfu} | {r['first_step_s']:.1f} | {diff} "
                     f"| {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/video/sd_stage2.yaml", help="a training config (path or name)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for every variant")
    parser.add_argument("--preset", default="sd21", help="model size: sd21 (default), sd15, default, tiny")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels (default: 512)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (median; default: 6)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing, compilation included (default: 2)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--only", action="append", help="run only these variants (repeatable; eager always runs)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's dense bf16 peak, for MFU (default: gpu_throughput.json's or PEAK_BF16)")
    parser.add_argument("--out", default="bench_train_speed.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    unknown = [n for n in args.only or [] if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    cfg = load(args, [])  # a bad config or --set is refused here, before any child starts
    cuda = args.device.startswith("cuda")

    from emuvideo.training.throughput import forward_flops
    from emuvideo.utils.benchmark import device_name

    flops = forward_flops(cfg, args.preset, None, args.frames, args.size, args.batch)
    name = device_name(args.device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_bf16(name) if cuda else None
    rows = []
    for variant, (_, applies) in VARIANTS.items():
        if args.only and variant != EAGER and variant not in args.only:
            continue
        reason = applies(cfg, cuda)
        if reason:
            rows.append({"name": variant, "skipped": f"skipped: {reason}"})
            continue
        command = [sys.executable, __file__, "--child", variant, "--config", args.config, "--preset", args.preset,
                   "--frames", str(args.frames), "--size", str(args.size), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                   *[arg for pair in args.set for arg in ("--set", pair)]]
        rows.append({"name": variant, **run_child_json(command)})
        print(f"{variant}: {rows[-1].get('step_s', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    eager = next((r for r in rows if r["name"] == EAGER and "losses" in r), None)
    for r in rows:
        if "step_s" in r:
            r["mfu"] = 3 * flops / r["step_s"] / peak if peak else None
            if eager:  # relative to eager's loss, the largest over the steps
                r["loss_difference"] = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], eager["losses"]))
    report = {"device": name, "torch": torch.__version__, "config": args.config, "sets": args.set,
              "preset": args.preset, "frames": args.frames, "size": args.size, "batch": args.batch,
              "steps": args.steps, "warmup": args.warmup, "forward_flops": flops, "peak_bf16_flops": peak,
              "rows": rows}
    from emuvideo.utils.files import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    print(f"{name}; {args.config} {' '.join(args.set)}; preset {args.preset}, {args.frames} x {args.size}², "
          f"batch {args.batch}; forward {flops / 1e12:.2f} TFLOP")
    print(table(report))
    print(args.out)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
