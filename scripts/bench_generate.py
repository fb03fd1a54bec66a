"""Generation speed: `emuvideo generate` end to end, and emuvideo against a plain diffusers loop on the same work.

Mode `compare` (`--config cpu-default | gpu-sd21-256 | gpu-sd21-512`): one process, the same video U-Net weights,
first frame, prompt, frames, resolution, steps and precision through emuvideo's image-to-video pipeline and
through a plain diffusers sampling loop written here (`diffusers_run`: DDIMScheduler, the same U-Net forward,
the same conditioning and three-term guidance, one VAE decode), one warm-up each, then `--repeats` runs
alternating between the two; medians, their ratio, peak memory, and the largest difference between the two
videos (they are the same sampling: ~0 in fp32). The GPU configurations need CUDA.

Mode `e2e` (the default):

Each repeat is a fresh process running the real CLI (import, load, text -> image -> video, decode, write
mp4), timed wall-clock. The baseline, measured in the same run, is the floor any diffusers-based CLI pays:
a fresh process that only imports torch + diffusers + transformers. A second floor imports them the way
the CLI does (cyclic collector paused, then frozen; see `emuvideo.cli._import_library`). The table shows
all three, the ratio to the plain floor, and the target (issue: <= 10 s, aim 5 s on the 2-core machine).

Usage:
    python scripts/bench_generate.py [--repeats 3] [--model DIR] [--out bench_generate.json]
    python scripts/bench_generate.py --mode compare --config cpu-default --repeats 5
    python scripts/bench_generate.py --mode compare --config gpu-sd21-512 --repeats 5 [--dtype bf16] [--attention sdpa]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emuvideo.utils.files import atomic_path

TARGET_S = 10.0

# One in-process run, timed stage by stage as the CLI runs them, to say where the end-to-end seconds go.
# "exit" is the interpreter's shutdown after the last line, timed by the parent.
BREAKDOWN = """
import json, sys, time
t0 = time.perf_counter()
import emuvideo.cli as cli
t1 = time.perf_counter()
cli._import_library()  # torch, diffusers, transformers and the pipelines, as `main` imports them
import torch
from emuvideo.models.encoding import decode_frames, to_uint8
from emuvideo.pipelines.loading import load_pipeline
from emuvideo.utils.video import write_video
t2 = time.perf_counter()
pipe = load_pipeline(sys.argv[1] or None); pipe.set_progress_bar_config(disable=True)
t3 = time.perf_counter()
prompt, g = "a yellow triangle moving up quickly", torch.Generator().manual_seed(0)
image = pipe.text_to_image(prompt, generator=g, output_type="np").images  # (1, H, W, 3) in [0, 1]
t4 = time.perf_counter()
latents = pipe.image_to_video(list(image), prompt, num_frames=16, generator=g, output_type="latent").frames
t5 = time.perf_counter()
with torch.no_grad():
    frames = to_uint8(decode_frames(pipe.vae, latents))[0]
