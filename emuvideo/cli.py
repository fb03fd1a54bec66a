"""The `emuvideo` command: parse, check, call a library function. Errors end in one line and exit code 2."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import math
import re
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped with Ctrl+C

logger = logging.getLogger(__name__)


class CLIError(ValueError):
    """A bad argument, reported as one line on stderr."""


class _CommandParser(argparse.ArgumentParser):
    """The parser of a subcommand: an unknown flag after `emuvideo generate` is reported with generate's usage.

    argparse hands what a subparser does not know back to the top-level parser (`parse_known_args`), which
    then prints `emuvideo`'s usage, not the command's; here the subparser reports it itself.
    """

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


# ---------------------------------------------------------------------------------------------- options
# The names of `emuvideo.schedules.SAMPLERS` and `emuvideo.models.attention.ATTENTION_BACKENDS`, written out so
# that `--help` and a bad choice need no torch import (tests/test_samplers.py checks they agree).
SAMPLER_NAMES = ("ddim", "dpm++", "unipc", "euler")
ATTENTION_NAMES = ("auto", "sdpa", "xformers", "math")


def _add_speed_options(p: argparse.ArgumentParser, sampler: bool = True) -> None:
    if sampler:  # not on `interpolate`: the interpolation pipeline samples with ddim only (its noise augmentation)
        p.add_argument("--sampler", choices=SAMPLER_NAMES, help="the diffusers sampler of every stage, on the model's "
                       "schedule (default: the model's own, ddim for the shipped one)")
    p.add_argument("--attention", choices=ATTENTION_NAMES, default="auto", help="attention kernels: sdpa (torch), "
                   "xformers (CUDA), math (plain matmul + softmax, the reference); auto: xformers on CUDA when "
                   "installed, else sdpa (default: auto)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    # Defaults live in the pipelines' signatures; None here means "the pipeline's default".
    p.add_argument("--model", metavar="PATH", help="model folder or Hub id (default: the model shipped with emuvideo)")
    p.add_argument("--variant", metavar="NAME", help="load the weight files of this variant, e.g. fp16 for "
                   "diffusion_pytorch_model.fp16.safetensors (default: the plain files)")
    p.add_argument("--negative-prompt", metavar="TEXT", help="what the unconditional branch steers away from "
                   "(default: empty)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed; each prompt uses it (default: 0)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N", help="sampler steps (default: 16, "
                   "where the shipped model's quality stops improving; --interpolate: 25)")
    p.add_argument("--num-frames", type=int, metavar="N", help="frames per video (default: the model's training "
                   "length)")
    p.add_argument("--fps", type=int, metavar="N", help="frame rate of the written file (default: the model's)")
    p.add_argument("--height", type=int, metavar="PX", help="frame height in pixels (default: the model's training "
                   "size)")
    p.add_argument("--width", type=int, metavar="PX", help="frame width in pixels (default: the model's training size)")
    p.add_argument("--guidance-image", type=float, metavar="S", help="w_i, image guidance scale (default: 2.0)")
    p.add_argument("--guidance-text", type=float, metavar="S", help="w_p, text guidance scale (default: 7.5)")
    p.add_argument("--lora", action="append", metavar="PATH", help="a LoRA for the video U-Net: a folder from "
                   "finetune or a diffusers .safetensors file; repeat for several")
    p.add_argument("--lora-scale", action="append", type=float, metavar="S", help="strength of each --lora, in "
                   "order, or one for all (default: 1.0; 0 = base model)")
    p.add_argument("--image-lora", action="append", metavar="PATH", help="a Stable Diffusion LoRA (diffusers or "
                   "kohya .safetensors, or its folder) for the image stage; repeat for several")
    p.add_argument("--image-lora-scale", action="append", type=float, metavar="S", help="strength of each "
                   "--image-lora, in order, or one for all (default: 1.0)")
    p.add_argument("--interpolate", type=int, metavar="FACTOR", help="multiply the frame rate (and frame count) "
                   "by FACTOR with the interpolation model, key frames kept (the shipped model: 2 or 4)")
    _add_device(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_speed_options(p)
    _add_allow_pickle(p)


# `--device` values, checked before torch is imported: torch's own error for a wrong one is a traceback.
DEVICES = "auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps"
_DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto, cuda if available, else cpu)")


def _add_allow_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true", help="load a model whose weights are pickle files (.bin, .pt, .ckpt), with "
                   "torch.load(weights_only=True); without it such a model is refused, as pickle can run code")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emuvideo",
        description="Text-to-video as Meta's Emu Video does it: an image from the text, then a video from the image "
        "and the text. Generate or animate clips, train the stages, fine-tune on your clips, evaluate.",
        epilog="Run 'emuvideo COMMAND --help' for a command's options. Bad input ends in one line on stderr and exit "
        "code 2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('emuvideo').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    gen = sub.add_parser("generate", help="text -> image -> video")
    gen.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    gen.add_argument("--prompt-file", metavar="FILE", help="a text file, one prompt a line (blank lines and lines "
                     "starting with # are skipped)")
    gen.add_argument("--output", metavar="FILE", help="the video file for one prompt (.mp4 or .gif)")
    gen.add_argument("--output-dir", metavar="DIR", help="a folder for several videos: 000.mp4, 001.mp4, ... in "
                     "prompt order; files of those names already there are refused unless --overwrite")
    gen.add_argument("--overwrite", action="store_true", help="with --output-dir: replace the files of those names")
    gen.add_argument("--format", choices=("mp4", "gif"), help="file type (default: mp4 with --output-dir; with "
                     "--output, its extension, which must agree)")
    gen.add_argument("--save-image", action="store_true", help="also write each generated first frame (.png)")
    gen.add_argument("--image-steps", type=int, dest="image_num_inference_steps", metavar="N", help="sampler steps "
                     "of the image stage (default: --steps)")
    _add_sampling_options(gen)

    ani = sub.add_parser("animate", help="bring an image to life: (image, text) -> video")
    ani.add_argument("--image", required=True, metavar="FILE", help="the first frame (png, jpg, ...)")
    ani.add_argument("--prompt", required=True, metavar="TEXT", help="what happens in the video")
    ani.add_argument("--output", required=True, metavar="FILE", help="the video file (.mp4 or .gif)")
    ani.add_argument("--last-image", metavar="FILE", help="the last frame: a video that goes from --image to this "
                     "image")
    ani.add_argument("-v", "--verbose", action="store_true", help="log what was done to each image: its size, mode "
                     "and transparency, the resize and the crop")
    _add_sampling_options(ani)

    itp = sub.add_parser("interpolate", help="multiply a clip's frame rate with the interpolation model (key "
                         "frames kept)")
    itp.add_argument("video", help="the clip (.mp4 or .gif), at the model's frame size")
    itp.add_argument("--factor", type=int, default=2, metavar="N", help="frame-rate multiplier: (T-1)*factor+1 "
                     "frames from T (default: 2; the shipped model knows 2 and 4)")
    itp.add_argument("--output", required=True, metavar="FILE", help="the new video file (.mp4 or .gif)")
    itp.add_argument("--prompt", default="", metavar="TEXT", help="what the clip shows (default: none)")
    itp.add_argument("--model", metavar="PATH", help="model folder or Hub id (default: the model shipped with "
                     "emuvideo)")
    itp.add_argument("--seed", type=int, default=0, metavar="N", help="noise seed (default: 0)")
    itp.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N", help="sampler steps "
                     "(default: 25)")
    _add_device(itp)
    itp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_speed_options(itp, sampler=False)
    _add_allow_pickle(itp)

    sub.add_parser("info", help="versions, device, attention backend, where the default model lives")

    train = sub.add_parser("train", help="run a training stage from a YAML config (a file or a packaged config)")
    train.add_argument("--config", required=True, help="a YAML file, or the name of a packaged config "
                       "(e.g. 02_video_stage1, sd_stage1)")
    train.add_argument("--model", help="video stages: the model to start from (a Stable-Diffusion-style or emuvideo "
                       "folder, or Hub id; an image model is inflated); sets the config's init")
    train.add_argument("--data", help="a folder of your clips (sets data.source=folder, data.root); "
                       "default: the config's data.source")
    train.add_argument("--resume", help="'latest' or a checkpoint folder")
    train.add_argument("--max-steps", type=int, help="override the config's max_steps")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    _add_allow_pickle(train)

    ft = sub.add_parser("finetune", help="fine-tune the video model on your clips (LoRA / QLoRA / full)")
    ft.add_argument("--data", required=True, help="folder of clips with .txt captions or metadata.jsonl/.csv")
    ft.add_argument("--config", help="a YAML file, or a packaged config's name: lora, qlora, full (default: the "
                    "values of the packaged config lora)")
    ft.add_argument("--output-dir", help="the run folder (default: runs/finetune)")
    ft.add_argument("--model", help="base model folder or Hub id (default: the shipped model)")
    ft.add_argument("--resume", help="'latest' or a checkpoint folder")
    ft.add_argument("--max-steps", type=int, help="override the config's max_steps")
    ft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    _add_allow_pickle(ft)

    ev = sub.add_parser(
        "eval",
        help="judge a model on the shapes world: strict and lenient verdicts, per attribute, with 95%% intervals",
        description="Generates every prompt of a set with --seeds noise draws (or reads existing clips with "
        "--videos/--captions) and reports strict and lenient accuracy per attribute, for video-trained vs "
        "held-out pairs and slow vs quick prompts, each with a Wilson 95% interval.",
    )
    ev.add_argument("--model", help="model folder or Hub id (default: the model shipped with emuvideo)")
    ev.add_argument("--lora", help="a LoRA folder from finetune, applied to the video U-Net")
    ev.add_argument("--lora-scale", type=float, default=1.0, help="strength of the LoRA (0 = base model; default: 1.0)")
    ev.add_argument("--prompts", help="canonical (15 pairs x 4 directions x 2 speeds), paraphrase (60 held-out "
                    "phrasings), validation (120 phrasings for tuning recipes) or a file, one prompt a line "
                    "(default: canonical)")
    ev.add_argument("--seeds", type=int, metavar="N", help="noise draws per prompt, each prompt x seed its own "
                    "(default: 3)")
    ev.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N", help="sampler steps (default: 16)")
    ev.add_argument("--image-steps", type=int, dest="image_num_inference_steps", metavar="N", help="sampler steps "
                    "of the image stage (default: --steps)")
    ev.add_argument("--batch-size", type=int, default=8, metavar="N", help="videos per pipeline call (default: 8)")
    ev.add_argument("--videos", help="score the .mp4/.gif clips of this folder (name order) instead of generating")
    ev.add_argument("--captions", help="with --videos: one caption a line, the i-th for the i-th clip")
    ev.add_argument("--json", help="write the summary and every verdict to this JSON file")
    _add_device(ev)
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_speed_options(ev)
    _add_allow_pickle(ev)

    est = sub.add_parser(
        "estimate-memory",
        help="predict the peak GPU memory of one training step, without a GPU",
        description="Runs one real training step of the config on PyTorch's meta device and counts live memory "
        "as the CUDA caching allocator holds it (what torch.cuda.max_memory_allocated reports).",
    )
    est.add_argument("--preset", help="model size: sd21, sd15, default, tiny (default: the config's preset)")
    est.add_argument("--model", help="a local model folder (Stable-Diffusion-style or emuvideo); only its "
                     "unet/config.json is read")
    est.add_argument("--config", help="a train or finetune YAML (default: the finetune defaults, LoRA)")
    est.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    est.add_argument("--frames", type=int, help="frames per clip (default: the config's data.num_frames)")
    est.add_argument("--size", type=int, help="frame side in pixels (default: data.resolution, else the model's)")
    est.add_argument("--batch", type=int, help="clips per step (default: the config's batch_size)")
    est.add_argument("--budget", help="a card size such as 24GB: estimate every video config written for the "
                     "model size asked, list those that fit, smallest first, and what would fit the nearest misses")
    est.add_argument("--configs-dir", help="where --budget looks for configs (default: the packaged configs, the "
                     "ones --config NAME finds)")
    est.add_argument("--json", help="also write the estimate(s) to this JSON file")

    lora = sub.add_parser("lora", help="LoRA utilities")
    lora_sub = lora.add_subparsers(dest="lora_command", required=True)
    merge = lora_sub.add_parser("merge", help="bake a LoRA into a copy of the model folder")
    merge.add_argument("--lora", required=True, help="the LoRA folder (from finetune) or .safetensors file")
    merge.add_argument("--output", required=True, help="the new model folder")
    merge.add_argument("--model", help="base model (default: the shipped model)")
    _add_allow_pickle(merge)
    merge.add_argument("--lora-scale", type=float, default=1.0, help="strength baked in (default: 1.0)")

    ren = sub.add_parser("render", help="write a folder of shapes-world practice clips (GIF + caption) that "
                         "`emuvideo finetune --data` reads")
    ren.add_argument("--out", required=True, help="the clip folder (must be empty or new)")
    ren.add_argument("--clips", type=int, required=True, help="how many clips")
    ren.add_argument("--seed", type=int, default=0, help="the folder is reproducible from it (default: 0)")
    ren.add_argument("--frames", type=int, default=16, help="frames per clip, at 8 fps (default: 16)")
    ren.add_argument("--size", type=int, default=64, help="frame side in pixels (default: 64)")
    ren.add_argument("--format", choices=("gif", "mp4"), default="gif", help="clip files (default: gif)")
    ren.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------------------------- checks
# Counts that must be >= 1 (argument dest -> flag), on whichever command has them.
_COUNTS = {"num_frames": "--num-frames", "num_inference_steps": "--steps", "image_num_inference_steps": "--image-steps",
           "fps": "--fps", "height": "--height", "width": "--width", "seeds": "--seeds", "batch_size": "--batch-size",
           "frames": "--frames", "size": "--size", "batch": "--batch", "clips": "--clips"}


def _check_values(args) -> None:
    """Counts >= 1, finite scales and a known --device: what needs no library, so that `main` checks it before
    the ~5-7 s import of torch and a mistyped value is refused at once."""
    for dest, flag in _COUNTS.items():
        value = getattr(args, dest, None)
        if value is not None and value < 1:
            raise CLIError(f"{flag} must be >= 1, got {value}")
    for name in ("guidance_image", "guidance_text"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    device = getattr(args, "device", None)
    if device is not None and not re.fullmatch(_DEVICE_PATTERN, device):
        raise CLIError(f"--device {device!r} is not a device; use {DEVICES}")


def _check_sampling(args) -> None:
    """The model folder and LoRA files (their checks import the library)."""
    if args.model is not None:
        from .pipelines.loading import looks_like_hub_id

        if not looks_like_hub_id(args.model) and not Path(args.model).expanduser().is_dir():
            raise CLIError(f"--model {args.model!r}: no such model folder")
    from .loaders import lora_specs

    lora_specs(args.lora, args.lora_scale)  # folder or .safetensors, scales one for all or one each
    lora_specs(getattr(args, "image_lora", None), getattr(args, "image_lora_scale", None), "--image-lora")


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        from .evaluation.prompt_sets import read_prompt_lines

        if not Path(args.prompt_file).is_file():
            raise CLIError(f"--prompt-file {args.prompt_file!r} does not exist")
        prompts += [text for _, text in read_prompt_lines(args.prompt_file)]  # blank and # comment lines skipped
    if not prompts:
        raise CLIError("give a prompt with --prompt TEXT or --prompt-file FILE")
    for p in prompts:
        if not p.strip():
            raise CLIError(f"--prompt must be non-empty text, got {p!r}")
    return prompts


def _output_paths(args, n: int) -> list[Path]:
    from .utils.video import check_video_path

    if args.output and args.output_dir:
        raise CLIError("give --output (one video) or --output-dir (several), not both")
    if args.output:
        if n != 1:
            raise CLIError(f"--output takes one video but {n} prompts were given; use --output-dir")
        suffix = Path(args.output).suffix.lower()
        if args.format is not None and suffix in (".mp4", ".gif") and suffix != f".{args.format}":
            raise CLIError(f"--format {args.format} but --output {args.output!r} ends in {suffix}; make them agree")
        return [check_video_path(args.output)]
    if args.output_dir:
        from .utils.files import check_writable_dir

        out = Path(args.output_dir)
        if out.exists() and not out.is_dir():
            raise CLIError(f"--output-dir {args.output_dir!r} is a file")
        check_writable_dir(out, "--output-dir")
        paths = [out / f"{i:03d}.{args.format or 'mp4'}" for i in range(n)]
        taken = [p.name for p in paths + [p.with_suffix(".png") for p in paths if args.save_image] if p.exists()]
        if taken and not args.overwrite:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise CLIError(f"--output-dir {args.output_dir!r} already holds {taken[0]}{more}; pass --overwrite to "
                           "replace them, or choose another folder")
        return paths
    raise CLIError("give --output FILE.mp4 or --output-dir DIR")


def _sampling_kwargs(args) -> dict:
    keys = ("negative_prompt", "num_inference_steps", "num_frames", "fps", "height", "width")
    kwargs = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.guidance_image is not None:
        kwargs["guidance_image"] = args.guidance_image
    if args.guidance_text is not None:
        kwargs["guidance_text"] = args.guidance_text
    return kwargs


def _interpolation_steps(args, keyword: str = "num_inference_steps") -> dict:
    """`--steps` for the interpolation stage when given; else nothing: the pipelines default to INTERPOLATION_STEPS."""
    return {} if args.num_inference_steps is None else {keyword: args.num_inference_steps}


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name!r}: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name!r}: MPS (Apple GPU) is not available on this machine")
    return name


def _load(args, device: str):
    import torch

    from .pipelines.loading import load_pipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = load_pipeline(args.model, device=device, dtype=dtype, variant=getattr(args, "variant", None),
                         allow_pickle=args.allow_pickle, sampler=getattr(args, "sampler", None), attention=args.attention)
    from .loaders import apply_loras, lora_specs

    # `eval` has its own single --lora/--lora-scale and no --image-lora; lora_specs takes either form.
    apply_loras(pipe, lora_specs(args.lora, args.lora_scale),
                lora_specs(getattr(args, "image_lora", None), getattr(args, "image_lora_scale", None), "--image-lora"))
    pipe.set_progress_bar_config(disable=args.quiet)
    return pipe


# ---------------------------------------------------------------------------------------------- commands
def _import_library(module: str = ".pipelines.loading") -> None:
    """Import `module` (default: the pipelines, hence torch + diffusers + transformers) the way a short-lived
    process should.

    The import creates ~900k container objects that live until exit. Python's cyclic collector would walk
    them again and again while they are created (~2 s of a ~7 s import on a 2-core CPU) and again in the
    collections at interpreter exit (~1.5 s), finding no garbage. So the import runs with the collector
    paused, and what it created is then frozen (`gc.freeze`: skipped by later collections, which still see
    every object made afterwards). Only the process that pays the import does this: an in-process caller
    that already has diffusers loaded (tests, a notebook) is left as it is.
    """
    if "diffusers" in sys.modules or (module == "torch" and "torch" in sys.modules):
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module(module, __package__)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def cmd_generate(args) -> None:
    import torch

    from .pipelines.common import numpy_to_uint8
    from .utils.video import save_image, write_video

    _check_sampling(args)
    prompts = _read_prompts(args)
    outputs = _output_paths(args, len(prompts))
    device = _device(args.device)
    pipe = _load(args, device)
    _interpolation(pipe, args.interpolate)  # a model without one, or an unknown factor: refused before sampling
    written = []
    try:
        for prompt, path in zip(prompts, outputs):
            generator = torch.Generator(device).manual_seed(args.seed)
            out = pipe(prompt, generator=generator, interpolate=args.interpolate,
                       image_num_inference_steps=args.image_num_inference_steps,
                       **_interpolation_steps(args, "interpolation_num_inference_steps"), **_sampling_kwargs(args))
            write_video(path, numpy_to_uint8(out.frames[0]), out.fps)
            written.append(path)
            print(path)
            if args.save_image:
                image_path = path.with_suffix(".png")
                save_image(image_path, numpy_to_uint8(out.images[0]))
                print(image_path)
    except KeyboardInterrupt:  # Ctrl+C: say what is on disk (each file is written whole or not at all)
        done = f"{len(written)} of {len(outputs)} videos written, the last {written[-1]}" if written else ""
        raise KeyboardInterrupt(f"interrupted; {done or 'nothing written'}") from None


def cmd_animate(args) -> None:
    import torch

    from .pipelines.common import numpy_to_uint8
    from .utils.video import check_video_path, load_image, write_video

    _check_sampling(args)
    if not args.prompt.strip():
        raise CLIError(f"--prompt must be non-empty text, got {args.prompt!r}")
    output = check_video_path(args.output)
    image = load_image(args.image)
    last_image = load_image(args.last_image) if args.last_image else None
    if args.verbose:  # what reading did here; the pipeline logs the resize and crop of each frame at INFO
        logging.getLogger("emuvideo").setLevel(logging.INFO)
        for flag, path in (("--image", args.image), ("--last-image", args.last_image)):
            if path is not None:
                logger.info("%s %s", flag, _describe_image(path))
    device = _device(args.device)
    full = _load(args, device)
    interpolation = _interpolation(full, args.interpolate)
    generator = torch.Generator(device).manual_seed(args.seed)
    out = full.image_to_video(image, args.prompt, generator=generator, last_image=last_image,
                              output_type="latent" if interpolation else "np", **_sampling_kwargs(args))
    if interpolation:  # the step `generate --interpolate` takes too
        out = full.interpolate_latents(out, args.interpolate, prompt=args.prompt, generator=generator,
                                       **_interpolation_steps(args))
    write_video(output, numpy_to_uint8(out.frames[0]), out.fps)
    print(output)


def _describe_image(path: str) -> str:
    """What `load_image` makes of the file at `path`: its size, mode and transparency, the EXIF turn."""
    import PIL.Image

    from .preprocessing import probe_image

    with PIL.Image.open(path) as image:
        mode, alpha = image.mode, image.has_transparency_data
    probe = probe_image(path)  # upright size and EXIF rotation
    steps = [f"turned {probe.rotation} degrees (EXIF orientation)"] if probe.rotation else []
    steps += ["transparency composited on white"] if alpha else []
    steps += [f"converted from {mode} to RGB"] if mode != "RGB" else []
    return f"{path}: {probe.width}x{probe.height} {mode}" + (f"; {', '.join(steps)}" if steps else ", used as read")


def _interpolation(pipe, factor: int | None):
    """The model's interpolation pipeline when `--interpolate` asks for one, checked before sampling."""
    if factor is None:
        return None
    if pipe.interpolation_unet is None:
        raise CLIError("--interpolate: this model has no interpolation model (interpolation_unet)")
    interpolation = pipe.interpolation
    if factor not in interpolation.config.factors:
        raise CLIError(f"--interpolate {factor}: the interpolation model knows factors {interpolation.config.factors}")
    return interpolation


