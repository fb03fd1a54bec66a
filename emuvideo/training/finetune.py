"""`emuvideo finetune`: adapt the video model to your own clips with LoRA, QLoRA or a full fine-tune.

    emuvideo finetune --data my_clips/ [--config configs/finetune/qlora.yaml] [--model M] [--resume latest]

1. The base pipeline is loaded (`load_pipeline(model)`) and its video U-Net prepared for `mode`:
   ``lora`` — peft adapters on the temporal layers (or all, `lora.layers`), the base frozen; with
   `lora.quantize_base` the frozen base is NF4 (QLoRA) — or ``full`` — the temporal layers, or every
   layer with `freeze_spatial: false`.
2. The clips are read at the model's size (`ClipDataset`: each skipped clip is named with its reason)
   and, with `data.cache_dir`, encoded once into a latent cache keyed by the model's encoders and the
   dataset's files, so a changed model or clip never reads stale latents.
3. The shared `Trainer` runs the image-conditioned video loss of the stages (`video_training_loss`,
   paper §3.2): resumable checkpoints, a NaN stop, samples drawn by the pipeline `generate`/`animate` use.
   Checkpoints hold only the trainable parameters; the frozen base is re-read from the model.
4. `RUN/final/` gets the LoRA (a peft folder, for `--lora`) or, in full mode, a complete model folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from safetensors.torch import load_file

from ..config import load_config, parse_overrides
from ..data.cache import LatentCache, module_digest
from ..data.clips import ClipDataset
from ..pipelines.common import encode_frames, encode_prompt
from ..schedules import make_train_scheduler
from .config import TrainConfig
from .lora import add_lora, save_lora, save_model_folder
from .quantize import quantize_linear_layers
from .stages import drop_captions, video_training_loss
from .trainer import Trainer, TrainResult

logger = logging.getLogger(__name__)

# What makes a TrainConfig a fine-tune when no --config is given; configs/finetune/lora.yaml holds the
# same (tests/test_finetune.py checks that they agree). Every other value is TrainConfig's default.
FINETUNE_DEFAULTS = {"mode": "lora", "output_dir": "runs/finetune"}


def finetune_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The fine-tune config: a YAML of configs/finetune/ (or, without one, `FINETUNE_DEFAULTS`) + overrides."""
    if path is None:
        return load_config(TrainConfig, None, {**FINETUNE_DEFAULTS, **(overrides or {})})
    return load_config(TrainConfig, path, overrides)


