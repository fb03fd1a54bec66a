"""Frame interpolation (paper §3.2): a video's frame rate multiplied by a second video U-Net.

The interpolation model has the video U-Net's architecture and was initialised from the video model; it
sees key frames zero-interleaved in time plus the mask (every `factor`-th frame of its window known), the
key frames noise-augmented to a fixed t (paper: 100). A clip longer than one window is interpolated in
overlapping windows that share their end key frames; the overlap is trimmed and the windows joined.
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange

from ..models.conditioning import keyframe_indices, known_frames_conditioning
from ..models.video_unet import EmuVideoUNet
from ..preprocessing import check_unit_floats, to_pixels, to_rgb
from .common import (
    INTERPOLATION_STEPS,
    VaeSlicingMixin,
    check_finite,
    check_output_type,
    check_scale,
    decode_frames,
    encode_frames,
    pin_known_frames,
    postprocess,
    prompt_embeddings,
    vae_scale_factor,
)
from .image_to_video import EmuVideoPipelineOutput
from .sampling import check_callback, denoise

logger = logging.getLogger(__name__)


def window_starts(num_keyframes: int, keys_per_window: int) -> list[int]:
    """First key frame of each window: windows of `keys_per_window` keys sharing their end keys, the last
    one moved back to end at the last key frame (its overlap with the one before is trimmed)."""
    if num_keyframes <= keys_per_window:
        return [0]
    step = keys_per_window - 1
    starts = list(range(0, num_keyframes - keys_per_window + 1, step))
    if starts[-1] + keys_per_window < num_keyframes:
        starts.append(num_keyframes - keys_per_window)
    return starts


class EmuInterpolationPipeline(DiffusionPipeline, VaeSlicingMixin):
    r"""Multiply a clip's frame rate by `factor`: `(K-1)·factor + 1` frames from K, the K key frames kept.

    Components: `vae`, `text_encoder`, `tokenizer`, `unet` (the interpolation `EmuVideoUNet`), `scheduler`.
    Config: `window` (output frames one U-Net call makes), `factors` (those the model was trained for),
    `noise_aug_t` (the key frames' noise level at inference, paper: 100).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents"]

    # Copied from emuvideo.pipelines.image_to_video.EmuImageToVideoPipeline.__init__ (components), with its own config
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: EmuVideoUNet,
        scheduler: SchedulerMixin,
        window: int = 9,
        factors: tuple[int, ...] = (2, 4),
        noise_aug_t: int = 100,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(window=window, factors=list(factors), noise_aug_t=noise_aug_t)

    @property
    def size(self) -> int:
        """The frame side (pixels) the model was trained at; clips of another size are refused."""
        return self.unet.config.unet_config["sample_size"] * vae_scale_factor(self.vae)

    @torch.no_grad()
    def __call__(
        self,
        video: np.ndarray | torch.Tensor | list | None,
        prompt: str | list[str] | None = None,
        factor: int = 2,
        num_inference_steps: int = INTERPOLATION_STEPS,
        guidance_text: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        fps: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        video_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
    ) -> EmuVideoPipelineOutput | tuple:
        r"""
        Args:
            video: the key frames, as the video pipelines give them (diffusers' conventions): `(T, H, W, 3)` or
                `(B, T, H, W, 3)` arrays, uint8 or float in [0, 1]; `(T, 3, H, W)` or `(B, T, 3, H, W)` tensors in
                [0, 1]; a list of T `PIL.Image`s or B such lists. H = W = the model's size.
            prompt: what the clip shows (one per video; "" works too: the model trained with dropped text); None:
                "" for every video, or `prompt_embeds`.
            factor: frame-rate multiplier, one of `config.factors`.
            num_inference_steps: sampler steps.
            guidance_text: classifier-free guidance on the prompt (1.0: none, one U-Net pass per step).
            generator: for reproducible noise (or a list, one per video).
            latents: `(W·B, C, window_frames, h, w)` starting noise for the W windows (window-major), instead
                of `generator`; the key frames' augmentation and re-noising use it too, so that the call no
                longer depends on `generator`.
            fps: the key frames' rate; the output's is `fps * factor` (returned in `fps`).
            output_type: "np", "pil", "pt" or "latent" (latents are per window, not joined).
            return_dict: False returns `(frames,)`.
            callback_on_step_end: `f(pipe, step, t, {"latents": ...}) -> dict` after every step, as in diffusers.
            callback_on_step_end_tensor_inputs: the tensors it gets (of `_callback_tensor_inputs`).
            video_latents: instead of `video`, the key frames as latents `(B, C, T, h, w)` (an image-to-video
                call's `output_type="latent"`), decoded here: the pixels that call would have given, exactly.
            prompt_embeds: instead of `prompt`, text-encoder states `(B, L, D)`, one per video (e.g. those the video
                stage was sampled with); the unconditional branch (guidance_text != 1) is "" either way.
        Returns:
            frames of `(T-1)·factor + 1` frames; frame `i·factor` is key frame `i`, exactly as given.
        """
        # 1. check inputs
        check_output_type(output_type)
        check_scale("guidance_text", guidance_text)
        if factor not in self.config.factors:
            raise ValueError(f"factor must be one of {self.config.factors} (those the model was trained for), got {factor!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        tensor_inputs = check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        if (video is None) == (video_latents is None):
            raise ValueError("pass exactly one of video and video_latents, got " + ("both" if video is not None else "neither"))
        if video_latents is None:
            keys = self._key_pixels(video)
        else:  # the pixels the image-to-video call would have given
            keys = _checked_keys(decode_frames(self.vae, video_latents), self.size)
        b, _, t, height, width = keys.shape
        if t < 2:
            raise ValueError(f"a clip to interpolate needs at least 2 frames, got {t}")
        if prompt_embeds is None:
            prompt = [prompt or ""] * b if prompt is None or isinstance(prompt, str) else list(prompt)
            if len(prompt) != b:
                raise ValueError(f"got {len(prompt)} prompts for {b} videos; pass one per video")
        # (negative, positive) `(B, L, D)`: "" and each video's prompt, encoded in one batch (or the given states)
        text_uncond, text_cond = prompt_embeddings(self, prompt, None, prompt_embeds, None, allow_empty=True)
        if len(text_cond) != b:
            raise ValueError(f"got {len(text_cond)} prompt_embeds for {b} videos; pass one per video")
        device, dtype = self._execution_device, self.unet.dtype

        # 2. windows of key frames, zero-interleaved in time, mask 1 at the key frames (paper §3.2)
        keys_per_window = (self.config.window - 1) // factor + 1
        starts = window_starts(t, keys_per_window)
        k = min(keys_per_window, t)
        key_latents = encode_frames(self.vae, keys.to(device))  # (B, C, T, h, w)
        windows = torch.cat([key_latents[:, :, s : s + k] for s in starts])  # (W·B, C, k, h, w), window-major
        at = keyframe_indices(k, factor)
        frames_per_window = at[-1] + 1
        video = windows.new_zeros(*windows.shape[:2], frames_per_window, *windows.shape[3:])
        video[:, :, at] = windows
        known = torch.zeros(frames_per_window, dtype=torch.bool, device=device)
        known[at] = True
        clean, mask = known_frames_conditioning(video, known)
        if isinstance(generator, list):  # one per video: each of its windows draws from it, window-major
            if len(generator) != b:
                raise ValueError(f"got {len(generator)} generators for {b} videos; pass one per video")
            generator = generator * len(starts)
        # the key frames noise-augmented to a fixed level (paper: t = 100 at inference, U[0, 250] in training)
        t_aug = torch.full((clean.shape[0],), self.config.noise_aug_t, device=device, dtype=torch.long)
        if latents is not None and latents.shape != clean.shape:
            raise ValueError(f"latents must have shape {tuple(clean.shape)}, got {tuple(latents.shape)}")
        draw = latents is None
        aug_noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=clean.dtype) if draw else latents.to(clean)
        conditioning = self.scheduler.add_noise(clean, aug_noise, t_aug) * mask

        # 3. the prompts' states, one per window
        text_uncond, text_cond = (part.to(dtype).repeat(len(starts), 1, 1) for part in (text_uncond, text_cond))
        guided = guidance_text != 1.0
        cond_in = torch.cat([conditioning] * (2 if guided else 1)).to(dtype)
        mask_in = torch.cat([mask] * (2 if guided else 1)).to(dtype)
        text_in = torch.cat([text_uncond, text_cond]) if guided else text_cond

        # 4. timesteps and starting noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if draw:
            latents = randn_tensor(clean.shape, generator=generator, device=device, dtype=dtype)
        pin = mask.to(dtype).expand_as(latents)
        pin_noise = randn_tensor(clean.shape, generator=generator, device=device, dtype=dtype) if draw else latents.to(device, dtype)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma

        def put_back_key_frames(latents, i):
            return pin_known_frames(self.scheduler, latents, clean, pin, pin_noise, timesteps, i)

        # 5. denoise
        latents = denoise(self, latents, timesteps, (guidance_text,) if guided else (), text_in, generator,
                          after_step=put_back_key_frames, callback_on_step_end=callback_on_step_end,
                          callback_on_step_end_tensor_inputs=tensor_inputs,
                          conditioning=cond_in, conditioning_mask=mask_in)

        # 6. decode, join the windows (overlap trimmed), put the key frames back exactly as given
        check_finite(latents, "the interpolated latents")
        out_fps = (fps or 0) * factor or None
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return (latents,) if not return_dict else EmuVideoPipelineOutput(frames=latents, fps=out_fps)
        decoded = rearrange(decode_frames(self.vae, latents), "(w b) c t h1 w1 -> w b c t h1 w1", b=b)
        total = (t - 1) * factor + 1
        frames = keys.new_zeros(b, 3, total, height, width)
        filled = torch.zeros(total, dtype=torch.bool)
        for window, start in zip(decoded, starts):
            first = start * factor
            span = torch.arange(first, first + frames_per_window)
            new = ~filled[span]
            frames[:, :, span[new]] = window[:, :, new.nonzero().flatten()].to(frames)
            filled[span] = True
        frames[:, :, ::factor] = keys  # key frames kept
        frames = postprocess(frames, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return EmuVideoPipelineOutput(frames=frames, fps=out_fps)

    def _key_pixels(self, video) -> torch.Tensor:
        """The key frames given as `video` (see `__call__`) as `(B, 3, T, H, W)` in [-1, 1], checked against the
        model's size; converted as `emuvideo.preprocessing` converts images and clips."""
        if isinstance(video, list):
            videos = video if video and isinstance(video[0], list) else [video]
            video = np.stack([[np.asarray(to_rgb(f) if isinstance(f, PIL.Image.Image) else f) for f in v] for v in videos])
        if isinstance(video, np.ndarray):
            if video.dtype not in (np.uint8, np.float32, np.float64) or video.ndim not in (4, 5) or video.shape[-1] != 3:
                raise ValueError(f"video must be uint8 or float (T, H, W, 3) or (B, T, H, W, 3), got {video.dtype} {video.shape}")
            videos = video if video.ndim == 5 else video[None]
            if video.dtype == np.uint8:  # as a dataset item; all frames at once: a view of (B, T, H, W, 3) memory
                frames = to_pixels(videos.reshape(-1, *videos.shape[2:]))  # (3, B·T, H, W)
                video = rearrange(frames, "c (b t) h w -> b c t h w", b=len(videos))
            else:  # diffusers' "np" video: float in [0, 1], refused otherwise as `array_to_image` refuses an image
                check_unit_floats(videos, "a float video array")
                video = rearrange(torch.from_numpy(np.ascontiguousarray(videos)).float() * 2 - 1, "b t h w c -> b c t h w")
        elif isinstance(video, torch.Tensor):  # diffusers' "pt" video: (B, T, 3, H, W) in [0, 1]
            if video.ndim not in (4, 5) or video.shape[-3] != 3:
                raise ValueError(f"video tensor must be (B, T, 3, H, W) or (T, 3, H, W) in [0, 1], got {tuple(video.shape)}")
            video = rearrange(video if video.ndim == 5 else video[None], "b t c h w -> b c t h w").float() * 2 - 1
        return _checked_keys(video, self.size)


def _checked_keys(video, size: int) -> torch.Tensor:
    """Key frames `(B, 3, T, H, W)` in [-1, 1] as float32, refused unless `size` x `size`."""
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video must be frames (B, T, H, W, 3) or latents (B, C, T, h, w), got {shape}")
    h, w = video.shape[-2:]
    if (h, w) != (size, size):
        raise ValueError(f"the interpolation model works on {size}x{size} clips, got {w}x{h}")
    return video.float().clamp(-1, 1)
