"""The training config: one dataclass tree, filled from `configs/**/*.yaml` (see `emuvideo.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    cache_dir: str | None = "cache"  # latent cache (None: encode every step)


@dataclass
class OptimConfig:
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # paper §4
    weight_decay: float = 0.0
    warmup_steps: int = 100  # constant lr after a linear warm-up (paper §4)
    max_grad_norm: float = 1.0


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: int = 16
    dropout: float = 0.0
    # which layers get adapters: "temporal" (temporal layers), "spatial" (the image model's layers), "all"
    layers: Literal["temporal", "spatial", "all"] = "temporal"
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"])
    quantize_base: bool = False  # QLoRA: frozen base linear layers in NF4 with double quantization


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
    kl_weight: float = 1e-6  # autoencoder
    decoder_only: bool = False  # autoencoder: fine-tune the decoder only; the latent space stays as it is
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    # stop after this much wall time (a checkpoint and final/ are written as at max_steps), like
    # Lightning's max_time: a run sized to a job's time limit. None: max_steps alone decides.
    max_minutes: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"
    checkpoint_every: int = 250
    keep_last: int = 2
    sample_every: int = 500
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
