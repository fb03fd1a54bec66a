"""How long will a training step take? FLOPs counted on the meta device, seconds projected from measured rates.

`forward_flops` runs the video U-Net's training forward (the image-conditioned loss) on PyTorch's ``meta``
device under `torch.utils.flop_counter.FlopCounterMode`, which counts by shape (matmuls, convolutions,
attention), so a meta run and a run on real tensors count the same. A training step is taken as 3 x the
forward (backward = 2 x forward, the usual convention; checkpointing's recomputation is not added, so it shows
as a lower effective rate).

`gpu_throughput.json` (next to this file) holds measured steps: device, torch, source, and per row the
training mode (`--set` pairs), batch and seconds per step, from which an effective rate
(3 x forward FLOPs / measured seconds) follows. `project` divides a step's FLOPs by the rate of the measured
row with the same mode (closest batch not above the asked one): an estimate, labelled with its device and the
shape it was measured at (smaller shapes keep a GPU less busy, so their real step is slower than projected).
Devices nobody measured are "not measured"; no row is extrapolated to another GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

THROUGHPUT_FILE = Path(__file__).with_name("gpu_throughput.json")


def forward_flops(cfg, preset: str | None, model: str | None, frames: int, size: int, batch: int,
                  device: str = "meta") -> int:
    """FLOPs of one training forward of the video U-Net in `cfg.weight_dtype` (no NF4, no LoRA: the base
    model's arithmetic), `batch` clips of `frames` x `size`², counted by `FlopCounterMode` on `device`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..schedules import make_train_scheduler
    from .losses import video_training_loss
    from .memory import _unet_on, step_inputs
    from .stages.video import WEIGHT_DTYPES

    dtype = WEIGHT_DTYPES[cfg.weight_dtype]
    unet, _, tokens = _unet_on(device, preset, model)
    unet.to(dtype)
    torch.manual_seed(cfg.seed)
    latents, text = step_inputs(unet, tokens, batch, frames, size, dtype, device)
    # Attention as its two matmuls (SDPA's math path: what meta runs anyway, and the count FlopCounterMode gives
    # CUDA's flash kernel); the CPU's fused kernel would not be counted at all.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        video_training_loss(unet, make_train_scheduler(cfg.objective), latents, text, cfg)
    return counter.get_total_flops()


def mode_key(cfg) -> tuple:
    """What decides the speed of a step besides its shape: the training mode, precision, checkpointing and the
    speed settings (a compiled or fused step is not projected from an eager measurement)."""
    return (cfg.mode, cfg.freeze_spatial, cfg.spatial_quantization, cfg.spatial_lora, cfg.lora.quantize_base,
            cfg.optim.optimizer, cfg.weight_dtype, cfg.gradient_checkpointing, cfg.compile, cfg.channels_last,
            cfg.optim.fused)


@dataclass
class Projection:
    """Seconds per training step on `device`, from the measured row `row` (None: that mode was not measured)."""

    device: str
    flops_per_step: int
    seconds: float | None = None
    row: dict | None = None

    def describe(self) -> str:
        unit, scale = next((u, x) for u, x in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("FLOP", 1))
                           if self.flops_per_step >= x or x == 1)
        flops = f"{self.flops_per_step / scale:6.2f} {unit}"
        lines = [f"  {'FLOPs per step':28} {flops}  (3 x the forward, counted on meta)"]
        if self.row is None:
            when = f"not measured for this mode on {self.device} (measured modes: docs/performance.md §5)"
        else:
            shape = self.row["shape"]  # the rate is assumed the same at other shapes (smaller ones run slower)
            when = (f"{self.seconds:6.2f} s on {self.device} — estimate (from {self.device} measurements: "
                    f"{self.row['name']}, batch {self.row['batch']}, {shape['frames']}x{shape['size']}²)")
        lines.append(f"  {'seconds per step':28} {when}; other GPUs: not measured")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"device": self.device, "flops_per_step": self.flops_per_step, "seconds_per_step": self.seconds,
                "measured_row": self.row}

def load_throughput(path: Path = THROUGHPUT_FILE) -> dict:
    return json.loads(Path(path).read_text())


def row_rate(table: dict, row: dict) -> float:
    """The effective FLOP/s of a measured row: 3 x its forward FLOPs / its measured seconds per step."""
    return 3 * table["forward_flops_batch1"] * row["batch"] / row["seconds_per_step"]


def project(cfg, flops_forward: int, batch: int, table: dict | None = None) -> Projection:
    """Seconds per step of `cfg` (forward FLOPs `flops_forward` at `batch`) on the table's device."""
    from ..config import parse_overrides
    from .finetune import finetune_config

    table = table or load_throughput()
    flops = 3 * flops_forward
    same = [r for r in table["rows"] if mode_key(finetune_config(None, parse_overrides(r["sets"]))) == mode_key(cfg)]
    if not same:
        return Projection(table["device"], flops)
    row = min(same, key=lambda r: (r["batch"] > batch, abs(r["batch"] - batch)))
    return Projection(table["device"], flops, flops / row_rate(table, row), {**row, "shape": table["shape"]})
