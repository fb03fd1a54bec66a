"""The frozen encoders' side of a diffusion model: prompts to token states, frames to scaled latents.

Used by the pipelines (sampling), by the data sources (the latent cache) and by the training stages, so it
sits below all three.
"""

from __future__ import annotations

import torch
from einops import rearrange


def encode_prompt(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    """Token states `(B, L, D)` of the text encoder's last layer (padded to the tokenizer's max length)."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    kwargs = {}
    if "attention_mask" in tokens and text_encoder.config.model_type != "clip_text_model":
        kwargs["attention_mask"] = tokens.attention_mask.to(device)
    return text_encoder(tokens.input_ids.to(device), **kwargs)[0]


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_frames(vae, frames: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
    """`(B, 3, T, H, W)` in [-1, 1] -> scaled latents `(B, C, T, h, w)`; the VAE runs per frame."""
    t = frames.shape[2]
    x = rearrange(frames, "b c t h w -> (b t) c h w").to(vae.device, vae.dtype)
    dist = vae.encode(x).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    z = (z - latent_shift(vae)) * vae.config.scaling_factor
    return rearrange(z, "(b t) c h w -> b c t h w", t=t)


def latent_shift(vae) -> float:
    """The VAE's latent shift (0 for SD-style VAEs, which only scale)."""
    return vae.config.shift_factor or 0.0
