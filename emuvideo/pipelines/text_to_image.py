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
    VaeSlicingMixin,
    check_finite,
    check_output_type,
    check_scale,
    check_size,
    decode_frames,
    postprocess,
    prompt_embeddings,
    vae_scale_factor,
    warn_untrained_shape,
)
from .sampling import check_callback, denoise


@dataclass
class EmuImagePipelineOutput(BaseOutput):
    """images: `(B, H, W, 3)` float32 in [0, 1] ("np"), a list of B `PIL.Image`s ("pil"), `(B, 3, H, W)` in [0, 1]
    ("pt") or latents `(B, C, h, w)` ("latent"), as diffusers' image pipelines give them."""

    images: np.ndarray | torch.Tensor | list[PIL.Image.Image]


class EmuTextToImagePipeline(DiffusionPipeline, VaeSlicingMixin):
    r"""Text-to-image with classifier-free guidance: any diffusers T2I U-Net + VAE + text encoder.

    Components: `vae` (AutoencoderKL), `text_encoder` + `tokenizer` (CLIP, MiniLM, ... any encoder whose
    first output is token states), `unet` (UNet2DConditionModel), `scheduler`.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vae: AutoencoderKL, text_encoder, tokenizer, unet: UNet2DConditionModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    @property
    def size_multiple(self) -> int:
        return vae_scale_factor(self.vae) * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> EmuImagePipelineOutput | tuple:
        r"""
        Args:
            prompt: one text or a list (one image each); or `prompt_embeds`.
            negative_prompt: replaces the empty prompt of the unconditional branch; or `negative_prompt_embeds`.
            height, width: pixels; default the U-Net's `sample_size` times the VAE factor.
            num_inference_steps: sampler steps.
            guidance_scale: classifier-free guidance w: X(∅) + w·(X(p) − X(∅)).
            num_images_per_prompt: images per prompt (each prompt's in a row).
            generator: for reproducible noise (or a list, one per image).
            latents: `(B, C, h, w)` starting noise instead of drawing it from `generator`.
            prompt_embeds, negative_prompt_embeds: `(B, L, D)` text-encoder states instead of the texts.
            output_type: "np" (float32 `(B, H, W, 3)` in [0, 1]), "pil" (a list of `PIL.Image`), "pt"
                (`(B, 3, H, W)` in [0, 1]) or "latent".
            return_dict: False returns `(images,)`.
            callback_on_step_end: `f(pipe, step, t, {"latents": ...}) -> dict` after every step, as in diffusers.
            callback_on_step_end_tensor_inputs: the tensors it gets (of `_callback_tensor_inputs`).
        Raises:
            ValueError on bad input; `NonFiniteOutputError` (a ValueError) if the model produces NaN/inf.
        """
        # 1. check inputs
        check_output_type(output_type)
        check_scale("guidance_scale", guidance_scale)
        tensor_inputs = check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        scale = vae_scale_factor(self.vae)
        trained = self.unet.config.sample_size * scale
        height, width = height or trained, width or trained
        check_size(height, width, self.size_multiple)
        warn_untrained_shape(height, width, trained)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

        # 2. encode prompts: [unconditional, conditional]
        negative, positive = prompt_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                               num_images_per_prompt)
        text = torch.cat([negative, positive]).to(self.unet.dtype)
        b, device = len(positive), self._execution_device

        # 3. timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (b, self.unet.config.in_channels, height // scale, width // scale)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device, self.unet.dtype) * self.scheduler.init_noise_sigma

        # 4. denoise
        latents = denoise(self, latents, self.scheduler.timesteps, (guidance_scale,), text, generator,
                          callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs)

        # 5. decode
        check_finite(latents, "the image latents")
        if output_type == "latent":
            images = latents
        else:
            images = postprocess(decode_frames(self.vae, latents[:, :, None])[:, :, 0], output_type)  # from (B, 3, H, W)
        self.maybe_free_model_hooks()
        return EmuImagePipelineOutput(images=images) if return_dict else (images,)