def cmd_interpolate(args) -> None:
    import torch

    from .pipelines.common import numpy_to_uint8
    from .utils.video import check_video_path, read_frames, write_video

    source = Path(args.video)
    if not source.is_file():
        raise CLIError(f"VIDEO {args.video!r}: no such file")
    output = check_video_path(args.output)
    try:
        frames, fps = read_frames(source)
    except Exception as err:  # PyAV raises many kinds for what is not a readable video
        raise CLIError(f"VIDEO {args.video!r} is not a readable video ({type(err).__name__})") from None
    if len(frames) < 2:
        raise CLIError(f"VIDEO {args.video!r} has {len(frames)} frame(s); interpolation needs at least 2")
    device = _device(args.device)
    args.lora, args.lora_scale = None, None
    pipe = _interpolation(_load(args, device), args.factor)
    h, w = frames.shape[1:3]
    if (h, w) != (pipe.size, pipe.size):
        raise CLIError(f"VIDEO {args.video!r} is {w}x{h}; the interpolation model works on {pipe.size}x{pipe.size} clips")
    generator = torch.Generator(device).manual_seed(args.seed)
    out = pipe(frames, args.prompt, factor=args.factor, generator=generator, fps=round(fps) or 8,
               **_interpolation_steps(args))
    write_video(output, numpy_to_uint8(out.frames[0]), out.fps)
    print(output)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def cmd_info(args) -> None:
    import platform

    import diffusers
    import torch
    import transformers

    from .models.attention import available_attention, resolve_attention
    from .models.text_encoder import minilm_path
    from .pipelines.loading import default_model_dir

    default = default_model_dir()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = {
        "emuvideo": __import__("emuvideo").__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        **{name: _version(name) for name in ("peft", "accelerate", "bitsandbytes", "safetensors", "Pillow")},
        "PyAV": _version("av"),
        "device": f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu",
        "cpu threads": torch.get_num_threads(),
        # what --attention auto (the default) picks here, and what else --attention can pick
        "attention": f"{resolve_attention('auto', device)} (auto; available on {device}: "
                     f"{', '.join(available_attention(device))})",
        "xformers": _version("xformers"),
        "default model": f"{default}" + ("" if (default / "model_index.json").is_file() else " (missing: random init)"),
        "text encoder": f"{minilm_path()} (all-MiniLM-L6-v2, the default model's)",
    }
    for key, value in lines.items():
        print(f"{key + ':':16} {value}")


