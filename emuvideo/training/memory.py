"""`emuvideo estimate-memory`: will this training config fit my card? Answered before the run, without a GPU.

One real training step of the video U-Net — prepared by `prepare_unet` exactly as `train`/`finetune` prepare
it (freeze, NF4, LoRA, checkpointing, dtype), the image-conditioned loss, backward, gradient clipping, the
optimizer step — runs twice on PyTorch's ``meta`` device under `emuvideo.utils.memory.LiveMemoryCounter`,
with attention on the kernels CUDA would pick. The second step holds the optimizer state from its start,
as every step of a run does. The peak is what `torch.cuda.max_memory_allocated` would report for a run
training from the latent cache (the VAE and text encoder are not on the device during steps).

The whole card needs more than that peak; `card_bytes` adds two stated allowances, not measurements:
`CUDA_CONTEXT_BYTES` (the CUDA context, cuBLAS/cuDNN handles and workspaces that torch holds outside
`max_memory_allocated`) and `ALLOCATOR_SLACK` (reserved but unallocated blocks: the caching allocator's
fragmentation, `memory_reserved` above `max_memory_allocated`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..utils.memory import (
    GRADIENTS,
    HOST,
    OPTIMIZER,
    PAGED,
    TRAINABLE,
    WEIGHTS,
    WORKSPACE,
    LiveMemoryCounter,
    cuda_workspace,
    device_kernels,
    page_optimizer_state,
)
from .config import TrainConfig

logger = logging.getLogger(__name__)

GiB = 2**30
CUDA_CONTEXT_BYTES = 600 * 2**20  # allowance: CUDA context + library handles/workspaces outside the allocator's count
ALLOCATOR_SLACK = 0.10  # allowance: reserved-but-free blocks, as a fraction of the peak
TEXT_TOKENS = 77  # CLIP / OpenCLIP pad every prompt to 77 tokens (the shipped MiniLM to 32)


@dataclass
class MemoryEstimate:
    """The peak of one training step and what is in it (bytes)."""

    name: str
    model: str
    frames: int
    size: int
    batch: int
    peak_bytes: int
    breakdown: dict = field(default_factory=dict)  # at the peak, per label of `emuvideo.utils.memory`
    paged_bytes: int = 0  # bitsandbytes' paged optimizer state: unified memory, not in the peak
    trainable_params: int = 0
    total_params: int = 0
    measured_bytes: int | None = None  # a real CUDA step's `torch.cuda.max_memory_allocated` (device="cuda")
    seconds: float = 0.0

    @property
    def card_bytes(self) -> int:
        """The whole card's need: the peak plus the stated allowances (CUDA context, allocator slack)."""
        return int(self.peak_bytes * (1 + ALLOCATOR_SLACK)) + CUDA_CONTEXT_BYTES

    def to_dict(self) -> dict:
        return {**self.__dict__, "card_bytes": self.card_bytes}


# ---------------------------------------------------------------------------------------------- the model
def _unet_on(device: str, preset: str | None, model: str | None):
    """(video U-Net, fresh, text tokens) from a preset or a model folder, built on `device` (meta: no memory).

    A folder's U-Net is built from its config alone: an emuvideo folder's `unet/config.json` (an
    `EmuVideoUNet`), or a Stable-Diffusion-style `unet/config.json` (a `UNet2DConditionModel`, inflated).
    """
    from ..models.presets import build_video_unet, get_preset
    from ..models.video_unet import EmuVideoUNet

    if model is None:
        with torch.device(device):
            unet = build_video_unet(preset)
        return unet, True, TEXT_TOKENS if preset != "default" else 32
    config_path = Path(model) / "unet" / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--model {model!r}: no unet/config.json (a local model folder is needed; a Hub id is not read)")
    config = json.loads(config_path.read_text())
    kind = config.get("_class_name")
    tokenizer = Path(model) / "tokenizer" / "tokenizer_config.json"
    tokens = json.loads(tokenizer.read_text()).get("model_max_length", TEXT_TOKENS) if tokenizer.is_file() else 32
    tokens = tokens if isinstance(tokens, int) and tokens < 10**6 else TEXT_TOKENS
    with torch.device(device):
        if kind == "EmuVideoUNet":
            return EmuVideoUNet.from_config(config), False, tokens
        if kind == "UNet2DConditionModel":
            head_dim = get_preset("sd21").temporal_head_dim
            return EmuVideoUNet(unet_config=config, temporal_head_dim=head_dim), True, tokens
    raise ValueError(f"--model {model!r}: unet/config.json holds a {kind}, not a U-Net emuvideo trains")


