"""Pieces the pipelines share: input checks, prompt embeddings, image preprocessing, and turning decoded frames
into the requested `output_type` (diffusers' conventions). Per-frame VAE coding and prompt encoding live in
`emuvideo.models.encoding` (re-exported here)."""

from __future__ import annotations

import inspect
import logging
import math

import numpy as np
import PIL.Image
import torch
from einops import rearrange

# the VAE and text-encoder side lives in models.encoding (training, data and evaluation use it too); re-exported here
from ..models.encoding import (  # noqa: F401
    NonFiniteOutputError,
    check_finite,
    decode_frames,
    encode_frames,
    encode_prompt,
    to_uint8,
    vae_scale_factor,
)
from ..preprocessing import array_to_image, cover_size, resize_and_crop, to_pixels, to_rgb

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Sampler steps of the text-to-image and image-to-video stages, from the step curve (docs/performance.md §1):
# the fewest DDIM steps whose strict rate, on all 120 canonical prompts x 3 seeds, stays within the Wilson 95%
# interval of 25 steps (16 + 16: 75.0%, 25 + 25: 78.1% (73.5-82.1); 12 + 12: 61.1%). The interpolation model,
# not on the curve, keeps 25 (INTERPOLATION_STEPS: `generate --interpolate`, `animate --interpolate`, `interpolate`).
DEFAULT_STEPS = 16
INTERPOLATION_STEPS = 25


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


def warn_untrained_shape(height: int, width: int, trained_size: int, num_frames: int | None = None,
                         trained_frames: int | None = None) -> None:
    """One warning line when sampling away from the size (and length) the model was trained at."""
    if (height, width) != (trained_size, trained_size):
        logger.warning("sampling at %dx%d, but the model was trained at %dx%d: expect wrong colours or layout",
                       width, height, trained_size, trained_size)
    if num_frames is not None and trained_frames is not None and num_frames != trained_frames:
        logger.warning("sampling %d frames, but the model was trained on %d: expect less or no motion",
                       num_frames, trained_frames)


def postprocess(frames: torch.Tensor, output_type: str):
    """Decoded pixels in [-1, 1] -> `output_type`, as diffusers' `VideoProcessor.postprocess_video` (videos
    `(B, 3, T, H, W)`) and `VaeImageProcessor.postprocess` (images `(B, 3, H, W)`) give them.

    Videos: "np" float32 `(B, T, H, W, 3)` in [0, 1], "pt" float `(B, T, 3, H, W)` in [0, 1], "pil" B lists of T
    `PIL.Image`s. Images: "np" `(B, H, W, 3)`, "pt" `(B, 3, H, W)`, "pil" a list of B. "latent" is returned
    before decoding, by the pipeline itself. Computed in float32 whatever the VAE's dtype.
    """
    from diffusers.video_processor import VideoProcessor

    check_output_type(output_type)
    if output_type == "latent":
        raise ValueError("output_type 'latent' is returned before decoding; postprocess takes decoded pixels")
    processor = VideoProcessor(do_resize=False)
    if frames.ndim == 4:
        return processor.postprocess(frames.float(), output_type)
    return processor.postprocess_video(frames.float(), output_type)


def numpy_to_uint8(frames: np.ndarray) -> np.ndarray:
    """"np" output (float in [0, 1]) -> uint8, rounded as diffusers' `numpy_to_pil` does; the bytes files hold
    (the same as `to_uint8` of the decoded pixels, bit for bit)."""
    return (frames * 255).round().astype(np.uint8)


class VaeSlicingMixin:
    """`enable_vae_slicing`: the VAE decodes one frame at a time (diffusers' `AutoencoderKL.enable_slicing`), the
    same frames at a lower peak memory; `disable_vae_slicing` goes back to decoding a batch of frames per call."""

    def enable_vae_slicing(self) -> None:
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()