def _training_overrides(args) -> dict:
    """`--set key=value ...`, `--max-steps`, `--allow-pickle` (and finetune's `--output-dir`) as config overrides."""
    from .config import parse_overrides

    overrides = parse_overrides(args.set)
    if getattr(args, "output_dir", None) is not None:
        overrides["output_dir"] = args.output_dir
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if getattr(args, "allow_pickle", False):
        overrides["allow_pickle"] = True
    return overrides


def _check_new_run(output_dir: str, resume: str | None, new_folder: str) -> None:
    """Without --resume a run starts at step 0 and replaces the folder's final/: refused (before any model
    loads) where an earlier run left checkpoints, which --resume latest would continue."""
    from .training.checkpoints import checkpoints

    found = checkpoints(Path(output_dir)) if resume is None else []
    if found:
        raise CLIError(f"output folder {output_dir!r} holds an earlier run (up to {found[-1].name}); pass --resume "
                       f"latest to continue it, or choose a new folder ({new_folder})")


def cmd_train(args) -> None:
    from .config import load_config
    from .training.config import TrainConfig
    from .training.stages import run_stage

    overrides = _training_overrides(args)
    if args.model is not None:
        local = Path(args.model).expanduser()
        overrides["init"] = str(local.resolve()) if local.is_dir() else args.model
    if args.data is not None:
        if not Path(args.data).is_dir():
            raise CLIError(f"--data {args.data!r}: no such folder")
        overrides.setdefault("data", {}).update(source="folder", root=str(Path(args.data).resolve()))
    cfg = load_config(TrainConfig, args.config, overrides)
    if cfg.kind != "video" and args.model is not None:
        raise CLIError(f"--model is for video stages; {args.config} trains kind: {cfg.kind} (set init instead)")
    _check_new_run(cfg.output_dir, args.resume, "--set output_dir=DIR")
    result = run_stage(cfg, resume=args.resume)
    print(f"{result.output_dir} (step {result.step}, loss {result.last_loss:.4f})")