def model_size(unet) -> int:
    """Frame side in pixels the U-Net was built for (its latent sample size times the VAE's 8x)."""
    return int(unet.unet.config.sample_size) * 8


def _check_estimable(cfg: TrainConfig) -> None:
    if cfg.mixed_precision != "no":
        raise ValueError(f"mixed_precision: {cfg.mixed_precision} cannot be estimated: autocast does nothing on the meta "
                         "device, so its casts would be guessed. Estimate weight_dtype: bf16 (pure bf16) instead")
    if cfg.attention != "sdpa":
        raise ValueError(f"attention: {cfg.attention} cannot be estimated (its kernels' memory is not modelled); "
                         "estimate attention: sdpa (torch's flash / memory-efficient kernels)")
    if cfg.gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {cfg.gradient_accumulation_steps}")


# ---------------------------------------------------------------------------------------------- the step
def measure_step(
    cfg: TrainConfig,
    preset: str | None = "sd21",
    model: str | None = None,
    frames: int | None = None,
    size: int | None = None,
    batch: int | None = None,
    device: str = "meta",
    target: str = "cuda",
    name: str = "",
) -> MemoryEstimate:
    """Count the memory of two training steps of `cfg` on `device`: "meta" (no memory, no compute), "cpu"
    (real tensors, to check the method: a meta and a CPU run of the same step must count the same bytes) or
    "cuda" (a real GPU step: `measured_bytes` is then `torch.cuda.max_memory_allocated` over the two steps,
    the number the meta estimate predicts; scripts/check_memory_estimate.py compares them).

    target: the device whose kernels are modelled: "cuda" (the estimate: CUDA's attention kernels and the
    temporaries inside its kernels) or "cpu" (the CPU's attention kernel; the only choice on a CPU run).

    frames, size, batch: default to the config's `data.num_frames`, `data.resolution` (else the model's
    size) and `batch_size`. Gradient accumulation does not change the peak (micro-batches run one by one).
    """
    from ..schedules import make_train_scheduler
    from .stages import video_training_loss
    from .trainer import make_optimizer
    from .video import WEIGHT_DTYPES, prepare_unet

    _check_estimable(cfg)
    started = time.perf_counter()
    unet, fresh, tokens = _unet_on(device, preset, model)
    frames = frames or cfg.data.num_frames
    size = size or cfg.data.resolution or model_size(unet)
    batch = batch or cfg.batch_size
    for label, value in (("frames", frames), ("size", size), ("batch", batch)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8 (the VAE downsamples 8x), got {size}")
    dtype = WEIGHT_DTYPES[cfg.weight_dtype]
    torch_device = torch.device(device)
    torch.manual_seed(cfg.seed)
    base_params = unet.num_parameters()  # before NF4 packs two weights into a byte
    prepare_unet(unet, cfg, torch_device, base_model=model or preset, fresh=fresh, compute_dtype=dtype)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.optim, foreach=True)
    scheduler = make_train_scheduler(cfg.objective)
    channels = unet.latent_channels
    text_dim = unet.unet.config.cross_attention_dim
    latent = size // 8

    if target not in ("cuda", "cpu") or device not in ("meta", target):
        raise ValueError(f"target must be 'cuda' (on meta or cuda) or 'cpu' (on meta or cpu), got {target!r} on {device}")
    counter = LiveMemoryCounter(device, workspace=cuda_workspace if target == "cuda" else None)
    if device == "meta" and getattr(optimizer, "is_paged", False):
        if target == "cuda":
            page_optimizer_state(optimizer, counter)
        else:  # what bitsandbytes does on a CPU: ordinary buffers
            optimizer.is_paged = False
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with device_kernels(target), counter:
        counter.track_module(unet)
        counter.track_gradients(params)
        latents = torch.randn(batch, channels, frames, latent, latent, device=torch_device, dtype=dtype)
        text = torch.randn(batch, tokens, text_dim, device=torch_device, dtype=dtype)
        for _ in range(2):  # the second step holds the optimizer state through forward and backward
            loss = video_training_loss(unet, scheduler, latents, text, cfg)
            loss.backward()
            if cfg.optim.max_grad_norm:  # in place; its per-tensor norms are scalars (torch refuses foreach on meta)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            with counter.untracked_as(HOST):  # AdamW's `step` counters live on the host in a CUDA run too
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter.track_optimizer(optimizer)
            del loss
    breakdown = counter.peak_breakdown
    measured = torch.cuda.max_memory_allocated() if cuda else None
    return MemoryEstimate(
        name=name, model=model or preset, frames=frames, size=size, batch=batch, peak_bytes=counter.peak,
        breakdown={k: v for k, v in breakdown.items() if v and k not in (PAGED, HOST)},
        paged_bytes=breakdown.get(PAGED, 0), trainable_params=sum(p.numel() for p in params),
        measured_bytes=measured,
        total_params=base_params + sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n), seconds=round(time.perf_counter() - started, 2),
    )


