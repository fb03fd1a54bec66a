"""The training config: one dataclass tree, filled from `configs/**/*.yaml` (see `emuvideo.config`).

Each section checks its own values when it is built (`__post_init__`), so a YAML file, a `--set` override and
a `TrainConfig(...)` in Python are refused the same way, with the key and the value, before anything loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..data.cache import default_cache_dir


def _at_least(key: str, value, low) -> None:
    if value is not None and not value >= low:  # `not >=`: NaN is refused too
        raise ValueError(f"{key} must be >= {low}, got {value}")


def _positive(key: str, value) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{key} must be a finite number > 0, got {value}")


def _probability(key: str, value) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{key} must be in [0, 1], got {value}")


@dataclass
class DataConfig:
    source: Literal["shapes", "folder"] = "shapes"
    root: str | None = None  # folder of clips (source: folder)
    split: Literal["video", "image"] = "video"  # shapes: which combination split (see data/shapes.py)
    num_frames: int = 16
    fps: int = 8
    # frame side in pixels. None: the model's own size for video runs, the shapes world's 64 px for the
    # autoencoder and image stages (paper §4: stage 1 trains below the target resolution)
    resolution: int | None = None
    num_clips: int = 2048  # shapes: clips rendered (and cached) for the stage
    sampling: Literal["fps", "even", "head"] = "fps"  # folder: how frames are taken from a clip
    crop: Literal["center", "random"] = "center"
    high_motion_fraction: float | None = None  # keep the top fraction of clips by motion score (paper §4 HQ FT)
    # shapes: how a clip's caption is phrased, drawn anew every step (data/shapes.py::random_caption): "rich" (many
    # synonyms, word orders and optional words, as people write) or "simple" (the first model's six templates)
    captions: Literal["simple", "rich"] = "rich"
    # hold the whole training set in memory: rendered or read once (in worker processes), then a batch costs no
    # disk read or render. For a GPU, where a small model otherwise waits on its data loader.
    in_memory: bool = False
    # latent cache: clips encoded once, keyed by everything that made them, so `train` and `finetune` on the same
    # clips share it. Default: the user cache dir, $EMUVIDEO_CACHE/latents, else $XDG_CACHE_HOME/emuvideo/latents,
    # else ~/.cache/emuvideo/latents (as Hugging Face caches under ~/.cache/huggingface). None: encode every step.
    cache_dir: str | None = field(default_factory=lambda: str(default_cache_dir() / "latents"))

    def __post_init__(self) -> None:
        for key in ("num_frames", "fps", "resolution", "num_clips"):
            _at_least(f"data.{key}", getattr(self, key), 1)


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # paper §4
    weight_decay: float = 0.0
    warmup_steps: int = 100  # constant lr after a linear warm-up (paper §4)
    max_grad_norm: float = 1.0  # 0: no clipping
    fused: bool = False  # AdamW's fused kernel (torch.optim.AdamW(fused=True)): one kernel for every parameter

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        if self.fused and self.optimizer != "adamw":
            raise ValueError(f"optim.fused: true is torch's AdamW kernel; optim.optimizer is {self.optimizer!r} "
                             "(bitsandbytes' 8-bit AdamW is fused already): set optim.fused: false")
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _at_least("optim.max_grad_norm", self.max_grad_norm, 0)
        for beta in self.betas:
            if not 0 <= beta < 1:
                raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: int = 16
    dropout: float = 0.0
    # which layers get adapters: "temporal" (temporal layers), "spatial" (the image model's layers), "all"
    layers: Literal["temporal", "spatial", "all"] = "temporal"
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"])
    quantize_base: bool = False  # QLoRA: frozen base linear layers in NF4 with double quantization

    def __post_init__(self) -> None:
        _at_least("lora.rank", self.rank, 1)
        _positive("lora.alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class KnownFramesConfig:
    # video: which frames of a training clip the model is shown (models/conditioning.py), each mode with its
    # probability: the first only (image-to-video, paper §3.2), the first and the last (first -> last videos),
    # or the first plus 1 to max_keyframes others at random indices (keyframes)
    first: float = 1.0
    first_last: float = 0.0
    keyframes: float = 0.0
    max_keyframes: int = 3


@dataclass
class InterpolationConfig:
    # train the frame-interpolation model (paper §3.2): the video U-Net, initialised from `init`'s video model,
    # shown every `factor`-th frame of a `window`-frame stretch of a clip rendered at data.fps; saved as the
    # model folder's interpolation_unet beside the video model it started from
    enabled: bool = False
    factors: list[int] = field(default_factory=lambda: [2, 4])  # frame-rate multipliers, one drawn per sample
    window: int = 9  # output frames the model makes at once ((window - 1) divisible by every factor)
    key_fps: int = 8  # frame rate of the key frames (the video model's); data.fps must be key_fps * factor * k
    noise_aug_max: int = 250  # conditioning frames noised to t ~ U[0, noise_aug_max] in training (paper)
    noise_aug_t: int = 100  # ... and to this t at inference (paper), saved with the model


@dataclass
class AutoencoderConfig:
    # kind: autoencoder (training/stages/autoencoder.py)
    kl_weight: float = 1e-6  # weight of the KL term beside pixel MSE + 0.1 L1
    decoder_only: bool = False  # fine-tune the decoder only (encoder frozen): the latent space stays as it is

    def __post_init__(self) -> None:
        _at_least("autoencoder.kl_weight", self.kl_weight, 0)


@dataclass
class TrainConfig:
    # what is trained: the autoencoder, the text-to-image U-Net, or the video U-Net
    kind: Literal["autoencoder", "image", "video"] = "video"
    output_dir: str = "runs/stage"
    # what training starts from: a previous stage's final/ folder, or (video) a model: an emuvideo or
    # Stable-Diffusion-style folder or Hub id, inflated when it is an image model (None: a fresh `preset`)
    init: str | None = None
    preset: str = "default"
    objective: Literal["epsilon", "v_prediction"] = "v_prediction"
    freeze_spatial: bool = True  # video: train temporal layers only (paper §3.1)
    mode: Literal["full", "lora"] = "full"  # video: train weights in full, or LoRA adapters (see `lora`)
    # mode full, spatial layers frozen: the frozen spatial linear layers in 4-bit NF4 with double quantization,
    # while the temporal layers and conv_in train in full precision (lora.quantize_base is QLoRA's switch)
    spatial_quantization: Literal["none", "nf4"] = "none"
    # mode full, spatial layers frozen: LoRA adapters (lora.rank, alpha, target_modules) on the spatial layers too
    spatial_lora: bool = False
    # dtype of the video U-Net's weights while training, trainable ones included ("bf16": pure bf16 training,
    # optimizer state in bf16 too; LoRA adapters stay fp32). Other than mixed_precision, which autocasts fp32 weights.
    weight_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    image_dropout: float = 0.1  # p(drop the image condition) — enables the X(∅) guidance term
    text_dropout: float = 0.1  # p(drop the text) — enables the X(I) guidance term
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    # stop after this much wall time (a checkpoint and final/ are written as at max_steps), like
    # Lightning's max_time: a run sized to a job's time limit. None: max_steps alone decides.
    max_minutes: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    # attention kernels (emuvideo.models.attention): auto = xformers on CUDA when installed, else sdpa;
    # math = plain matmul + softmax (the reference); xformers where it cannot run is an error
    attention: Literal["auto", "sdpa", "xformers", "math"] = "sdpa"
    # speed, not what is computed (issue 18; scripts/bench_train_speed.py measures each against eager):
    # channels-last memory format for the 2D convolutions (tensor cores read NHWC without a transpose);
    # regional torch.compile of the U-Net's repeated blocks (diffusers' compile_repeated_blocks)
    channels_last: bool = False
    compile: Literal["none", "regional"] = "none"
    checkpoint_every: int = 250  # optimizer steps between checkpoints (>= 1; the last step is always saved)
    keep_last: int = 2
    sample_every: int = 500  # optimizer steps between samples; 0: never
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a red circle moving right slowly", "a blue triangle moving up quickly"]
    )
    sample_prompt_file: str | None = None  # finetune: a text file, one prompt a line (replaces sample_prompts)
    sample_image: str | None = None  # finetune: samples animate this first frame (None: text -> image -> video)
    log_every: int = 10
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    known_frames: KnownFramesConfig = field(default_factory=KnownFramesConfig)
    interpolation: InterpolationConfig = field(default_factory=InterpolationConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    # load model folders whose weights are pickle files (.bin, .pt, .ckpt), with torch.load(weights_only=True);
    # off: such a folder is refused, as pickle can run code when it is loaded (`emuvideo train --allow-pickle`)
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        for key in ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpoint_every", "keep_last",
                    "log_every"):
            _at_least(key, getattr(self, key), 1)
        _at_least("sample_every", self.sample_every, 0)
        _at_least("max_minutes", self.max_minutes, 0)
        for key in ("image_dropout", "text_dropout"):
            _probability(key, getattr(self, key))
        if self.kind != "video":  # the video stage alone applies them (stages/video.py: apply_speed_settings)
            for key, off in (("channels_last", False), ("compile", "none")):
                value = getattr(self, key)
                if value != off:
                    raise ValueError(f"{key}: {str(value).lower()} is for kind: video; this config trains kind: "
                                     f"{self.kind} (remove {key})")