def cmd_finetune(args) -> None:
    from accelerate import PartialState

    from .training.finetune import finetune_config, run_finetune

    cfg = finetune_config(args.config, _training_overrides(args))
    if not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data!r}: no such folder")
    _check_new_run(cfg.output_dir, args.resume, "--output-dir DIR")
    logging.getLogger("emuvideo").setLevel(logging.INFO)  # the run's plan: clips kept, layers, attention, cache
    result = run_finetune(cfg, args.data, model=args.model, resume=args.resume)
    if PartialState().is_main_process:
        print(f"{result.output_dir / 'final'} (step {result.step}, loss {result.last_loss:.4f})")


def cmd_eval(args) -> None:
    from .evaluation.evaluate import DEFAULT_SEEDS, evaluate_pipeline, evaluate_videos
    from .evaluation.prompt_sets import DEFAULT_PROMPT_SET, load_prompt_set

    generating = {"--model": args.model, "--lora": args.lora, "--prompts": args.prompts, "--seeds": args.seeds,
                  "--steps": args.num_inference_steps, "--image-steps": args.image_num_inference_steps,
                  "--sampler": args.sampler}
    if args.videos is not None or args.captions is not None:
        if args.videos is None or args.captions is None:
            raise CLIError("--videos and --captions go together")
        given = [name for name, value in generating.items() if value is not None]
        if given:
            raise CLIError(f"--videos scores existing clips; {', '.join(given)} only apply when generating")
        report = evaluate_videos(args.videos, args.captions, progress=not args.quiet)
    else:
        _check_sampling(args)  # --steps, --model, --lora
        seeds = DEFAULT_SEEDS if args.seeds is None else args.seeds  # --seeds, --batch-size >= 1: `_check_values`
        prompt_set = args.prompts or DEFAULT_PROMPT_SET
        prompts = load_prompt_set(prompt_set)
        pipe = _load(args, _device(args.device))
        pipe.set_progress_bar_config(disable=True)  # one bar for the whole evaluation
        meta = {"model": args.model or "default", "lora": args.lora, "lora_scale": args.lora_scale if args.lora else None,
                "prompt_set": prompt_set, "sampler": args.sampler, "attention": args.attention}
        report = evaluate_pipeline(pipe, prompts, seeds=seeds, batch_size=args.batch_size,
                                   num_inference_steps=args.num_inference_steps, progress=not args.quiet, meta=meta,
                                   image_num_inference_steps=args.image_num_inference_steps)
    print(report.table())
    print(f"\n{len(report.rows)} videos judged in {report.meta['seconds']:.0f} s")
    if args.json:
        print(report.write_json(args.json))


