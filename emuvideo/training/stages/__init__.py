"""The training stages: the multi-stage recipe that trains the default model on the shapes world (paper §4, at
small scale), and the path `emuvideo finetune` takes.

`emuvideo train --config configs/stages/NAME.yaml` runs one stage (`kind:` picks it); each stage reads the
previous one's `final/` folder (`init`) and writes its own:

- ``autoencoder`` (`autoencoder.py`): a diffusers `AutoencoderKL` on single frames -> `final/vae`;
- ``image`` (`image.py`): the text-to-image `UNet2DConditionModel` on single frames (all 15 colour x shape pairs)
  -> `final/` = vae + image_unet + image_scheduler (its sampling schedule, hence its objective);
- ``video`` (`video.py`): the `EmuVideoUNet` inflated from the image U-Net (or continued from a video stage), trained
  on clips with the first frame as the image condition -> `final/` = a complete `EmuVideoPipeline` folder.

Each is a `Stage` (`base.py`): its model, dataset, `loss(model, batch)`, `sample`, `save` and what is frozen; the
losses live in `emuvideo.training.losses`, the loop in `emuvideo.training.trainer`. Data comes from the one seam
(`emuvideo.data.sources`: `data.source: shapes | folder`), cached once in `data.cache_dir`, keyed by everything
that produced it.
"""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed

from ..config import TrainConfig
from ..trainer import Trainer, TrainResult, resolve_resume, run_lock
from .autoencoder import AutoencoderStage
from .base import Stage
from .image import ImageStage
from .video import VideoStage, checkpoint_trainable_only

STAGES: dict[str, type[Stage]] = {"autoencoder": AutoencoderStage, "image": ImageStage, "video": VideoStage}


def run_stage(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Build the stage `cfg.kind` and train it (see `Trainer.train` for what it raises)."""
    from ...pipelines.loading import check_no_pickle

    # Checked before any model loads: the output folder is free, the checkpoint to resume from can be read, the
    # model to start from holds no pickle weights (unless allow_pickle).
    with run_lock(cfg.output_dir):
        if resume not in (None, "latest"):
            resolve_resume(Path(cfg.output_dir), resume)
        if cfg.init is not None and Path(cfg.init).is_dir():
            check_no_pickle(cfg.init, cfg.allow_pickle)
        set_seed(cfg.seed)  # a model built fresh (the image U-Net, the autoencoder) starts from the same weights
        stage = STAGES[cfg.kind](cfg)
        trainer = Trainer(cfg, stage.model, stage.loss, stage.dataset, collate_fn=stage.collate_fn,
                          sample_fn=stage.sample, save_fn=stage.save)
        if stage.trainable_only:
            checkpoint_trainable_only(trainer.accelerator, cfg, trainer.accelerator.device)
        for module in stage.frozen:
            module.to(trainer.accelerator.device)
        return trainer.train(resume=resume)
