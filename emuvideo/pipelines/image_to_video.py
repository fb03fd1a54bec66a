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
    VaeSlicingMixin,
    check_finite,
    check_output_type,
    check_scale,
    check_size,
    decode_frames,
    encode_frames,
    pin_known_frames as pin_frames,
    postprocess,
    preprocess_image,
    prompt_embeddings,
    vae_scale_factor,
    warn_untrained_shape,
)
from .sampling import check_callback, denoise

logger = logging.getLogger(__name__)


@dataclass
class EmuVideoPipelineOutput(BaseOutput):
    """frames, as diffusers' video pipelines give them (`VideoProcessor.postprocess_video`): float32
    `(B, T, H, W, 3)` in [0, 1] ("np"), B lists of T `PIL.Image` ("pil"), `(B, T, 3, H, W)` in [0, 1] ("pt"), or
    latents `(B, C, T, h, w)` ("latent").
    images: the first frames given or generated, float32 `(B, H, W, 3)` in [0, 1] (diffusers' "np") whatever
    the output_type; None without a first frame.
    fps: the frame rate the clip is meant to play at."""

    frames: np.ndarray | torch.Tensor | list
    images: np.ndarray | torch.Tensor | list | None = None
    fps: int | None = None


class EmuImageToVideoPipeline(DiffusionPipeline, VaeSlicingMixin):
    r"""Image-to-video: animate a given first frame as the text says (`emuvideo animate`).

    The image latent is placed at frame 0 of an all-zero conditioning video with a mask that is 1 there
    (paper §3.2). The same conditioning knows any set of frames: `last_image` (a video from one image to
    another) and `keyframes` (images at given frame indices) are placed the same way, each with its mask
    (`emuvideo.models.conditioning`, which training uses too). Guidance follows the paper's two-condition form
    X̃ = X(∅) + w_i·(X(I) − X(∅)) + w_p·(X(I, p) − X(I)), the three terms in one batched forward.

    With no known frame (`image=None`, no `last_image` or `keyframes`) it is direct text-to-video: the
    condition all zeros, mask 0, as training gives a sample whose image is dropped; X(I) = X(∅), so the
    guidance is X(∅) + w_p·(X(p) − X(∅)), two terms per step.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

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
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_image: float = 2.0,
        guidance_text: float = 7.5,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        fps: int | None = None,
        pin_known_frames: bool = True,
        last_image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        keyframes: dict | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> EmuVideoPipelineOutput | tuple:
        r"""
        Args:
            image: the first frame; one per prompt (PIL, uint8 `(H, W, 3)` array, or `(3, H, W)` in [-1, 1]).
                It is resized and centre-cropped to (height, width); what was done is logged. None: no first
                frame (direct text-to-video when no other frame is known either).
            prompt: one text or a list, as many as images; or `prompt_embeds`.
            negative_prompt: replaces the empty prompt of the unconditional branches; or `negative_prompt_embeds`.
            num_frames: frames to generate, the first being the image (default: the model's training length).
            height, width: pixels (default: the model's training size).
            num_inference_steps: sampler steps.
            guidance_image: w_i, the image guidance scale (paper: 2.0).
            guidance_text: w_p, the text guidance scale (paper: 7.5).
            num_videos_per_prompt: videos per prompt (each prompt's in a row, from the same known frames).
            generator: for reproducible noise (or a list, one per video).
            latents: `(B, C, T, h, w)` starting noise instead of drawing it from `generator`; the known frames
                are re-noised with it too, so that with DDIM the call no longer depends on `generator`.
            prompt_embeds, negative_prompt_embeds: `(B, L, D)` text-encoder states instead of the texts.
            fps: the frame rate the clip is meant for (returned, used when writing files).
            pin_known_frames: after every step, put the known frames' latents (noised to the next step's
                level) back, so the video passes exactly through the given images (up to the VAE) and the
                other frames are denoised against them. False: the known frames are the model's prediction.
            last_image: the last frame (one per prompt, like `image`): a video from `image` to it.
            keyframes: `{frame index: image}` (or `{index: [one image per prompt]}`); negative indices count
                from the end, as in Python. With `image` (frame 0) and `last_image`, at most one per index.
            output_type: "np", "pil", "pt" or "latent" (see `EmuVideoPipelineOutput`).
            return_dict: False returns `(frames,)`.
            callback_on_step_end: `f(pipe, step, t, {"latents": ...}) -> dict` after every step, as in diffusers.
            callback_on_step_end_tensor_inputs: the tensors it gets (of `_callback_tensor_inputs`).
        """
        # 1. check inputs
        check_output_type(output_type)
        check_scale("guidance_image", guidance_image)
        check_scale("guidance_text", guidance_text)
        tensor_inputs = check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        num_frames = self.config.default_num_frames if num_frames is None else num_frames
        if not isinstance(num_frames, int) or not 1 <= num_frames <= self.unet.config.max_frames:
            raise ValueError(f"num_frames must be between 1 and {self.unet.config.max_frames}, got {num_frames}")
        height, width = height or self.default_size, width or self.default_size
        check_size(height, width, self.size_multiple)
        warn_untrained_shape(height, width, self.default_size, num_frames, self.config.default_num_frames)
        negative, positive = prompt_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                               num_videos_per_prompt)
        b = len(positive) // num_videos_per_prompt  # prompts
        known_images = known_frame_images(b, num_frames, image, last_image, keyframes)
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
            # (B, 3, H, W), one per prompt; contiguous: the VAE sees the layout (hence gives the numbers) it always did
            pixels[index] = torch.cat(batch).contiguous()
        indices = sorted(pixels)
        scale = vae_scale_factor(self.vae)
        video = torch.zeros(len(positive), self.vae.config.latent_channels, num_frames, height // scale,
                            width // scale, device=device, dtype=self.vae.dtype)
        if indices:  # each prompt's images encoded once (the posterior mode: deterministic), then one per video
            known_latents = encode_frames(self.vae, torch.stack([pixels[i] for i in indices], dim=2).to(device))
            video[:, :, indices] = known_latents.repeat_interleave(num_videos_per_prompt, dim=0)
        known = torch.zeros(num_frames, dtype=torch.bool, device=device)
        known[indices] = True
        conditioning, mask = known_frames_conditioning(video, known)

        # 3. the guidance terms in one batch: X(∅), X(I), X(I, p); with no known frame X(I) = X(∅): X(∅), X(p)
        if indices:
            scales = (guidance_image, guidance_text)
            cond_in = torch.cat([torch.zeros_like(conditioning), conditioning, conditioning]).to(dtype)
            mask_in = torch.cat([torch.zeros_like(mask), mask, mask]).to(dtype)
            text_in = torch.cat([negative, negative, positive]).to(dtype)
        else:
            scales = (guidance_text,)
            cond_in, mask_in = torch.cat([conditioning] * 2).to(dtype), torch.cat([mask] * 2).to(dtype)
            text_in = torch.cat([negative, positive]).to(dtype)

        # 4. timesteps and starting noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if latents is None:
            latents = randn_tensor(conditioning.shape, generator=generator, device=device, dtype=dtype)
            pin_noise = randn_tensor(conditioning.shape, generator=generator, device=device, dtype=dtype) if indices else None
        elif latents.shape != conditioning.shape:
            raise ValueError(f"latents must have shape {tuple(conditioning.shape)}, got {tuple(latents.shape)}")
        else:
            pin_noise = latents.to(device, dtype)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        pin = mask.to(dtype).expand_as(latents)  # 1 at known frames, for every channel

        def put_back_known_frames(latents, i):
            return pin_frames(self.scheduler, latents, conditioning, pin, pin_noise, timesteps, i)

        # 5. denoise
        latents = denoise(self, latents, timesteps, scales, text_in, generator,
                          after_step=put_back_known_frames if pin_known_frames and indices else None,
                          callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
                          conditioning=cond_in, conditioning_mask=mask_in)

        # 6. decode
        check_finite(latents, "the video latents")
        fps = fps or self.config.default_fps
        first = postprocess(pixels[0].repeat_interleave(num_videos_per_prompt, dim=0), "np") if 0 in pixels else None
        frames = latents if output_type == "latent" else postprocess(decode_frames(self.vae, latents), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return EmuVideoPipelineOutput(frames=frames, images=first, fps=fps)


def known_frame_images(batch: int, num_frames: int, image, last_image=None, keyframes: dict | None = None) -> dict:
    """`{frame index: [one image per prompt]}` from the first image, the last image and keyframes.

    Negative keyframe indices count from the end; an index outside the video or given twice is an error.
    """
    def per_prompt(what: str, value) -> list:
        images = value if isinstance(value, list) else [value]
        if len(images) != batch:
            raise ValueError(f"got {len(images)} {what} for {batch} prompts; pass one per prompt")
        return images

    known = {} if image is None else {0: per_prompt("images", image)}
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