def register_with_diffusers(*pipeline_classes) -> None:
    """Make `DiffusionPipeline.from_pretrained(folder)` find emuvideo's pipelines by their `_class_name`.

    diffusers looks a folder's `model_index.json` `_class_name` up as an attribute of the `diffusers`
    module; adding ours there lets it load a folder `save_pretrained` wrote, with no remote code.
    """
    import diffusers

    for cls in pipeline_classes:
        setattr(diffusers, cls.__name__, cls)


def check_prompts(prompt: str | list[str], allow_empty: bool = False) -> list[str]:
    """The prompts as a list; each must be non-empty text (`allow_empty`: any text, "" included)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt must be a non-empty string or list, got an empty list")
    for p in prompts:
        if not isinstance(p, str) or not (allow_empty or p.strip()):
            raise ValueError(f"prompt must be {'' if allow_empty else 'non-empty '}text, got {p!r}")
    return prompts


def prompt_embeddings(pipe, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                      num_per_prompt: int = 1, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative, positive) token states `(B·n, L, D)`: each prompt's `n = num_per_prompt` times in a row (as
    diffusers), from `prompt`/`negative_prompt` or given as `prompt_embeds`/`negative_prompt_embeds`.
    `allow_empty`: "" is a prompt too (the interpolation model, trained with dropped text)."""
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("pass exactly one of prompt and prompt_embeds, got "
                         + ("both" if prompt is not None else "neither"))
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds, got both")
    if isinstance(num_per_prompt, bool) or not isinstance(num_per_prompt, int) or num_per_prompt < 1:
        raise ValueError(f"num_videos_per_prompt must be an integer >= 1, got {num_per_prompt!r}")
    device = pipe._execution_device
    if prompt_embeds is None:
        prompts = check_prompts(prompt, allow_empty)
        b = len(prompts)
    else:
        if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
            raise ValueError(f"prompt_embeds must be a (B, L, D) tensor, got {getattr(prompt_embeds, 'shape', prompt_embeds)!r}")
        prompts, b = [], prompt_embeds.shape[0]
    negatives = [] if negative_prompt_embeds is not None else (
        [negative_prompt or ""] * b if not isinstance(negative_prompt, list) else negative_prompt)
    texts = negatives + prompts  # encoded in one batch, as before prompt_embeds existed (the same numbers)
    encoded = list(encode_prompt(pipe.tokenizer, pipe.text_encoder, texts, device).split(b)) if texts else []
    negative = negative_prompt_embeds if negative_prompt_embeds is not None else encoded.pop(0)
    positive = prompt_embeds if prompt_embeds is not None else encoded.pop(0)
    if negative.shape != positive.shape:
        raise ValueError(f"negative_prompt_embeds must have prompt_embeds' shape {tuple(positive.shape)}, "
                         f"got {tuple(negative.shape)}")
    return (negative.to(device).repeat_interleave(num_per_prompt, dim=0),
            positive.to(device).repeat_interleave(num_per_prompt, dim=0))


def preprocess_image(image: PIL.Image.Image | np.ndarray | torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, str]:
    """Resize (short side to fit) and centre-crop an image to (height, width), as training reads images
    (`emuvideo.preprocessing`: EXIF orientation, 16-bit rescaled, transparency on white, one resizer).

    `image`: a Pillow image of any mode (see `emuvideo.preprocessing.to_rgb`), an array (see `array_to_image`:
    uint8, uint16, bool, float in [0, 1]) or a tensor `(3, H, W)` in [-1, 1].
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
    rgb = np.asarray(to_rgb(image))  # (H, W, 3) uint8
    h0, w0 = rgb.shape[:2]
    new_h, new_w = cover_size(h0, w0, height, width)
    note = f"image {w0}x{h0}"
    if (new_h, new_w) != (h0, w0):
        note += f" resized to {new_w}x{new_h}"
    if (new_h, new_w) != (height, width):
        note += f", centre-cropped to {width}x{height}"
    if note == f"image {w0}x{h0}":
        note += " used as is"
    x = to_pixels(resize_and_crop(rgb[None], height, width))  # (3, 1, H, W)
    return rearrange(x, "c t h w -> t c h w"), note


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