t6 = time.perf_counter()
write_video(sys.argv[2], frames, pipe.config.default_fps)
t7 = time.perf_counter()
print(json.dumps({"import emuvideo.cli": t1 - t0, "import library": t2 - t1, "load": t3 - t2,
                  "text_to_image": t4 - t3, "image_to_video": t5 - t4, "decode": t6 - t5, "write mp4": t7 - t6,
                  "end": time.time()}))
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_e2e(args) -> dict:
    """Process start to mp4 against the bare import floor (see the module docstring)."""

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.mp4"
        gen = [sys.executable, "-m", "emuvideo.cli", "generate", "--prompt", "a yellow triangle moving up quickly",
               "--num-frames", "16", "--output", str(out), "--quiet"]
        gen += ["--model", args.model] if args.model else []
        gen += ["--steps", str(args.steps)] if args.steps else []
        floor = [sys.executable, "-c", "import torch, diffusers, transformers"]
        floor_gc = [sys.executable, "-c", "import gc; gc.disable(); import torch, diffusers, transformers; gc.freeze()"]
        timed(floor)  # warm the file cache once so no row pays a cold disk
        commands = {"import floor": floor, "import floor, GC paused": floor_gc, "emuvideo generate": gen}
        rows = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved, so background load hits all rows alike
            for name, cmd in commands.items():
                rows[name].append(timed(cmd))

        child = subprocess.run([sys.executable, "-c", BREAKDOWN, args.model or "", str(out)], check=True,
                               capture_output=True, text=True)
        exited = time.time()
        breakdown = json.loads(child.stdout.strip().splitlines()[-1])
        breakdown["exit"] = exited - breakdown.pop("end")

    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "repeats": args.repeats,
        "seconds": rows,
        "median_s": med,
        "generate_over_floor": med["emuvideo generate"] / med["import floor"],
        "target_s": TARGET_S,
        "meets_target": med["emuvideo generate"] <= TARGET_S,
        "in_process_breakdown_s": breakdown,
    }
    print(f"| what (fresh process, {result['device']}) | median s | runs |")
    print("|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"\ngenerate / import floor = {result['generate_over_floor']:.2f}x; "
          f"target <= {TARGET_S:.0f} s: {'met' if result['meets_target'] else 'NOT met'}")
    print("in process (one run, default steps): " + ", ".join(f"{k} {v:.2f} s" for k, v in breakdown.items()))
    return result



