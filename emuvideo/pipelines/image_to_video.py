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
from .common import (
    check_prompts,
    check_size,
    decode_frames,
    encode_frames,
    encode_prompt,
    preprocess_image,
    to_uint8,
    vae_scale_factor,
)

logger = logging.getLogger(__name__)


@dataclass
class EmuVideoPipelineOutput(BaseOutput):
    """frames: `(B, T, H, W, 3)` uint8 ("np"), `(B, 3, T, H, W)` in [-1, 1] ("pt") or latents ("latent").
    images: the conditioning images, `(B, H, W, 3)` uint8. fps: the frame rate the clip is meant to play at."""

    frames: np.ndarray | torch.Tensor
    images: np.ndarray | None = None
    fps: int | None = None


class EmuImageToVideoPipeline(DiffusionPipeline):
    r"""Image-to-video: animate a given first frame as the text says (`emuvideo animate`).

    The image latent is placed at frame 0 of an all-zero conditioning video with a mask that is 1 there
    (paper §3.2); guidance follows the paper's two-condition form
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
        num_inference_steps: int = 25,
        guidance_image: float = 2.0,
        guidance_text: float = 7.5,
        generator: torch.Generator | None = None,
        fps: int | None = None,
        pin_known_frames: bool = True,
        output_type: str = "np",
    ) -> EmuVideoPipelineOutput:
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
            fps: the frame rate the clip is meant for (returned, used when writing files).
            pin_known_frames: after every step, put the image's latent (noised to the next step's level)
                back at frame 0, so the video starts exactly at the input image (up to the VAE) and the
                other frames are denoised against it. False: frame 0 is the model's own prediction.
            output_type: "np", "pt" or "latent".
        """
        # 1. check inputs
        prompts = check_prompts(prompt)
        images = image if isinstance(image, list) else [image]
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one image per prompt")
        num_frames = self.config.default_num_frames if num_frames is None else num_frames
        if not isinstance(num_frames, int) or not 1 <= num_frames <= self.unet.config.max_frames:
            raise ValueError(f"num_frames must be between 1 and {self.unet.config.max_frames}, got {num_frames}")
        height, width = height or self.default_size, width or self.default_size
        check_size(height, width, self.size_multiple)
        device = self._execution_device

        # 2. encode the image into a conditioning video: latent at frame 0, zeros elsewhere, mask 1 at frame 0
        pixels = []
        for im in images:
            x, note = preprocess_image(im, height, width)
            logger.info(note)
            pixels.append(x)
        pixels = torch.cat(pixels)  # (B, 3, H, W)
        image_latents = encode_frames(self.vae, pixels[:, :, None].to(device))  # (B, C, 1, h, w)
        b, c, _, h, w = image_latents.shape
        conditioning = image_latents.new_zeros(b, c, num_frames, h, w)
        conditioning[:, :, :1] = image_latents
        mask = image_latents.new_zeros(b, 1, num_frames, h, w)
        mask[:, :, 0] = 1.0

        # 3. encode prompts
        negatives = [negative_prompt or ""] * b if not isinstance(negative_prompt, list) else negative_prompt
        text = encode_prompt(self.tokenizer, self.text_encoder, negatives + prompts, device)
        text_uncond, text_cond = text.chunk(2)

        # 4. sample
        latents = self.sample(
            conditioning, mask, text_cond, text_uncond, num_inference_steps, guidance_image, guidance_text,
            generator, pin_known_frames=pin_known_frames,
        )

        # 5. decode
        out_images = to_uint8(pixels[:, :, None])[:, 0]
        fps = fps or self.config.default_fps
        if output_type == "latent":
            return EmuVideoPipelineOutput(frames=latents, images=out_images, fps=fps)
        frames = decode_frames(self.vae, latents)
        if output_type == "pt":
            return EmuVideoPipelineOutput(frames=frames, images=out_images, fps=fps)
        return EmuVideoPipelineOutput(frames=to_uint8(frames), images=out_images, fps=fps)

    def sample(
        self,
        conditioning: torch.Tensor,
        mask: torch.Tensor,
        text_cond: torch.Tensor,
        text_uncond: torch.Tensor,
        num_inference_steps: int,
        guidance_image: float,
        guidance_text: float,
        generator: torch.Generator | None = None,
        pin_known_frames: bool = True,
    ) -> torch.Tensor:
        r"""The denoising loop, given known-frame latents and their mask (frame interpolation reuses it).

        Args:
            conditioning: `(B, C, T, h, w)` latents of the known frames, zeros elsewhere.
            mask: `(B, 1, T, h, w)`, 1 at known frames.
            text_cond, text_uncond: `(B, L, D)` prompt and negative/empty prompt states.
            pin_known_frames: replace the known frames' latents after every step by the conditioning
                latents noised to the next step's level (the clean latents after the last step).
        Returns:
            latents `(B, C, T, h, w)`.
        """
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        device, dtype = conditioning.device, self.unet.dtype
        # One batch for the three guidance terms: X(∅), X(I), X(I, p).
        zeros = torch.zeros_like(conditioning)
        cond_3 = torch.cat([zeros, conditioning, conditioning]).to(dtype)
        mask_3 = torch.cat([torch.zeros_like(mask), mask, mask]).to(dtype)
        text_3 = torch.cat([text_uncond, text_uncond, text_cond]).to(dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = randn_tensor(conditioning.shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        known = mask.to(dtype).expand_as(latents)  # 1 at known frames, for every channel
        pin_noise = randn_tensor(conditioning.shape, generator=generator, device=device, dtype=dtype)
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(self.progress_bar(timesteps)):
            x = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)
            out = self.unet(x, t, text_3, conditioning=cond_3, conditioning_mask=mask_3).sample
            x_none, x_image, x_full = out.chunk(3)
            guided = x_none + guidance_image * (x_image - x_none) + guidance_text * (x_full - x_image)
            latents = self.scheduler.step(guided, t, latents, generator=generator).prev_sample
            if pin_known_frames:
                if i + 1 < len(timesteps):
                    target = self.scheduler.add_noise(conditioning.to(dtype), pin_noise, timesteps[i + 1 : i + 2])
                else:
                    target = conditioning.to(dtype)
                latents = known * target + (1 - known) * latents
        return latents