# ---------------------------------------------------------------------------------------------- reports
def parse_bytes(text: str) -> int:
    """"24GB", "24GiB", "24" (GiB), "8000MB" -> bytes. GB is read as GiB, as cards are labelled."""
    units = {"": GiB, "gb": GiB, "gib": GiB, "g": GiB, "mb": 2**20, "mib": 2**20, "m": 2**20, "tb": 2**40}
    raw = text.strip().lower()
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):].strip()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0:
        raise ValueError(f"--budget {text!r} is not a memory size such as 24GB or 16000MB")
    return int(value * units[unit])


ROWS = ((WEIGHTS, "frozen weights"), (TRAINABLE, "trainable parameters"), (GRADIENTS, "gradients"),
        (OPTIMIZER, "optimizer state"), ("activations", "activations + temporaries"), (WORKSPACE, "kernel workspace"))


def describe(estimate: MemoryEstimate) -> str:
    """The breakdown a person reads: what is in the peak, and the whole card's need."""
    gib = lambda b: f"{b / GiB:6.2f} GiB"  # noqa: E731
    lines = [
        f"{estimate.name or 'config'}: {estimate.model}, {estimate.frames} frames at {estimate.size}x{estimate.size}, "
        f"batch {estimate.batch}; training {estimate.trainable_params:,} of {estimate.total_params:,} parameters",
    ]
    known = {k for k, _ in ROWS}
    for key, label in ROWS:
        if estimate.breakdown.get(key):
            lines.append(f"  {label:28} {gib(estimate.breakdown[key])}")
    for key, value in estimate.breakdown.items():
        if key not in known:
            lines.append(f"  {key:28} {gib(value)}")
    lines.append(f"  {'peak (max_memory_allocated)':28} {gib(estimate.peak_bytes)}")
    if estimate.paged_bytes:
        lines.append(f"  {'paged optimizer state':28} {gib(estimate.paged_bytes)}  (unified memory, outside the peak)")
    lines.append(f"  {'whole card':28} {gib(estimate.card_bytes)}  (+{ALLOCATOR_SLACK:.0%} allocator slack, "
                 f"+{CUDA_CONTEXT_BYTES / GiB:.2f} GiB CUDA context: stated allowances)")
    return "\n".join(lines)


def budget_configs(root: Path) -> list[Path]:
    """The YAMLs of `configs/` that train a video U-Net (fine-tunes and video stages), sorted by path."""
    import yaml

    found = []
    for path in sorted(root.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and "compute_environment" not in data and data.get("kind", "video") == "video":
            found.append(path)
    return found
