"""The text-to-image stage: a diffusers `UNet2DConditionModel` on single frames (all colour x shape pairs)
-> `final/` = vae + image_unet + image_scheduler (its sampling schedule, hence its objective).

One step: first-frame latents `(B, C, h, w)` (cached, or encoded by the frozen VAE), captions drawn per step and
dropped with `text_dropout`, `losses.diffusion_loss` under the stage's objective.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ...data.shapes import FRAME_SIZE
from ...data.sources import collate, training_data
from ...models.encoding import encode_frames
from ...models.presets import build_unet2d
from ...models.text_encoder import load_minilm
from ...pipelines.common import numpy_to_uint8
from ...schedules import make_sample_scheduler, make_train_scheduler
from ..losses import diffusion_loss, drop_captions
from .base import CaptionEncoder, Stage, batch_captions


class FirstFrames(torch.utils.data.Dataset):
    """Items of a 1-frame training set as images: latents `(C, h, w)`, or without a cache pixel_values `(3, 1, H, W)`
    that the step encodes."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        if "latents" in item:
            item["latents"] = item["latents"][:, 0]
        return item


class ImageStage(Stage):
    collate_fn = staticmethod(collate)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.vae = load_vae(cfg.init)
        self.tokenizer, self.text_encoder = load_minilm()
        image_unet_dir = Path(cfg.init) / "image_unet"
        if image_unet_dir.is_dir():
            self.model = UNet2DConditionModel.from_pretrained(str(image_unet_dir))
        else:  # cross-attention takes the text encoder's states, whatever the preset's default width
            self.model = build_unet2d(cfg.preset, cross_attention_dim=self.text_encoder.config.hidden_size)
        # The image stage sees the first frame of each `data.num_frames` clip: where an object starts depends on
        # where the caption says it is going (a fast clip moving down starts near the top).
        size = cfg.data.resolution or FRAME_SIZE
        self.dataset = FirstFrames(training_data(cfg, self.vae, self.tokenizer, self.text_encoder, size, num_frames=1))
        self.train_scheduler = make_train_scheduler(cfg.objective)
        self.encode_text = CaptionEncoder(self.tokenizer, self.text_encoder)
        self.frozen = (self.vae, self.text_encoder)

    def loss(self, model, batch):
        if "latents" in batch:
            x = batch["latents"]  # (B, C, h, w)
        else:  # no cache: the frozen VAE encodes the first frames, (B, 3, 1, H, W)
            with torch.no_grad():
                x = encode_frames(self.vae, batch["pixel_values"])[:, :, 0]
        captions = drop_captions(batch_captions(batch, self.cfg.data.captions), self.cfg.text_dropout)
        return diffusion_loss(model, self.train_scheduler, x, self.encode_text(captions, x.device))

    def sample(self, model, step):
        from ...pipelines.text_to_image import EmuTextToImagePipeline

        cfg = self.cfg
        pipe = EmuTextToImagePipeline(self.vae, self.text_encoder, self.tokenizer, model,
                                      make_sample_scheduler(cfg.objective))
        pipe.set_progress_bar_config(disable=True)
        images = pipe(cfg.sample_prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
        images = numpy_to_uint8(images)  # "np" is float in [0, 1]; samples are written as files hold them
        return {p: images[i][None] for i, p in enumerate(cfg.sample_prompts)}

    def save(self, model, folder):
        self.vae.save_pretrained(Path(folder) / "vae")
        model.save_pretrained(Path(folder) / "image_unet")
        # the same sub-folder a pipeline folder has, so later stages read the objective one way
        make_sample_scheduler(self.cfg.objective).save_pretrained(Path(folder) / "image_scheduler")


def load_vae(init: str | None) -> AutoencoderKL:
    """The frozen autoencoder of a previous stage's final/ folder."""
    vae_dir = Path(init or "") / "vae"
    if init is None or not (vae_dir / "config.json").is_file():
        raise ValueError(f"init {init!r} has no vae/ folder (run the autoencoder stage first)")
    return AutoencoderKL.from_pretrained(str(vae_dir)).requires_grad_(False).eval()


def load_image_stage(init: Path):
    """(vae, image_unet, image_scheduler) of an image stage's final/ folder."""
    from diffusers import DDIMScheduler

    image_objective(init)  # a folder without image_scheduler/ is refused with the stage to run
    vae = AutoencoderKL.from_pretrained(str(init / "vae"))
    image_unet = UNet2DConditionModel.from_pretrained(str(init / "image_unet"))
    return vae, image_unet, DDIMScheduler.from_pretrained(str(init / "image_scheduler"))


def image_objective(init: Path) -> str:
    """The text-to-image U-Net's objective, from the `image_scheduler/` that image and video stages both save."""
    config = init / "image_scheduler" / "scheduler_config.json"
    if not config.is_file():
        raise ValueError(f"init {str(init)!r} has no image_scheduler/ (run the image stage first)")
    return json.loads(config.read_text())["prediction_type"]