# ---------------------------------------------------------------------------------------------- compare mode
# The same work twice: model, frames, resolution, steps and precision are the configuration's.
CONFIGS = {
    # the shipped model on the CPU, as `emuvideo generate` runs it
    "cpu-default": dict(model="shipped", frames=16, size=64, steps=25, device="cpu", dtype="fp32"),
    # Stable Diffusion 2.1's U-Net inflated to video, random weights (`emuvideo.models.presets`), on a GPU
    "gpu-sd21-256": dict(model="sd21", frames=16, size=256, steps=50, device="cuda", dtype="fp16"),
    "gpu-sd21-512": dict(model="sd21", frames=16, size=512, steps=50, device="cuda", dtype="fp16"),
    # milliseconds a run; for the tests of this script
    "cpu-tiny": dict(model="tiny", frames=4, size=16, steps=2, device="cpu", dtype="fp32"),
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
PROMPT = "a yellow triangle moving up quickly"


def random_pipeline_of(preset: str, frames: int, seed: int = 0):
    """An `EmuImageToVideoPipeline` of a preset's size with random weights: its video U-Net and VAE, a 2-layer random
    text encoder as wide as the U-Net's cross-attention (the same in both paths, so its size does not matter)
    and the packaged MiniLM tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from emuvideo.models.presets import build_vae, build_video_unet, get_preset
    from emuvideo.models.text_encoder import load_minilm
    from emuvideo.pipelines.image_to_video import EmuImageToVideoPipeline
    from emuvideo.schedules import make_sample_scheduler

    tokenizer, _ = load_minilm()
    width = get_preset(preset).unet["cross_attention_dim"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=width,
                                                    intermediate_size=width, num_hidden_layers=2,
                                                    num_attention_heads=max(1, width // 64),
                                                    max_position_embeddings=tokenizer.model_max_length,
                                                    bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))
        unet, vae = build_video_unet(preset), build_vae(preset)
    return EmuImageToVideoPipeline(vae, text_encoder.eval(), tokenizer, unet, make_sample_scheduler("v_prediction"),
                                   default_num_frames=frames)


def load_config_pipeline(config: dict, model: str | None):
    import torch

    from emuvideo.pipelines.loading import load_pipeline

    dtype = getattr(torch, DTYPES[config["dtype"]])
    if config["model"] == "shipped":
        pipe = load_pipeline(model, device=config["device"]).image_to_video
    else:
        pipe = random_pipeline_of(config["model"], config["frames"]).to(config["device"])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def emuvideo_run(pipe, image, config: dict, seed: int):
    """emuvideo's image-to-video pipeline: text + first frame -> frames `(1, T, 3, H, W)` in [0, 1] ("pt")."""
    import torch

    generator = torch.Generator(config["device"]).manual_seed(seed)
    return pipe(image, PROMPT, num_frames=config["frames"], height=config["size"], width=config["size"],
                num_inference_steps=config["steps"], generator=generator, output_type="pt").frames


def diffusers_run(pipe, image, config: dict, seed: int):
    """The same work as a plain diffusers sampling loop over the same modules, none of emuvideo's pipeline code:
    the first frame's latent and mask as the condition (paper §3.2), the three guidance terms
    X(∅) + w_i·(X(I) − X(∅)) + w_p·(X(I, p) − X(I)) in one batch, DDIM, the first frame pinned after each step."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor
    from diffusers.video_processor import VideoProcessor

    device, dtype = torch.device(config["device"]), pipe.unet.dtype
    unet, vae, scheduler = pipe.unet, pipe.vae, DDIMScheduler.from_config(pipe.scheduler.config)
    frames, size, w_i, w_p = config["frames"], config["size"], 2.0, 7.5
    generator = torch.Generator(config["device"]).manual_seed(seed)
    with torch.no_grad():
        # text: [unconditional, conditional]
        tokens = pipe.tokenizer(["", PROMPT], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask_kw = {} if pipe.text_encoder.config.model_type == "clip_text_model" else {
            "attention_mask": tokens.attention_mask.to(device)}
        text = pipe.text_encoder(tokens.input_ids.to(device), **mask_kw)[0].to(dtype)
        text_3 = torch.cat([text[:1], text[:1], text[1:]])
        # the first frame's latent at frame 0 of a zero video; mask 1 there
        pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].to(device, vae.dtype) / 127.5 - 1
        latent = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor  # (1, C, h, w)
        c, h, w = latent.shape[1:]
        cond = latent.new_zeros(1, c, frames, h, w)
        cond[:, :, 0] = latent
        mask = latent.new_zeros(1, 1, frames, h, w)
        mask[:, :, 0] = 1
        cond_3 = torch.cat([torch.zeros_like(cond), cond, cond]).to(dtype)
        mask_3 = torch.cat([torch.zeros_like(mask), mask, mask]).to(dtype)
        scheduler.set_timesteps(config["steps"], device=device)
        latents = randn_tensor(cond.shape, generator=generator, device=device, dtype=dtype)
        pin_noise = randn_tensor(cond.shape, generator=generator, device=device, dtype=dtype)
        pin = mask.expand_as(latents).to(dtype)
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            out = unet(torch.cat([latents] * 3), t, text_3, conditioning=cond_3, conditioning_mask=mask_3).sample
            x_none, x_image, x_full = out.chunk(3)
            guided = x_none + w_i * (x_image - x_none) + w_p * (x_full - x_image)
            latents = scheduler.step(guided, t, latents).prev_sample
            target = scheduler.add_noise(cond.to(dtype), pin_noise, timesteps[i + 1 : i + 2]) if i + 1 < len(timesteps) \
                else cond.to(dtype)
            latents = pin * target + (1 - pin) * latents
        # decode every frame at once, as diffusers' video pipelines do
        z = latents[0].permute(1, 0, 2, 3).to(vae.dtype) / vae.config.scaling_factor  # (T, C, h, w)
        video = vae.decode(z).sample.clamp(-1, 1)
    # diffusers' own post-processing: (1, T, 3, H, W) in [0, 1], as emuvideo's "pt"
    return VideoProcessor(do_resize=False).postprocess_video(video.permute(1, 0, 2, 3)[None].float(), "pt")


class PeakMemory:
    """Peak memory of a block above its start: CUDA's allocator (`max_memory_allocated`), or on a CPU the
    process's resident set sampled every 5 ms by a thread (psutil; None when it is not installed)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = None

    def __enter__(self):
        import threading

        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:
            import psutil
        except ImportError:
            return self
        process, self.stop = psutil.Process(), threading.Event()
        self.start = self.top = process.memory_info().rss

        def sample():
            while not self.stop.wait(0.005):
                self.top = max(self.top, process.memory_info().rss)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        elif hasattr(self, "thread"):
            self.stop.set()
            self.thread.join()
            self.peak = self.top - self.start


def run_compare(args) -> dict:
    import diffusers
    import torch

    from emuvideo.models.attention import set_attention

    config = dict(CONFIGS[args.config])
    for key in ("frames", "size", "steps", "dtype"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if config["device"] == "cuda" and not torch.cuda.is_available():
        print(f"bench_generate.py: error: --config {args.config} needs a CUDA GPU; this machine has none", file=sys.stderr)
        sys.exit(2)
    pipe = load_config_pipeline(config, args.model)
    attention = [set_attention(m, args.attention, config["device"]) for m in (pipe.unet, pipe.vae)][0]
    image = (np.random.default_rng(0).random((config["size"], config["size"], 3)) * 255).astype(np.uint8)
    paths = {"emuvideo": emuvideo_run, "diffusers loop": diffusers_run}

    def timed_run(fn):
        with PeakMemory(config["device"]) as memory:
            if config["device"] == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            frames = fn(pipe, image, config, 0)
            if config["device"] == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        return seconds, memory.peak, frames

    outputs = {name: timed_run(fn)[2] for name, fn in paths.items()}  # warm-up (kernels, caches), not timed
    difference = (outputs["emuvideo"].float() - outputs["diffusers loop"].float()).abs().max().item()
    seconds, peaks = {name: [] for name in paths}, {name: [] for name in paths}
    for _ in range(args.repeats):  # alternating, so background load hits both paths alike
        for name, fn in paths.items():
            s, peak, _ = timed_run(fn)
            seconds[name].append(s)
            peaks[name].append(peak)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    peak = {name: (None if None in v else max(v)) for name, v in peaks.items()}
    device = (f"cuda ({torch.cuda.get_device_name()})" if config["device"] == "cuda"
              else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()})")
    result = {
        "mode": "compare", "config": args.config, "settings": config, "attention": attention, "device": device,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "repeats": args.repeats,
        "seconds": seconds, "median_s": med,
        "diffusers_over_emuvideo": med["diffusers loop"] / med["emuvideo"],  # > 1: emuvideo is faster
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda max_memory_allocated above the start" if config["device"] == "cuda"
        else "resident set (psutil, sampled every 5 ms) above the start",
        "max_abs_difference": difference,  # the two paths sample the same video: ~0 in fp32
    }
    print(f"| {args.config}: {config['frames']} x {config['size']}², {config['steps']} steps, {config['dtype']}, "
          f"{attention}, {device} | median s | peak memory MiB | runs |")
    print("|---|---|---|---|")
    for name in paths:
        mib = "n/a" if peak[name] is None else f"{peak[name] / 2**20:.0f}"
        print(f"| {name} | {med[name]:.3f} | {mib} | {', '.join(f'{x:.3f}' for x in seconds[name])} |")
    print(f"\ndiffusers loop / emuvideo = {result['diffusers_over_emuvideo']:.2f}x (> 1: emuvideo faster); "
          f"largest difference between the two videos {difference:.2e}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("e2e", "compare"), default="e2e", help="e2e: fresh processes of the CLI "
                        "against the import floor; compare: emuvideo against a plain diffusers loop (default: e2e)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (default: 3)")
    parser.add_argument("--model", help="e2e, and compare --config cpu-default: the model folder (default: shipped)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the pipeline's / the configuration's)")
    parser.add_argument("--config", choices=tuple(CONFIGS), default="cpu-default", help="compare: the work "
                        "(default: cpu-default)")
    parser.add_argument("--frames", type=int, help="compare: override the configuration's frames")
    parser.add_argument("--size", type=int, help="compare: override the configuration's frame side in pixels")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="compare: override the configuration's precision")
    parser.add_argument("--attention", default="auto", help="compare: attention backend of both paths (default: auto)")
    parser.add_argument("--out", help="the JSON file (default: bench_generate.json, compare: bench_<config>.json)")
    args = parser.parse_args(argv)
    for name in ("repeats", "steps", "frames", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.mode == "e2e":
        result = run_e2e(args)
        out = args.out or "bench_generate.json"
    else:
        result = run_compare(args)
        out = args.out or f"bench_{args.config}.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result

if __name__ == "__main__":
    main()
