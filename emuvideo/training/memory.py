"""`emuvideo estimate-memory`: will this training config fit my card? Answered before the run, without a GPU.

One real training step of the video U-Net — prepared by `prepare_unet` exactly as `train`/`finetune` prepare
it (freeze, NF4, LoRA, checkpointing, dtype), the image-conditioned loss, backward, gradient clipping, the
optimizer step — runs twice on PyTorch's ``meta`` device under `emuvideo.utils.memory.LiveMemoryCounter`,
with attention on the kernels CUDA would pick. The second step holds the optimizer state from its start,
as every step of a run does. The peak is what `torch.cuda.max_memory_allocated` would report for a run
training from the latent cache (the VAE and text encoder are not on the device during steps).

The whole card needs more than that peak: `card_bytes` = `reserved_bytes` (what `torch.cuda.max_memory_reserved`
would report: the peak plus the caching allocator's cached-but-free blocks) + `CUDA_CONTEXT_BYTES` (the CUDA context
and library handles, outside the allocator). The reserved rule is fitted to six H200 runs (docs/perf/h200_memory.json,
`fit_card_rule`; docs/memory.md gives the residuals): in-sample, not yet checked on another device.
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
# The whole-card rule, fitted by `fit_card_rule` to docs/perf/h200_memory.json (tests/test_estimate_memory.py checks
# that these are its fit): reserved = peak x (1 + FRAGMENTATION) + QUANTIZED_CACHE x the full-precision bytes of the
# weights NF4 replaced on the device (freed blocks the allocator keeps cached); card = reserved + CUDA_CONTEXT_BYTES.
FRAGMENTATION = 0.173
QUANTIZED_CACHE = 0.620
CUDA_CONTEXT_BYTES = int(0.76 * GiB)  # nvidia-smi's card use minus max_memory_reserved, H200 (three runs alike)
NEAREST_MISSES = 2  # --budget: the configs just too large for which each change is estimated
TEXT_TOKENS = 77  # CLIP / OpenCLIP pad every prompt to 77 tokens (the shipped MiniLM to 32)


def reserved_rule(peak: int, quantized: int, fragmentation: float = FRAGMENTATION,
                  cache: float = QUANTIZED_CACHE) -> int:
    """`torch.cuda.max_memory_reserved` by the whole-card rule: the peak plus the allocator's cached-but-free blocks
    (`fragmentation` of the peak, `cache` of the full-precision bytes of the weights NF4 replaced); add the CUDA
    context for the whole card."""
    return int(peak * (1 + fragmentation) + cache * quantized)


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
    measured_reserved_bytes: int | None = None  # ... its `torch.cuda.max_memory_reserved`
    measured_card_bytes: int | None = None  # ... the device's used memory after the steps (nvidia-smi's figure)
    quantized_bytes: int = 0  # full-precision bytes of the weights that NF4 replaced (freed on the device)
    seconds: float = 0.0

    @property
    def reserved_bytes(self) -> int:
        """`torch.cuda.max_memory_reserved` by the fitted rule: the peak plus cached-but-free blocks."""
        return reserved_rule(self.peak_bytes, self.quantized_bytes)

    @property
    def card_bytes(self) -> int:
        """The whole card's need (nvidia-smi's figure): reserved plus the CUDA context."""
        return self.reserved_bytes + CUDA_CONTEXT_BYTES

    def to_dict(self) -> dict:
        return {**self.__dict__, "reserved_bytes": self.reserved_bytes, "card_bytes": self.card_bytes}


def fit_card_rule(rows: list[dict]) -> tuple[float, float, int]:
    """(FRAGMENTATION, QUANTIZED_CACHE, CUDA_CONTEXT_BYTES) fitted to measured runs: least squares, no intercept, of
    `reserved - peak` on `peak` and `quantized_bytes`; the context is the mean of `card - reserved` where the card
    was read. Each row: `peak_bytes` and `quantized_bytes` (the estimate), `reserved_bytes`, `card_bytes` or None."""
    peaks = torch.tensor([float(r["peak_bytes"]) for r in rows], dtype=torch.float64)
    features = torch.stack([peaks, torch.tensor([float(r["quantized_bytes"]) for r in rows], dtype=torch.float64)], 1)
    slack = torch.tensor([float(r["reserved_bytes"]) for r in rows], dtype=torch.float64) - peaks
    fragmentation, cache = torch.linalg.lstsq(features, slack[:, None]).solution[:, 0].tolist()
    contexts = [r["card_bytes"] - r["reserved_bytes"] for r in rows if r.get("card_bytes") is not None]
    if not contexts:
        raise ValueError("fit_card_rule needs at least one row with card_bytes (the card's use as nvidia-smi shows it)")
    return fragmentation, cache, int(sum(contexts) / len(contexts))


# ---------------------------------------------------------------------------------------------- the model
def text_tokens(preset: str) -> int:
    """Text states per prompt of a preset's model: the shipped default's MiniLM pads to 32 tokens, CLIP and
    OpenCLIP (every other preset) to `TEXT_TOKENS`."""
    return 32 if preset == "default" else TEXT_TOKENS


def step_shapes(preset: str, batch: int, frames: int, size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of one training step's random inputs for a preset's video U-Net at `frames` x `size`² pixels:
    latents `(batch, C, frames, size / f, size / f)` (f: the preset's VAE downsampling) and text states
    `(batch, text_tokens(preset), the U-Net's cross-attention width)` (scripts/bench_*.py)."""
    from ..models.presets import get_preset

    spec = get_preset(preset)
    side = size // 2 ** (len(spec.vae["block_out_channels"]) - 1)
    return ((batch, spec.unet["in_channels"], frames, side, side),
            (batch, text_tokens(preset), spec.unet["cross_attention_dim"]))


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
        return unet, True, text_tokens(preset)
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
def step_inputs(unet, tokens: int, batch: int, frames: int, size: int, dtype: torch.dtype,
                device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of one training step of the video U-Net, standard normal, in the global RNG's order: `batch` clip
    latents `(batch, C, frames, size / 8, size / 8)` (the VAE downsamples 8x) and text states `(batch, tokens, the
    U-Net's cross-attention width)`. Shared by `measure_step` (memory) and `throughput.forward_flops` (FLOPs)."""
    latent = size // 8
    latents = torch.randn(batch, unet.latent_channels, frames, latent, latent, device=device, dtype=dtype)
    text = torch.randn(batch, tokens, unet.unet.config.cross_attention_dim, device=device, dtype=dtype)
    return latents, text


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
    from .losses import video_training_loss
    from .trainer import make_optimizer
    from .stages.video import WEIGHT_DTYPES, prepare_unet

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
    # foreach: the temporaries a CUDA step allocates; fused AdamW, which cannot run on meta, gets make_optimizer's
    # single-tensor stand-in there
    optimizer = make_optimizer(params, cfg.optim, foreach=True)
    scheduler = make_train_scheduler(cfg.objective)

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
        latents, text = step_inputs(unet, tokens, batch, frames, size, dtype, torch_device)
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
    reserved = torch.cuda.max_memory_reserved() if cuda else None
    if cuda:  # the whole device, as nvidia-smi counts it: CUDA context, cached blocks, everything in use
        free, total = torch.cuda.mem_get_info(torch_device)
    card = total - free if cuda else None
    quantized = sum(m.weight.quant_state.shape.numel() for m in unet.modules()
                    if getattr(getattr(m, "weight", None), "quant_state", None) is not None) * dtype.itemsize
    return MemoryEstimate(
        name=name, model=model or preset, frames=frames, size=size, batch=batch, peak_bytes=counter.peak,
        breakdown={k: v for k, v in breakdown.items() if v and k not in (PAGED, HOST)},
        paged_bytes=breakdown.get(PAGED, 0), trainable_params=sum(p.numel() for p in params),
        measured_bytes=measured, measured_reserved_bytes=reserved, measured_card_bytes=card, quantized_bytes=quantized,
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
    lines.append(f"  {'reserved (memory_reserved)':28} {gib(estimate.reserved_bytes)}  (rule fitted on six H200 runs)")
    lines.append(f"  {'whole card':28} {gib(estimate.card_bytes)}  (+{CUDA_CONTEXT_BYTES / GiB:.2f} GiB CUDA context; "
                 "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True may need less: not measured yet)")
    return "\n".join(lines)


def budget_configs(root: Path, preset: str | None = None) -> tuple[list[Path], dict[str, list[Path]]]:
    """The YAMLs under `root` that train a video U-Net (fine-tunes and video stages), sorted by path, split into
    those written for `preset` (None: any) and, by their preset, those skipped. A config's model size is its
    `preset:` key, else TrainConfig's default (the shipped model's size)."""
    from ..config import read_yaml

    found, skipped = [], {}
    for path in sorted(root.rglob("*.yaml")):
        data = read_yaml(path)
        if "compute_environment" in data or data.get("kind", "video") != "video":
            continue
        written_for = data.get("preset", TrainConfig.preset)
        if preset is None or written_for == preset:
            found.append(path)
        else:
            skipped.setdefault(written_for, []).append(path)
    return found, skipped


def preset_of_model(model: str) -> str | None:
    """The preset whose U-Net has the shape of the model folder's (block widths, text width), else None."""
    from ..models.presets import PRESETS

    config = json.loads((Path(model) / "unet" / "config.json").read_text())
    config = config.get("unet_config", config)  # an emuvideo folder nests the spatial U-Net's config
    keys = ("block_out_channels", "cross_attention_dim", "layers_per_block")
    shape = [list(config.get(k)) if isinstance(config.get(k), (list, tuple)) else config.get(k) for k in keys]
    for name, preset in PRESETS.items():
        if shape == [list(v) if isinstance(v, tuple) else v for v in (preset.unet[k] for k in keys)]:
            return name
    return None


