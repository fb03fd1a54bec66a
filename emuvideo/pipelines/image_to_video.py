"""Stage 2 of the factorization: (image, text) -> video, with Emu Video's two-condition guidance."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.video_unet import EmuVideoUNet
from ..models.conditioning import known_frames_conditioning
from .common import (
    DEFAULT_STEPS,
    check_finite,
    check_output_type,
    check_prompts,
    check_scale,
    check_size,
    decode_frames,
    encode_frames,
    encode_prompt,
    frames_to_output,
    pin_known_frames as pin_frames,
    preprocess_image,
    step_kwargs,
    to_uint8,
    vae_scale_factor,
    warn_untrained_shape,
)

logger = logging.getLogger(__name__)


@dataclass
class EmuVideoPipelineOutput(BaseOutput):
    """frames: `(B, T, H, W, 3)` uint8 ("np"), B lists of T `PIL.Image` ("pil"), `(B, 3, T, H, W)` in [-1, 1]
    ("pt") or latents ("latent").
    images: the conditioning images, `(B, H, W, 3)` uint8. fps: the frame rate the clip is meant to play at."""

    frames: np.ndarray | torch.Tensor
    images: np.ndarray | None = None
    fps: int | None = None


class EmuImageToVideoPipeline(DiffusionPipeline):
    r"""Image-to-video: animate a given first frame as the text says (`emuvideo animate`).

    The image latent is placed at frame 0 of an all-zero conditioning video with a mask that is 1 there
    (paper §3.2). The same conditioning knows any set of frames: `last_image` (a video from one image to
    another) and `keyframes` (images at given frame indices) are placed the same way, each with its mask
    (`emuvideo.models.conditioning`, which training uses too). Guidance follows the paper's two-condition form
    X̃ = X(∅) + w_i·(X(I) − X(∅)) + w_p·(X(I, p) − X(I)), the three terms in one batched forward.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: EmuVideoUNet,
        scheduler: SchedulerMixin,
        default_fps: int = 8,
        default_num_frames: int = 16,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(default_fps=default_fps, default_num_frames=default_num_frames)

    @property
    def size_multiple(self) -> int:
        return vae_scale_factor(self.vae) * 2 ** (len(self.unet.config.unet_config["block_out_channels"]) - 1)

    @property
    def default_size(self) -> int:
        return self.unet.config.unet_config["sample_size"] * vae_scale_factor(self.vae)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_image: float = 2.0,
        guidance_text: float = 7.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        fps: int | None = None,
        pin_known_frames: bool = True,
        last_image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        keyframes: dict | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> EmuVideoPipelineOutput | tuple:
        r"""
        Args:
            image: the first frame; one per prompt (PIL, uint8 `(H, W, 3)` array, or `(3, H, W)` in [-1, 1]).
                It is resized and centre-cropped to (height, width); what was done is logged.
            prompt: one text or a list, as many as images.
            negative_prompt: replaces the empty prompt of the unconditional branches.
            num_frames: frames to generate, the first being the image (default: the model's training length).
            height, width: pixels (default: the model's training size).
            num_inference_steps: sampler steps.
            guidance_image: w_i, the image guidance scale (paper: 2.0).
            guidance_text: w_p, the text guidance scale (paper: 7.5).
            generator: for reproducible noise.
            latents: `(B, C, T, h, w)` starting noise instead of drawing it from `generator`.
            fps: the frame rate the clip is meant for (returned, used when writing files).
            pin_known_frames: after every step, put the known frames' latents (noised to the next step's
                level) back, so the video passes exactly through the given images (up to the VAE) and the
                other frames are denoised against them. False: the known frames are the model's prediction.
            last_image: the last frame (one per prompt, like `image`): a video from `image` to it.
            keyframes: `{frame index: image}` (or `{index: [one image per prompt]}`); negative indices count
                from the end, as in Python. With `image` (frame 0) and `last_image`, at most one per index.
            output_type: "np", "pil", "pt" or "latent".
            return_dict: False returns `(frames,)`.
        """
        # 1. check inputs
        prompts = check_prompts(prompt)
        check_output_type(output_type)
        check_scale("guidance_image", guidance_image)
        check_scale("guidance_text", guidance_text)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        num_frames = self.config.default_num_frames if num_frames is None else num_frames
        if not isinstance(num_frames, int) or not 1 <= num_frames <= self.unet.config.max_frames:
            raise ValueError(f"num_frames must be between 1 and {self.unet.config.max_frames}, got {num_frames}")
        height, width = height or self.default_size, width or self.default_size
        check_size(height, width, self.size_multiple)
        warn_untrained_shape(height, width, self.default_size, num_frames, self.config.default_num_frames)
        known_images = known_frame_images(len(prompts), num_frames, image, last_image, keyframes)
        device, dtype = self._execution_device, self.unet.dtype

        # 2. encode the known frames into a conditioning video: their latents at their indices, zeros
        #    elsewhere, mask 1 there (paper §3.2; the same function builds training's conditioning)
        pixels = {}
        for index, images in known_images.items():
            batch = []
            for im in images:
                x, note = preprocess_image(im, height, width)
                logger.info("frame %d: %s", index, note)
                batch.append(x)
            pixels[index] = torch.cat(batch)  # (B, 3, H, W)
        indices = sorted(pixels)
        known_latents = encode_frames(self.vae, torch.stack([pixels[i] for i in indices], dim=2).to(device))
        b, c, _, h, w = known_latents.shape
        video = known_latents.new_zeros(b, c, num_frames, h, w)
        video[:, :, indices] = known_latents
        known = torch.zeros(num_frames, dtype=torch.bool, device=device)
        known[indices] = True
        conditioning, mask = known_frames_conditioning(video, known)

        # 3. encode prompts
        negatives = [negative_prompt or ""] * b if not isinstance(negative_prompt, list) else negative_prompt
        text = encode_prompt(self.tokenizer, self.text_encoder, negatives + prompts, device)
        text_uncond, text_cond = text.chunk(2)
        # One batch for the three guidance terms: X(∅), X(I), X(I, p).
        cond_3 = torch.cat([torch.zeros_like(conditioning), conditioning, conditioning]).to(dtype)
        mask_3 = torch.cat([torch.zeros_like(mask), mask, mask]).to(dtype)
        text_3 = torch.cat([text_uncond, text_uncond, text_cond]).to(dtype)

        # 4. timesteps and starting noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if latents is None:
            latents = randn_tensor(conditioning.shape, generator=generator, device=device, dtype=dtype)
        elif latents.shape != conditioning.shape:
            raise ValueError(f"latents must have shape {tuple(conditioning.shape)}, got {tuple(latents.shape)}")
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        pin = mask.to(dtype).expand_as(latents)  # 1 at known frames, for every channel
        pin_noise = randn_tensor(conditioning.shape, generator=generator, device=device, dtype=dtype)

        # 5. denoise
        for i, t in enumerate(self.progress_bar(timesteps)):
            x = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)
            out = self.unet(x, t, text_3, conditioning=cond_3, conditioning_mask=mask_3).sample
            x_none, x_image, x_full = out.chunk(3)
            guided = x_none + guidance_image * (x_image - x_none) + guidance_text * (x_full - x_image)
            latents = self.scheduler.step(guided, t, latents, **step_kwargs(self.scheduler, generator)).prev_sample
            if pin_known_frames:
                latents = pin_frames(self.scheduler, latents, conditioning, pin, pin_noise, timesteps, i)

        # 6. decode
        check_finite(latents, "the video latents")
        out_images = to_uint8(pixels[0][:, :, None])[:, 0]
        fps = fps or self.config.default_fps
        if output_type == "latent":
            frames = latents
        else:
            frames = frames_to_output(decode_frames(self.vae, latents), output_type)
        if not return_dict:
            return (frames,)
        return EmuVideoPipelineOutput(frames=frames, images=out_images, fps=fps)


