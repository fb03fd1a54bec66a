"""`emuvideo finetune`: adapt the video model to your own clips with LoRA, QLoRA or a full fine-tune.

    emuvideo finetune --data my_clips/ [--config configs/finetune/qlora.yaml] [--model M] [--resume latest]

A fine-tune is a video run (`emuvideo.training.stages.video`, the path the video stages of `emuvideo train` take)
with a fine-tune's defaults: `init` = the model (default: the shipped one), `data.source: folder` with
`data.root` = the clips, and `mode: lora` unless the config says otherwise. So the modes (LoRA, QLoRA, full,
NF4 spatial base), the data seam and its latent cache, checkpoints holding only what trains, samples drawn
by the pipeline `generate`/`animate` use, and `RUN/final/` (a peft LoRA folder, or a complete model folder)
are the same as there.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import load_config
from .config import TrainConfig
from .stages.video import model_objective
from .trainer import TrainResult

# What makes a TrainConfig a fine-tune when no --config is given; configs/finetune/lora.yaml holds the
# same (tests/test_finetune.py checks that they agree). Every other value is TrainConfig's default.
FINETUNE_DEFAULTS = {"mode": "lora", "output_dir": "runs/finetune"}


def finetune_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The fine-tune config: a YAML of configs/finetune/ (or, without one, `FINETUNE_DEFAULTS`) + overrides."""
    if path is None:
        return load_config(TrainConfig, None, {**FINETUNE_DEFAULTS, **(overrides or {})})
    return load_config(TrainConfig, path, overrides)


def run_finetune(
    cfg: TrainConfig, data_root: str | Path, model: str | None = None, resume: str | None = None
) -> TrainResult:
    """Fine-tune the video U-Net of `model` (None: the shipped default) on the clips in `data_root`.

    Writes `cfg.output_dir`: config.yaml, checkpoints/, losses.csv, loss.png, samples/, logs/ and final/.
    """
    from .stages import run_stage

    # The run's config records where the model and clips came from (saved beside every checkpoint).
    local = model is not None and Path(model).is_dir()
    model_id = str(Path(model).resolve()) if local else model  # None, a folder or a Hub id
    cfg = replace(cfg, kind="video", init=model_id,
                  data=replace(cfg.data, source="folder", root=str(Path(data_root).resolve())))
    objective = model_objective(model_id)
    if objective is not None and objective != cfg.objective:
        raise ValueError(f"objective is {cfg.objective!r} but the model samples with {objective!r}; "
                         f"fine-tune with the model's own: --set objective={objective}")
    return run_stage(cfg, resume=resume)