# ---------------------------------------------------------------------------------------------- model
def prepare_unet(unet, cfg: TrainConfig, device: torch.device, base_model: str | None = None) -> None:
    """Make the video U-Net trainable as `cfg` says, in place: freeze, quantize, add LoRA, checkpointing,
    attention backend. Shared with scripts/bench_finetune.py, so the benchmark measures what runs."""
    if cfg.lora.quantize_base and cfg.mode != "lora":
        raise ValueError("lora.quantize_base: true needs mode: lora (a 4-bit base cannot be trained in full)")
    if cfg.mode == "lora":
        unet.requires_grad_(False)
        if cfg.lora.quantize_base:
            count = quantize_linear_layers(unet, device)
            logger.info("QLoRA: %d linear layers of the frozen base in NF4 (double quantization)", count)
        torch.manual_seed(cfg.seed)  # LoRA's A matrices start random: the same ones every run
        targets = add_lora(unet, cfg.lora, base_model=base_model)
        logger.info("LoRA rank %d on %d %s layers", cfg.lora.rank, len(targets), cfg.lora.layers)
    else:
        unet.freeze_spatial(cfg.freeze_spatial)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    set_attention(unet, cfg.attention, device)
    trainable, total = unet.num_parameters(only_trainable=True), unet.num_parameters()
    logger.info("training %s of %s U-Net parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def set_attention(unet, backend: str, device: torch.device) -> str:
    """xformers when asked for, installed and on CUDA; otherwise torch SDPA. Returns the one in use."""
    if backend == "xformers":
        if torch.device(device).type != "cuda":
            reason = "it needs a CUDA device"
        elif importlib.util.find_spec("xformers") is None:
            reason = "it is not installed (pip install xformers)"
        else:
            unet.enable_xformers_memory_efficient_attention()
            logger.info("attention: xformers")
            return "xformers"
        logger.warning("attention: torch SDPA (attention: xformers was asked for, but %s)", reason)
        return "sdpa"
    logger.info("attention: torch SDPA")
    return "sdpa"


# ---------------------------------------------------------------------------------------------- data
def encoder_fields(pipe) -> dict:
    """The latent cache's model half of the key: the VAE, the text encoder and the tokenizer that made it."""
    tokenizer = pipe.tokenizer
    vocab = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()[:20]
    return {
        "vae": module_digest(pipe.vae),
        "text_encoder": module_digest(pipe.text_encoder),
        "tokenizer": f"{type(tokenizer).__name__}:{tokenizer.model_max_length}:{vocab}",
        "dtype": str(pipe.vae.dtype),
        "latents": "posterior mode",  # encode_frames(sample=False)
    }


@contextlib.contextmanager
def on_device(device, *modules):
    """Move frozen modules to `device` for a while (cache building, sampling), then back where they were:
    the models the training step does not need stay off the GPU."""
    homes = [next(m.parameters()).device for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            m.to(home)


def _training_data(cfg: TrainConfig, pipe, device, state: PartialState):
    """The clips at the model's size, as a latent cache when `data.cache_dir` is set (and crops are fixed)."""
    d = cfg.data
    size = pipe.image_to_video.default_size
    logger.info("clips: %dx%d (the model's size), %d frames, sampling %s", size, size, d.num_frames, d.sampling)
    clips = ClipDataset(
        d.root, size, size, d.num_frames, fps=d.fps if d.sampling == "fps" else None, sampling=d.sampling,
        crop=d.crop, seed=cfg.seed,
    )
    if not d.cache_dir:
        return clips
    if d.crop == "random":
        logger.warning("data.crop: random is not cached (a cached latent is one crop): encoding clips every step")
        return clips
    with state.main_process_first():  # the first process encodes, the others find the items on disk
        cache = LatentCache(d.cache_dir, {**clips.cache_fields(), **encoder_fields(pipe)})
        if not cache.is_complete():
            with on_device(device, pipe.vae, pipe.text_encoder):
                cache.build(
                    clips,
                    encode_video=lambda x: encode_frames(pipe.vae, x),
                    encode_text=lambda captions: encode_prompt(pipe.tokenizer, pipe.text_encoder, captions, device),
                    progress=state.is_main_process,
                )
    logger.info("latent cache: %s", cache.dir)
    return cache


def _sample_prompts(cfg: TrainConfig) -> list[str]:
    if cfg.sample_prompt_file is None:
        return list(cfg.sample_prompts)
    path = Path(cfg.sample_prompt_file)
    if not path.is_file():
        raise ValueError(f"sample_prompt_file {str(path)!r} does not exist")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"sample_prompt_file {str(path)!r} holds no prompt")
    return prompts


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_trainable_only(accelerator, cfg: TrainConfig, device) -> None:
    """Checkpoints keep the trainable parameters only (LoRA: megabytes, not the whole U-Net); the frozen
    base is re-read from the model on resume — a 4-bit base could not round-trip a state dict anyway —
    so a resume checks that it continues the same run (same model, mode and LoRA settings)."""

    def save_hook(models, weights, output_dir):
        if len(weights) != len(models):  # FSDP / DeepSpeed save their own shards: nothing to filter
            return
        for i, model in enumerate(models):
            keep = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models, input_dir):
        saved = load_config(TrainConfig, Path(input_dir) / "config.yaml")
        for key in ("init", "mode", "freeze_spatial", "lora"):
            if getattr(saved, key) != getattr(cfg, key):
                raise ValueError(f"checkpoint {input_dir} was trained with {key}={getattr(saved, key)}, "
                                 f"this run has {key}={getattr(cfg, key)}; resume continues the same run")
        for i, model in enumerate(models):
            path = Path(input_dir) / (f"model_{i}.safetensors" if i else "model.safetensors")
            state = load_file(str(path), device=str(device))
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(state) != trainable:
                odd = sorted(set(state) ^ trainable)[0]
                raise ValueError(f"checkpoint {input_dir} does not fit this run's trainable parameters ({odd!r})")
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded: accelerate must not load them again (strictly, with the base missing)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------------------------------------- run
def run_finetune(
    cfg: TrainConfig, data_root: str | Path, model: str | None = None, resume: str | None = None
) -> TrainResult:
    """Fine-tune the video U-Net of `model` (None: the shipped default) on the clips in `data_root`.

    Writes `cfg.output_dir`: config.yaml, checkpoints/, losses.csv, loss.png, samples/, logs/ and final/.
    """
    from ..pipelines.loading import default_model_dir, load_pipeline
    from ..pipelines.text_to_video import EmuVideoPipeline
    from ..utils.video import load_image

    # The run's config records where the model and clips came from (saved beside every checkpoint).
    local = model is not None and Path(model).is_dir()
    model_id = str(Path(model).resolve()) if local else model  # None, a folder or a Hub id
    cfg = replace(cfg, init=model_id, data=replace(cfg.data, source="folder", root=str(Path(data_root).resolve())))
    prompts = _sample_prompts(cfg)
    image = load_image(cfg.sample_image) if cfg.sample_image else None
    # This process's device and rank, before the Trainer's Accelerator exists; ACCELERATE_USE_CPU is read as
    # the Accelerator reads it, so that `accelerate launch` on CPUs gets the same (multi-process) state.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    device = state.device

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    objective = pipe.scheduler.config.prediction_type
    if objective != cfg.objective:
        raise ValueError(f"objective is {cfg.objective!r} but the model samples with {objective!r}; "
                         f"fine-tune with the model's own: --set objective={objective}")
    base_dir = Path(model_id) if local else None  # what a full fine-tune's final/ is a copy of
    if model is None and (default_model_dir() / "model_index.json").is_file():
        base_dir = default_model_dir()
    prepare_unet(pipe.unet, cfg, device, base_model=model_id or "emuvideo-default")
    for module in (pipe.vae, pipe.text_encoder, pipe.image_unet):
        module.requires_grad_(False).eval()
    dataset = _training_data(cfg, pipe, device, state)
    cached = isinstance(dataset, LatentCache)
    if not cached:  # encoded every step: the encoders live on the device
        pipe.vae.to(device)
        pipe.text_encoder.to(device)
    with on_device(device, pipe.text_encoder), torch.no_grad():
        null_text = encode_prompt(pipe.tokenizer, pipe.text_encoder, [""], device)  # (1, L, D): a dropped caption
    train_scheduler = make_train_scheduler(cfg.objective)

    def loss_fn(unet, batch):
        captions = drop_captions(list(batch["caption"]), cfg.text_dropout)  # "" where dropped
        if cached:
            latents = batch["latents"]  # (B, C, T, h, w)
            kept = torch.tensor([c != "" for c in captions], device=latents.device).view(-1, 1, 1)
            text = torch.where(kept, batch["text_embeds"], null_text.to(latents.device))  # (B, L, D)
        else:
            with torch.no_grad():
                latents = encode_frames(pipe.vae, batch["pixel_values"])
                text = encode_prompt(pipe.tokenizer, pipe.text_encoder, captions, latents.device)
        return video_training_loss(unet, train_scheduler, latents, text, cfg)

    def sampler(unet) -> EmuVideoPipeline:
        sampler = EmuVideoPipeline(**{**pipe.components, "unet": unet}, default_fps=cfg.data.fps,
                                   default_num_frames=cfg.data.num_frames)
        sampler.set_progress_bar_config(disable=True)
        return sampler

    def sample_fn(unet, step):
        # The same pipeline and defaults as `emuvideo generate` (or `animate` with sample_image), one prompt
        # at a time, with the frozen models visiting the device only for the duration.
        videos, pipeline = {}, sampler(unet)
        with on_device(device, pipe.vae, pipe.text_encoder, pipe.image_unet):
            for prompt in prompts:
                generator = torch.Generator(device).manual_seed(cfg.seed)
                if image is None:
                    out = pipeline(prompt, generator=generator)
                else:
                    out = pipeline.image_to_video(image, prompt, generator=generator)
                videos[prompt] = out.frames[0]
        return videos

    def save_fn(unet, folder):
        if cfg.mode == "lora":
            save_lora(unet, folder)
        else:
            save_model_folder(sampler(unet), folder, base_dir=base_dir)

    trainer = Trainer(cfg, pipe.unet, loss_fn, dataset, sample_fn=sample_fn, save_fn=save_fn)
    checkpoint_trainable_only(trainer.accelerator, cfg, device)
    return trainer.train(resume=resume)


def run_finetune_from_cli(args) -> None:
    overrides = parse_overrides(args.set)
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    cfg = finetune_config(args.config, overrides)
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r}: no such folder")
    logging.getLogger("emuvideo").setLevel(logging.INFO)  # the run's plan: clips kept, layers, attention, cache
    result = run_finetune(cfg, args.data, model=args.model, resume=args.resume)
    if PartialState().is_main_process:
        print(f"{result.output_dir / 'final'} (step {result.step}, loss {result.last_loss:.4f})")