def cmd_estimate_memory(args) -> None:
    import json

    from . import config
    from .config import config_name, load_config, parse_overrides
    from .training.config import TrainConfig
    from .training.finetune import finetune_config
    from .training.memory import (NEAREST_MISSES, budget_configs, describe, describe_budget, fitting_changes,
                                  measure_step, parse_bytes, preset_of_model)
    from .training.throughput import forward_flops, project

    if args.model is not None and not Path(args.model).is_dir():
        raise CLIError(f"--model {args.model!r}: no such model folder")
    overrides = parse_overrides(args.set)
    shape = dict(model=args.model, frames=args.frames, size=args.size, batch=args.batch)

    def load(path):
        return load_config(TrainConfig, path, overrides) if path else finetune_config(None, overrides)

    def estimate(path, cfg):
        name = "finetune defaults" if path is None else config_name(path)
        return measure_step(cfg, preset=args.preset or cfg.preset, name=name, **shape)

    if args.budget is None:
        cfg = load(args.config)
        one = estimate(args.config, cfg)
        flops = forward_flops(cfg, args.preset or cfg.preset, args.model, one.frames, one.size, one.batch)
        speed = project(cfg, flops, one.batch)
        print(describe(one) + "\n" + speed.describe())
        results = [dict(one.to_dict(), speed=speed.to_dict())]
    else:
        budget = parse_bytes(args.budget)
        root = Path(args.configs_dir) if args.configs_dir else config.CONFIGS_DIR
        asked = args.preset or (preset_of_model(args.model) if args.model else None)
        found, skipped = budget_configs(root, asked) if root.is_dir() else ([], {})
        if not found:
            written = f" written for preset {asked!r}" if asked else ""
            raise CLIError(f"--configs-dir {str(root)!r} holds no video training config{written}")
        from tqdm.auto import tqdm

        cfgs = {path: load(path) for path in found}
        done = [(estimate(p, c), c) for p, c in tqdm(cfgs.items(), desc="estimating configs", disable=args.json == "-")]
        done.sort(key=lambda row: row[0].card_bytes)
        rows = [(e, e.card_bytes <= budget) for e, _ in done]
        misses = [(e, c) for e, c in done if e.card_bytes > budget][:NEAREST_MISSES]
        changes = {e.name: fitting_changes(c, e, budget, args.preset or c.preset, args.model) for e, c in misses}
        names = {preset: [config_name(p) for p in paths] for preset, paths in skipped.items()}
        print(describe_budget(rows, args.budget, names, changes))
        results = [dict(e.to_dict(), fits=ok) for e, ok in rows]
    if args.json:
        from .utils.files import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=1))


