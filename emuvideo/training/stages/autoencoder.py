"""The autoencoder stage: a diffusers `AutoencoderKL` trained on single frames -> `final/vae`.

One step: frames `(B, 3, H, W)` in [-1, 1] -> encode, sample, decode -> MSE + 0.1 L1 + `kl_weight` KL
(`losses.AutoencoderLoss`); its settings are the config's `autoencoder:` section. With `decoder_only` the encoder is frozen (a fine-tune after the diffusion models
were trained on its latent space, as SD's ft-MSE VAE was).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ...data.shapes import FRAME_SIZE
from ...data.sources import InMemory, training_clips
from ...models.encoding import to_uint8
from ...models.presets import build_vae
from ..losses import AutoencoderLoss
from .base import Stage, model_device


def first_frames(items: list[dict]) -> torch.Tensor:
    """Collate: the first frame of each item's pixel_values `(3, T, H, W)` -> `(B, 3, H, W)`."""
    return torch.stack([it["pixel_values"][:, 0] for it in items])


class AutoencoderStage(Stage):
    collate_fn = staticmethod(first_frames)

    def __init__(self, cfg):
        super().__init__(cfg)
        vae = AutoencoderKL.from_pretrained(str(Path(cfg.init) / "vae")) if cfg.init else build_vae(cfg.preset)
        if cfg.autoencoder.decoder_only:  # every latent keeps its meaning
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        # Stills from the one data seam: the shapes world's all-pairs split, or the frames of your clips.
        stills = replace(cfg, data=replace(cfg.data, num_frames=1))
        clips = training_clips(stills, cfg.data.resolution or FRAME_SIZE, num_frames=1)
        self.dataset = InMemory(clips) if cfg.data.in_memory else clips
        self.model = AutoencoderLoss(vae, cfg.autoencoder.kl_weight, cfg.autoencoder.decoder_only)

    def loss(self, model, batch):
        return model(batch.to(model_device(model)))

    def sample(self, model, step):
        vae = model.vae
        x = first_frames([self.dataset[i] for i in range(4)]).to(model_device(vae))
        with torch.no_grad():
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        pair = torch.stack([x, recon], dim=2)  # (B, 3, 2, H, W): original, reconstruction
        return {f"recon{i}": to_uint8(pair[i : i + 1])[0] for i in range(len(x))}

    def save(self, model, folder):
        vae = model.vae
        # Scale latents to unit variance, as SD's scaling_factor does (measured on this stage's data).
        if not self.cfg.autoencoder.decoder_only:  # a decoder fine-tune keeps the encoder and so the scale
            x = first_frames([self.dataset[i] for i in range(min(256, len(self.dataset)))]).to(model_device(vae))
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
            vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        vae.save_pretrained(Path(folder) / "vae")
