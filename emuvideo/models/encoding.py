"""The frozen encoders' side of a diffusion model: prompts to token states, frames to scaled latents and back.

Used by the pipelines (sampling), by the data sources (the latent cache), by the training stages and by the
evaluations, so it sits below all of them.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite values (its weights, or a too-large guidance, are broken)."""


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise `NonFiniteOutputError` naming `what` if `x` holds NaN or inf, rather than write black frames."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteOutputError(
            f"{what} hold {bad} NaN/inf value(s) of {x.numel()}: the model's weights are broken or a scale is too large"
        )


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
    z = (z - _latent_shift(vae)) * vae.config.scaling_factor
    return rearrange(z, "(b t) c h w -> b c t h w", t=t)


def decode_frames(vae, latents: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Scaled latents `(B, C, T, h, w)` -> frames `(B, 3, T, H, W)` in [-1, 1], decoded `chunk` frames at a time."""
    t = latents.shape[2]
    check_finite(latents, "the sampled latents")  # a NaN here would decode to black frames
    z = rearrange(latents, "b c t h w -> (b t) c h w").to(vae.dtype)
    z = z / vae.config.scaling_factor + _latent_shift(vae)
    x = torch.cat([vae.decode(part).sample for part in z.split(chunk)])
    check_finite(x, "the decoded frames")
    x = x.clamp(-1, 1)  # the decoder can overshoot
    return rearrange(x, "(b t) c h w -> b c t h w", t=t)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """`(B, 3, T, H, W)` in [-1, 1] -> `(B, T, H, W, 3)` uint8."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c t h w -> b t h w c").cpu().numpy()


def _latent_shift(vae) -> float:
    """The VAE's latent shift (0 for SD-style VAEs, which only scale)."""
    return vae.config.shift_factor or 0.0