def cmd_lora(args) -> None:
    from .training.lora import lora_specs, merge_lora

    if args.lora_command != "merge":
        raise CLIError(f"unknown lora command {args.lora_command!r}")
    lora_specs(args.lora, args.lora_scale)  # a folder or a .safetensors file, a finite scale
    print(merge_lora(args.model, args.lora, args.output, scale=args.lora_scale, allow_pickle=args.allow_pickle))


def cmd_render(args) -> None:
    from .data.shapes import write_clip_folder

    paths = write_clip_folder(args.out, args.clips, seed=args.seed, num_frames=args.frames, size=args.size,
                              suffix=f".{args.format}", progress=not args.quiet)
    print(f"wrote {len(paths)} clips and captions to {args.out}")


COMMANDS = {
    "generate": cmd_generate,
    "animate": cmd_animate,
    "interpolate": cmd_interpolate,
    "info": cmd_info,
    "train": cmd_train,
    "finetune": cmd_finetune,
    "lora": cmd_lora,
    "estimate-memory": cmd_estimate_memory,
    "eval": cmd_eval,
    "render": cmd_render,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Rendering clips and scoring existing ones need torch but no model; every other command loads or trains one.
    light = args.command == "render" or (args.command == "eval" and args.videos is not None)
    try:
        _check_values(args)  # before the import: a mistyped number is refused in a fraction of a second
        _import_library("torch" if light else ".pipelines.loading")
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"emuvideo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the machine refused (full disk, file-size limit, permissions): one line, exit 1
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"emuvideo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except RuntimeError as err:  # a file that cannot be decoded, a run that diverged (NaN loss): one line too;
        from .preprocessing import ClipDecodeError  # anything else is a bug
        from .training.trainer import TrainingDiverged

        if not isinstance(err, (ClipDecodeError, TrainingDiverged)):
            raise
        print(f"emuvideo {args.command}: error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, ClipDecodeError) else EXIT_FAILURE
    except KeyboardInterrupt as err:  # Ctrl+C; generate says what it wrote, a training run where to resume from
        print(f"emuvideo {args.command}: {str(err) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
