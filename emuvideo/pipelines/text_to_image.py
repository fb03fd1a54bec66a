"""Stage 1 of the factorization: text -> image (paper §3: the image model alone)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .common import (
    DEFAULT_STEPS,
    check_finite,
    check_output_type,
    check_prompts,
    check_scale,
    check_size,
    decode_frames,
    encode_prompt,
    frames_to_output,
    step_kwargs,
    vae_scale_factor,
    warn_untrained_shape,
)


@dataclass
class EmuImagePipelineOutput(BaseOutput):
    """images: `(B, H, W, 3)` uint8 ("np"), a list of B `PIL.Image`s ("pil"), `(B, 3, H, W)` in [-1, 1] ("pt")
    or latents `(B, C, h, w)` ("latent")."""

    images: np.ndarray | torch.Tensor | list[PIL.Image.Image]


class EmuTextToImagePipeline(DiffusionPipeline):
    r"""Text-to-image with classifier-free guidance: any diffusers T2I U-Net + VAE + text encoder.

    Components: `vae` (AutoencoderKL), `text_encoder` + `tokenizer` (CLIP, MiniLM, ... any encoder whose
    first output is token states), `unet` (UNet2DConditionModel), `scheduler`.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    @property
    def size_multiple(self) -> int:
        return vae_scale_factor(self.vae) * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        output_type: str = "np",
    ) -> EmuImagePipelineOutput:
        r"""
        Args:
            prompt: one text or a list (one image each).
            negative_prompt: replaces the empty prompt of the unconditional branch.
            height, width: pixels; default the U-Net's `sample_size` times the VAE factor.
            num_inference_steps: sampler steps.
            guidance_scale: classifier-free guidance w: X(∅) + w·(X(p) − X(∅)).
            generator: for reproducible noise.
            output_type: "np" (uint8 `(B, H, W, 3)`), "pil" (a list of `PIL.Image`), "pt" (`(B, 3, H, W)` in
                [-1, 1]) or "latent".
        Raises:
            ValueError on bad input; `NonFiniteOutputError` (a ValueError) if the model produces NaN/inf.
        """
        # 1. check inputs
        prompts = check_prompts(prompt)
        check_output_type(output_type)
        check_scale("guidance_scale", guidance_scale)
        scale = vae_scale_factor(self.vae)
        trained = self.unet.config.sample_size * scale
        height, width = height or trained, width or trained
        check_size(height, width, self.size_multiple)
        warn_untrained_shape(height, width, trained)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        b, device = len(prompts), self._execution_device

        # 2. encode prompts: [unconditional, conditional]
        negatives = [negative_prompt or ""] * b if not isinstance(negative_prompt, list) else negative_prompt
        text = encode_prompt(self.tokenizer, self.text_encoder, negatives + prompts, device).to(self.unet.dtype)

        # 3. timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (b, self.unet.config.in_channels, height // scale, width // scale)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma

        # 4. denoise
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            uncond, cond = self.unet(x, t, encoder_hidden_states=text).sample.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs(self.scheduler, generator)).prev_sample

        # 5. decode
        check_finite(latents, "the image latents")
        if output_type == "latent":
            return EmuImagePipelineOutput(images=latents)
        images = decode_frames(self.vae, latents[:, :, None])[:, :, 0]  # (B, 3, H, W)
        return EmuImagePipelineOutput(images=frames_to_output(images, output_type))
