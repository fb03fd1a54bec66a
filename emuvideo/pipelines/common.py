"""Pieces the three pipelines share: input checks, prompt encoding, per-frame VAE coding, image
preprocessing, and turning decoded frames into the requested `output_type`."""

from __future__ import annotations

import inspect
import logging
import math

import numpy as np
import PIL.Image
import torch
from einops import rearrange

from ..utils.video import array_to_image, to_rgb

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Sampler steps of the text-to-image and image-to-video stages, from the step curve (docs/performance.md §1):
# the fewest DDIM steps whose strict rate, on all 120 canonical prompts x 3 seeds, stays within the Wilson 95%
# interval of 25 steps (16 + 16: 75.0%, 25 + 25: 78.1% (73.5-82.1); 12 + 12: 61.1%). The interpolation model,
# not on the curve, keeps 25.
DEFAULT_STEPS = 16


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite values (its weights, or a too-large guidance, are broken)."""


def step_kwargs(scheduler, generator) -> dict:
    """`generator=` for `scheduler.step` when it takes one (DDIM, Euler do; UniPC does not), as diffusers'
    `prepare_extra_step_kwargs`."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")


def check_scale(name: str, value: float) -> None:
    """A guidance or LoRA scale: a finite real number (NaN or inf would give an all-black video)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise `NonFiniteOutputError` naming `what` if `x` holds NaN or inf, rather than write black frames."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteOutputError(
            f"{what} hold {bad} NaN/inf value(s) of {x.numel()}: the model's weights are broken or a scale is too large"
        )


def warn_untrained_shape(height: int, width: int, trained_size: int, num_frames: int | None = None,
                         trained_frames: int | None = None) -> None:
    """One warning line when sampling away from the size (and length) the model was trained at."""
    if (height, width) != (trained_size, trained_size):
        logger.warning("sampling at %dx%d, but the model was trained at %dx%d: expect wrong colours or layout",
                       width, height, trained_size, trained_size)
    if num_frames is not None and trained_frames is not None and num_frames != trained_frames:
        logger.warning("sampling %d frames, but the model was trained on %d: expect less or no motion",
                       num_frames, trained_frames)


def frames_to_output(frames: torch.Tensor, output_type: str):
    """Decoded pixels in [-1, 1] -> what `output_type` asks for; images `(B, 3, H, W)` or videos `(B, 3, T, H, W)`.

    "pt": the tensor as is. "np": uint8 `(B, H, W, 3)` / `(B, T, H, W, 3)`. "pil": a list of B `PIL.Image`s
    (images) or of B lists of T (videos). "latent" is returned before decoding, by the pipeline itself.
    """
    check_output_type(output_type)
    if output_type == "latent":
        raise ValueError("output_type 'latent' is returned before decoding; frames_to_output takes decoded pixels")
    if output_type == "pt":
        return frames
    is_image = frames.ndim == 4
    x = to_uint8(frames[:, :, None] if is_image else frames)  # (B, T, H, W, 3)
    if output_type == "np":
        return x[:, 0] if is_image else x
    pil = [[PIL.Image.fromarray(f) for f in video] for video in x]
    return [video[0] for video in pil] if is_image else pil


def register_with_diffusers(*pipeline_classes) -> None:
    """Make `DiffusionPipeline.from_pretrained(folder)` find emuvideo's pipelines by their `_class_name`.

    diffusers looks a folder's `model_index.json` `_class_name` up as an attribute of the `diffusers`
    module; adding ours there lets it load a folder `save_pretrained` wrote, with no remote code.
    """
    import diffusers

    for cls in pipeline_classes:
        setattr(diffusers, cls.__name__, cls)


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
    check_finite(latents, "the sampled latents")  # a NaN here would decode to black frames
    z = rearrange(latents, "b c t h w -> (b t) c h w").to(vae.dtype)
    z = z / vae.config.scaling_factor + _shift(vae)
    x = torch.cat([vae.decode(part).sample for part in z.split(chunk)])
    check_finite(x, "the decoded frames")
    x = x.clamp(-1, 1)  # the decoder can overshoot
    return rearrange(x, "(b t) c h w -> b c t h w", t=t)


def _shift(vae) -> float:
    return vae.config.shift_factor or 0.0


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """`(B, 3, T, H, W)` in [-1, 1] -> `(B, T, H, W, 3)` uint8."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c t h w -> b t h w c").cpu().numpy()


def preprocess_image(image: PIL.Image.Image | np.ndarray | torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, str]:
    """Resize (short side to fit) and centre-crop an image to (height, width).

    `image`: a Pillow image of any mode (see `emuvideo.utils.video.to_rgb`: EXIF orientation, 16-bit,
    transparency on white), an array (see `array_to_image`: uint8, uint16, bool, float in [0, 1]) or a
    tensor `(3, H, W)` in [-1, 1].
    Returns the image `(1, 3, H, W)` in [-1, 1] and a sentence saying what was done, for logging.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or 0 in image.shape:
            raise ValueError(f"image tensor must be (3, H, W) in [-1, 1], got shape {tuple(image.shape)}")
        if not bool(torch.isfinite(image).all()):
            raise ValueError("image tensor holds NaN or inf")
        image = PIL.Image.fromarray(((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    elif isinstance(image, np.ndarray):
        image = array_to_image(image)
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image must be a PIL image, a numpy array or a (3, H, W) tensor, got {type(image).__name__}")
    image = to_rgb(image)
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


def pin_known_frames(scheduler, latents, clean, pin, noise, timesteps, i: int):
    """Put the known frames back after step `i`: their clean latents noised to the level the next step
    expects (clean after the last step), so the video passes through them. `pin` is 1 at known frames."""
    if i + 1 < len(timesteps):
        target = scheduler.add_noise(clean.to(latents.dtype), noise, timesteps[i + 1 : i + 2])
    else:
        target = clean.to(latents.dtype)
    return pin * target + (1 - pin) * latents
