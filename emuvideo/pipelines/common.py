"""Pieces the three pipelines share: prompt encoding, per-frame VAE coding, image preprocessing."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from einops import rearrange


def check_prompts(prompt: str | list[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt must be a non-empty string or list, got an empty list")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt must be non-empty text, got {p!r}")
    return prompts


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
    z = (z - _shift(vae)) * vae.config.scaling_factor
    return rearrange(z, "(b t) c h w -> b c t h w", t=t)


def decode_frames(vae, latents: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Scaled latents `(B, C, T, h, w)` -> frames `(B, 3, T, H, W)` in [-1, 1], decoded `chunk` frames at a time."""
    t = latents.shape[2]
    z = rearrange(latents, "b c t h w -> (b t) c h w").to(vae.dtype)
    z = z / vae.config.scaling_factor + _shift(vae)
    x = torch.cat([vae.decode(part).sample for part in z.split(chunk)]).clamp(-1, 1)  # the decoder can overshoot
    return rearrange(x, "(b t) c h w -> b c t h w", t=t)


def _shift(vae) -> float:
    return vae.config.shift_factor or 0.0


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """`(B, 3, T, H, W)` in [-1, 1] -> `(B, T, H, W, 3)` uint8."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c t h w -> b t h w c").cpu().numpy()


def preprocess_image(image: PIL.Image.Image | np.ndarray | torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, str]:
    """Resize (short side to fit) and centre-crop an image to (height, width).

    Returns the image `(1, 3, H, W)` in [-1, 1] and a sentence saying what was done, for logging.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W) in [-1, 1], got shape {tuple(image.shape)}")
        image = PIL.Image.fromarray(((image.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    elif isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    image = image.convert("RGB")
    w0, h0 = image.size
    scale = max(width / w0, height / h0)
    new = (max(width, round(w0 * scale)), max(height, round(h0 * scale)))
    note = f"image {w0}x{h0}"
    if new != (w0, h0):
        image = image.resize(new, PIL.Image.Resampling.LANCZOS if scale < 1 else PIL.Image.Resampling.BICUBIC)
        note += f" resized to {new[0]}x{new[1]}"
    if new != (width, height):
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        note += f", centre-cropped to {width}x{height}"
    if note == f"image {w0}x{h0}":
        note += " used as is"
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    return x[None], note


def check_size(height: int, width: int, multiple: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < multiple or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} for this model, got {value}")