def _changed(cfg: TrainConfig, pairs: list[str]) -> TrainConfig:
    from ..config import _merge, from_dict, parse_overrides, to_dict

    return from_dict(TrainConfig, _merge(to_dict(cfg), parse_overrides(pairs)))


def fitting_changes(cfg: TrainConfig, estimate: MemoryEstimate, budget: int, preset: str | None,
                    model: str | None) -> list[tuple[str, MemoryEstimate]]:
    """What to change so that `estimate` (of `cfg`) fits `budget`: each single change that applies — lighter
    precision or mode, checkpointing, batch 1 with accumulation, half the frames, a smaller size — estimated
    (not guessed), smallest whole-card need first; when none fits alone, all of them together as a last row."""
    e = estimate
    changes: list[tuple[str, list[str], dict]] = []  # (what to type, --set pairs, shape)
    if cfg.weight_dtype == "fp32":
        changes.append(("--set weight_dtype=bf16", ["weight_dtype=bf16"], {}))
    if not cfg.gradient_checkpointing:
        changes.append(("--set gradient_checkpointing=true", ["gradient_checkpointing=true"], {}))
    if cfg.mode == "full":
        if cfg.optim.optimizer == "adamw":
            changes.append(("--set optim.optimizer=adamw8bit", ["optim.optimizer=adamw8bit"], {}))
        if cfg.freeze_spatial and cfg.spatial_quantization == "none":
            changes.append(("--set spatial_quantization=nf4", ["spatial_quantization=nf4"], {}))
        if not cfg.interpolation.enabled:  # LoRA instead (QLoRA where the base was NF4 already)
            nf4 = cfg.spatial_quantization == "nf4"
            pairs = ["mode=lora", "spatial_quantization=none", "spatial_lora=false",
                     f"lora.quantize_base={str(nf4).lower()}"]
            changes.append(("--set mode=lora" + " --set lora.quantize_base=true" * nf4, pairs, {}))
    elif not cfg.lora.quantize_base:
        changes.append(("--set lora.quantize_base=true (QLoRA)", ["lora.quantize_base=true"], {}))
    if e.batch > 1:
        steps = cfg.gradient_accumulation_steps * e.batch  # keeps the batch each optimizer step sees
        changes.append((f"--batch 1 --set gradient_accumulation_steps={steps}",
                        [f"gradient_accumulation_steps={steps}"], {"batch": 1}))
    if e.frames > 1 and not cfg.interpolation.enabled:  # an interpolation window has a fixed length
        changes.append((f"--frames {e.frames // 2}", [], {"frames": e.frames // 2}))
    smaller = round(e.size / 2**0.5 / 64) * 64  # about half the pixels: 768 -> 512 -> 384 -> 256
    if 64 <= smaller < e.size:
        changes.append((f"--size {smaller}", [], {"size": smaller}))

    def estimate_with(pairs, shape):
        dims = {"frames": e.frames, "size": e.size, "batch": e.batch, **shape}
        return measure_step(_changed(cfg, pairs), preset=preset, model=model, name=e.name, **dims)

    rows = sorted(((what, estimate_with(pairs, shape), pairs, shape) for what, pairs, shape in changes),
                  key=lambda row: row[1].card_bytes)
    if rows and rows[0][1].card_bytes > budget:  # none fits alone: add changes, most saving first, until it fits
        whats, pairs, shape = [rows[0][0]], rows[0][2], rows[0][3]  # the first alone: estimated above, too large
        for what, _, more, dims in rows[1:]:
            try:
                together = estimate_with(pairs + more, {**shape, **dims})
            except ValueError:  # prepare_unet refuses this change beside the others (e.g. NF4 spatial and LoRA)
                continue
            whats, pairs, shape = [*whats, what], pairs + more, {**shape, **dims}
            if together.card_bytes <= budget:
                break
        if len(whats) > 1:
            rows.append((" ".join(whats), together, pairs, shape))
    rows = [(what, est) for what, est, _, _ in rows]
    return rows


def measurement_row(name: str, sets: list[str], size: int, estimate: MemoryEstimate, measured: MemoryEstimate | None,
                    digits: int = 3) -> dict:
    """One run of scripts/check_memory_estimate.py as docs/perf/h200_memory.json holds it, which `card_rule_table`
    reads: the mode's `name`, its `--set` pairs and frame `size`, the meta `estimate`'s peak and card, and the
    `measured` run's (`measure_step(device="cuda")`: None when it ran out of memory) allocated, reserved and card
    use, in GiB rounded to `digits` decimals."""
    gib = lambda b: None if b is None else round(b / GiB, digits)  # noqa: E731
    return {"mode": name, "sets": sets, "size": size, "estimate_gib": gib(estimate.peak_bytes),
            "estimate_card_gib": gib(estimate.card_bytes),
            "allocated_gib": gib(measured and measured.measured_bytes),
            "reserved_gib": gib(measured and measured.measured_reserved_bytes),
            "card_gib": gib(measured and measured.measured_card_bytes)}


def card_rule_table(measurements: dict) -> tuple[tuple[float, float, int], list[dict]]:
    """The whole-card rule against measured runs: each row of `measurements` (docs/perf/h200_memory.json: the
    run's shape and `--set` pairs; `reserved_gib` and, where read, `card_gib`) estimated again on meta, the rule
    fitted to them (`fit_card_rule`) and each row's predicted reserved and card beside the measured ones. A row
    whose card was not read is compared with its reserved + the fitted context ("derived")."""
    from ..config import parse_overrides
    from .finetune import finetune_config

    shape = measurements["shape"]
    rows = []
    for row in measurements["rows"]:
        if row.get("allocated_gib") is None:  # out of memory on the device: nothing measured
            continue
        cfg = finetune_config(None, parse_overrides([*row["sets"], *measurements["sets"]]))
        size = row.get("size", shape["size"])  # scripts/check_memory_estimate.py's rows may span sizes
        e = measure_step(cfg, preset=shape["preset"], frames=shape["frames"], size=size, batch=shape["batch"])
        card = row.get("card_gib")
        rows.append({"mode": row["mode"], "peak_bytes": e.peak_bytes, "quantized_bytes": e.quantized_bytes,
                     "allocated_bytes": int(row["allocated_gib"] * GiB),
                     "reserved_bytes": int(row["reserved_gib"] * GiB),
                     "card_bytes": int(card * GiB) if card is not None else None})
    fragmentation, cache, context = fit_card_rule(rows)
    for row in rows:
        row["predicted_reserved_bytes"] = reserved_rule(row["peak_bytes"], row["quantized_bytes"], fragmentation, cache)
        row["predicted_card_bytes"] = row["predicted_reserved_bytes"] + context
        row["card_read"] = row["card_bytes"] is not None
        row["measured_card_bytes"] = row["card_bytes"] if row["card_read"] else row["reserved_bytes"] + context
        row["card_error"] = row["predicted_card_bytes"] / row["measured_card_bytes"] - 1
    return (fragmentation, cache, context), rows


def describe_budget(rows: list[tuple[MemoryEstimate, bool]], budget: str, skipped: dict[str, list],
                    changes: dict[str, list[tuple[str, MemoryEstimate]]]) -> str:
    """The `--budget` answer: (estimate, fits) rows smallest first, the configs skipped as written for another
    model size, and for the nearest misses each change estimated (`fitting_changes`)."""
    gib = lambda b: f"{b / GiB:6.2f} GiB"  # noqa: E731
    lines = [f"configs that fit {budget} (whole-card need, smallest first):"]
    lines += [f"  {gib(e.card_bytes)}  {e.name}  ({e.model}, {e.frames}x{e.size}², batch {e.batch})"
              for e, ok in rows if ok]
    if not any(ok for _, ok in rows):
        lines.append("  none")
    too_big = [e for e, ok in rows if not ok]
    if too_big:
        lines.append("too large: " + ", ".join(f"{e.name} ({e.card_bytes / GiB:.1f} GiB)" for e in too_big))
    for preset, paths in skipped.items():
        lines.append(f"skipped {len(paths)} config(s) written for another model size (preset: {preset}): "
                     f"{', '.join(paths)} (estimate one anyway: --config NAME with --preset or --model)")
    for name, options in changes.items():
        lines.append(f"to fit {name} into {budget}, each change estimated:")
        for what, e in options:
            verdict = "fits" if e.card_bytes <= parse_bytes(budget) else "too large"
            lines.append(f"  {gib(e.card_bytes)}  {verdict:9}  {what}")
    return "\n".join(lines)
