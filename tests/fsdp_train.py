"""A few steps of the tiny video U-Net through the shared `Trainer`, launched by tests/test_fsdp.py:

    ACCELERATE_USE_CPU=1 accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \
        tests/fsdp_train.py ROOT temporal full

For each mode (full: every layer trains; temporal: temporal layers and conv_in, the spatial ones frozen;
nf4: temporal, with the frozen spatial linear layers in NF4) it trains ROOT/MODE for 4 steps (checkpoints at
2 and 4); then, with a new model and Trainer, ROOT/FIRST-resumed continues the first mode's run from its
checkpoint-2 up to step 4. Each process writes
`rank{i}.json` into the run folder: how many parameter elements it holds after `prepare` (its shards) and
how many the model has. The loss is deterministic (fixed inputs and targets, no noise drawn), so a
2-process run on batches of B compares step for step with a 1-process run (`run`) on batches of 2B.

accelerate chooses FSDP only on accelerators: with `ACCELERATE_USE_CPU` it makes a gloo process group and
then wraps the model in DDP, silently dropping the FSDP plugin of the config (accelerate 1.15: FSDP is
chosen in `AcceleratorState.__init__`'s branch for MULTI_GPU/MULTI_XPU/..., never for MULTI_CPU). torch's
FSDP2 (`fully_shard`) itself runs on CPU with gloo, so `_fsdp_on_cpu` keeps the plugin: everything after
the choice of distributed type (prepare, sharded checkpoints, clipping, the gathered state dict) is
accelerate's and torch's own FSDP2 code. A test harness only; on GPUs accelerate chooses FSDP itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from emuvideo.models.presets import build_video_unet
from emuvideo.training.config import OptimConfig, TrainConfig
from emuvideo.training.trainer import Trainer

MODES = ("full", "temporal", "nf4")
FRAMES, SIZE, TOKENS, TEXT_DIM = 2, 8, 4, 32  # the tiny preset: 4 latent channels, 32-d text states
STEPS = 4


class FixedClips(torch.utils.data.Dataset):
    """`n` fixed (latents, text, timestep, target) items, the same in every process."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.latents = torch.randn(n, 4, FRAMES, SIZE, SIZE, generator=g)  # (N, C, T, h, w)
        self.text = torch.randn(n, TOKENS, TEXT_DIM, generator=g)  # (N, L, D)
        self.timesteps = torch.randint(0, 1000, (n,), generator=g)
        self.targets = torch.randn(n, 4, FRAMES, SIZE, SIZE, generator=g)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "text": self.text[i], "t": self.timesteps[i], "target": self.targets[i]}


def loss_fn(model, batch) -> torch.Tensor:
    pred = model(batch["latents"], batch["t"], batch["text"]).sample
    return F.mse_loss(pred, batch["target"])


def sample_fn(model, step) -> dict:
    """One forward of the first item, as a 2-frame 8x8 video; under FSDP every process runs it."""
    data = FixedClips(1)
    with torch.no_grad():
        pred = model(data.latents, data.timesteps, data.text).sample  # (1, C, T, h, w)
    frames = (pred[0, :3].clamp(-1, 1) + 1) * 127.5  # (3, T, h, w)
    return {"pred": frames.permute(1, 2, 3, 0).to(torch.uint8).numpy()}  # (T, h, w, 3)


def save_fn(model, folder) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(folder) / "model.safetensors"))


def build_model(mode: str) -> torch.nn.Module:
    """The tiny video U-Net, its temporal layers off identity (so they have gradients everywhere)."""
    torch.manual_seed(0)
    unet = build_video_unet("tiny")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".temporal." in name:
                param.add_(0.05 * torch.randn_like(param))
    unet.freeze_spatial(mode != "full")
    if mode == "nf4":
        from emuvideo.training.quantize import quantize_linear_layers

        # A floating quant storage: FSDP shards the packed 4-bit weights like any bf16 tensor.
        quantize_linear_layers(unet, "cpu", only=lambda name: ".temporal." not in f".{name}.",
                               quant_storage=torch.bfloat16)
    return unet


def run(output_dir: str | Path, mode: str, batch_size: int, resume: str | Path | None = None) -> None:
    """Train `mode` for `STEPS` steps into `output_dir` with `batch_size` items per process."""
    cfg = TrainConfig(
        output_dir=str(output_dir), batch_size=batch_size, max_steps=STEPS, checkpoint_every=2, keep_last=10,
        log_every=1, sample_every=STEPS, seed=0,
        optim=OptimConfig(lr=1e-3, warmup_steps=1, max_grad_norm=0.05),  # clipping acts on every step
    )
    trainer = Trainer(cfg, build_model(mode), loss_fn, FixedClips(), sample_fn=sample_fn, save_fn=save_fn)
    acc = trainer.accelerator
    params = list(trainer.model.parameters())
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)  # DTensor shards
    info = {"distributed_type": str(acc.distributed_type), "num_processes": acc.num_processes, "local": local,
            "total": sum(p.numel() for p in params)}
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / f"rank{acc.process_index}.json").write_text(json.dumps(info))
    trainer.train(resume=None if resume is None else str(resume))


def _fsdp_on_cpu() -> None:
    """Keep the FSDP plugin when accelerate runs on CPU processes (see the module docstring)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init_keeping_fsdp


def _keep_process_group() -> None:
    """`Trainer.train` ends with accelerate's `end_training`, which destroys the process group; the runs after
    the first in this process need it (a launch each would cost ~20 s of start-up). Destroyed at the end."""
    from accelerate.state import PartialState

    PartialState.destroy_process_group = lambda self, group=None: None


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("modes", nargs="+", choices=MODES)
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _fsdp_on_cpu()
    _keep_process_group()
    root = Path(args.root)
    for mode in args.modes:
        run(root / mode, mode, args.batch_size)
    first = args.modes[0]
    run(root / f"{first}-resumed", first, args.batch_size, resume=root / first / "checkpoints" / "checkpoint-2")
    torch.distributed.destroy_process_group()