def known_frame_images(batch: int, num_frames: int, image, last_image=None, keyframes: dict | None = None) -> dict:
    """`{frame index: [one image per prompt]}` from the first image, the last image and keyframes.

    Negative keyframe indices count from the end; an index outside the video or given twice is an error.
    """
    def per_prompt(what: str, value) -> list:
        images = value if isinstance(value, list) else [value]
        if len(images) != batch:
            raise ValueError(f"got {len(images)} {what} for {batch} prompts; pass one per prompt")
        return images

    known = {0: per_prompt("images", image)}
    extra = dict(keyframes or {})
    if last_image is not None:
        if num_frames < 2:
            raise ValueError(f"last_image needs num_frames >= 2, got {num_frames}")
        extra.setdefault(-1, None)
        if extra[-1] is not None or (num_frames - 1) in extra:
            raise ValueError(f"frame {num_frames - 1} is given twice (last_image and keyframes)")
        extra[-1] = last_image
    for index, value in extra.items():
        if not isinstance(index, int) or not -num_frames <= index < num_frames:
            raise ValueError(f"keyframe index must be an integer in [{-num_frames}, {num_frames - 1}], got {index!r}")
        position = index % num_frames
        if position in known:
            raise ValueError(f"frame {position} is given twice (keyframe {index})")
        known[position] = per_prompt(f"images for frame {index}", value)
    return known
