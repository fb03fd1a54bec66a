"""The factorized text-to-video pipeline: text -> image -> video (paper §3)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel

from ..loaders.lora_pipeline import EmuVideoLoraLoaderMixin
from ..models.attention import set_attention
from ..models.video_unet import EmuVideoUNet
from ..schedules import make_sampler, sampler_name
from .common import DEFAULT_STEPS, check_output_type
from .image_to_video import EmuImageToVideoPipeline, EmuVideoPipelineOutput
from .interpolation import EmuInterpolationPipeline
from .text_to_image import EmuTextToImagePipeline


INTERPOLATION_DEFAULTS = {"window": 9, "factors": [2, 4], "noise_aug_t": 100}


class EmuVideoPipeline(DiffusionPipeline, EmuVideoLoraLoaderMixin):
    r"""Emu Video: generate an image from the text, then a video from the image and the text.

    Components: `vae`, `text_encoder`, `tokenizer` (shared by both stages), `image_unet` + `image_scheduler`
    (the text-to-image stage), `unet` (an `EmuVideoUNet` inflated from `image_unet`) + `scheduler`
    (the image-to-video stage). `text_to_image` and `image_to_video` give each stage as its own pipeline,
    sharing these modules (no copies).

    Optional: `interpolation_unet`, the frame-interpolation model (paper §3.2), used by `interpolation`
    (an `EmuInterpolationPipeline` sharing these modules) and by `interpolate=` here.

    LoRAs: `load_lora_weights` (video U-Net), `load_image_lora_weights` (image U-Net, any Stable Diffusion
    LoRA), `set_adapters`, `fuse_lora` (see `emuvideo.loaders.lora_pipeline`).

    Samplers: `set_sampler("dpm++")`, or as in diffusers, `pipe.scheduler = DPMSolverMultistepScheduler.from_config(
    pipe.scheduler.config)` (the video stage; `pipe.image_scheduler` is the image stage's). Attention kernels:
    `set_attention("math")`.
    """

    model_cpu_offload_seq = "text_encoder->image_unet->unet->interpolation_unet->vae"
    _optional_components = ["interpolation_unet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        image_unet: UNet2DConditionModel,
        image_scheduler: SchedulerMixin,
        unet: EmuVideoUNet,
        scheduler: SchedulerMixin,
        default_fps: int = 8,
        default_num_frames: int = 16,
        interpolation_unet: EmuVideoUNet | None = None,
        interpolation: dict | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            image_unet=image_unet,
            image_scheduler=image_scheduler,
            unet=unet,
            scheduler=scheduler,
            interpolation_unet=interpolation_unet,
        )
        self.register_to_config(
            default_fps=default_fps,
            default_num_frames=default_num_frames,
            # the interpolation model's settings (`EmuInterpolationPipeline`'s config): one dict, so that no
            # list sits at the top of model_index.json, where diffusers reads lists as components
            interpolation={**INTERPOLATION_DEFAULTS, **(interpolation or {})},
        )

    def set_sampler(self, name: str, stage: str = "both") -> None:
        """Sample with `name`, a key of `emuvideo.schedules.SAMPLERS` ("ddim", "dpm++", "unipc", "euler").

        stage: "both", "video" (the video stage and interpolation: `scheduler`) or "image" (`image_scheduler`).
        Each new sampler keeps its stage's schedule (β, prediction type, zero terminal SNR; `make_sampler`).
        """
        if stage not in ("both", "video", "image"):
            raise ValueError(f"stage must be 'both', 'video' or 'image', got {stage!r}")
        if stage in ("both", "video"):
            self.scheduler = make_sampler(name, self.scheduler.config)
        if stage in ("both", "image"):
            self.image_scheduler = make_sampler(name, self.image_scheduler.config)

    def set_attention(self, backend: str) -> str:
        """Every U-Net's and the VAE's attention layers on `backend` ("auto", "sdpa", "xformers", "math"; see
        `emuvideo.models.attention`); returns the backend in use. The text encoder keeps its own."""
        models = [m for m in (self.image_unet, self.unet, self.interpolation_unet, self.vae) if m is not None]
        return [set_attention(m, backend, self._execution_device) for m in models][0]

    @property
    def text_to_image(self) -> EmuTextToImagePipeline:
        pipe = EmuTextToImagePipeline(self.vae, self.text_encoder, self.tokenizer, self.image_unet, self.image_scheduler)
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @property
    def image_to_video(self) -> EmuImageToVideoPipeline:
        pipe = EmuImageToVideoPipeline(
            self.vae,
            self.text_encoder,
            self.tokenizer,
            self.unet,
            self.scheduler,
            default_fps=self.config.default_fps,
            default_num_frames=self.config.default_num_frames,
        )
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @property
    def interpolation(self) -> EmuInterpolationPipeline:
        if self.interpolation_unet is None:
            raise ValueError("this model has no interpolation_unet (train one with configs/stages/07_interpolation.yaml)")
        if sampler_name(self.scheduler) != "ddim":
            # its key frames are noise-augmented with the scheduler's add_noise at a fixed t, which only the
            # DDPM-space samplers (DDIM) define for any t; the others look t up in their own schedule
            raise ValueError(f"interpolation samples with ddim only, got {type(self.scheduler).__name__}; "
                             "set_sampler(name, stage='image') leaves the video stage on ddim")
        pipe = EmuInterpolationPipeline(
            self.vae,
            self.text_encoder,
            self.tokenizer,
            self.interpolation_unet,
            self.scheduler,
            window=self.config.interpolation["window"],
            factors=tuple(self.config.interpolation["factors"]),
            noise_aug_t=self.config.interpolation["noise_aug_t"],
        )
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        image_num_inference_steps: int | None = None,
        image_guidance_scale: float = 7.5,
        guidance_image: float = 2.0,
        guidance_text: float = 7.5,
        generator: torch.Generator | None = None,
        fps: int | None = None,
        pin_known_frames: bool = True,
        interpolate: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> EmuVideoPipelineOutput | tuple:
        r"""
        Args:
            prompt: one text or a list (one video each).
            negative_prompt: used by both stages' unconditional branches.
            num_frames, height, width, fps: as in `EmuImageToVideoPipeline`.
            num_inference_steps: sampler steps of the video stage (and of the image stage unless
                `image_num_inference_steps` is given).
            image_guidance_scale: classifier-free guidance of the text-to-image stage.
            guidance_image, guidance_text: w_i and w_p of the video stage (paper: 2.0 and 7.5).
            generator: for reproducible noise (the image stage draws first, then the video stage).
            pin_known_frames: keep frame 0 at the generated image (see `EmuImageToVideoPipeline`).
            interpolate: multiply the frame rate by this factor with the interpolation model (the frame
                count becomes `(num_frames - 1) * interpolate + 1`, key frames kept, fps times the factor).
            output_type: "np", "pil", "pt" or "latent".
            return_dict: False returns `(frames,)`.
        Returns:
            `EmuVideoPipelineOutput` with the frames and the generated first-frame images.
        """
        check_output_type(output_type)
        if interpolate is not None:
            interpolation = self.interpolation  # fails now, not after sampling, if the model has none
            if interpolate not in interpolation.config.factors:
                raise ValueError(f"interpolate must be one of {interpolation.config.factors}, got {interpolate!r}")
        # 1. text -> image
        images = self.text_to_image(
            prompt,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            num_inference_steps=image_num_inference_steps or num_inference_steps,
            guidance_scale=image_guidance_scale,
            generator=generator,
            output_type="pt",
        ).images  # (B, 3, H, W) in [-1, 1]

        # 2. (image, text) -> video
        video = self.image_to_video(
            list(images),
            prompt,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            height=images.shape[-2],
            width=images.shape[-1],
            num_inference_steps=num_inference_steps,
            guidance_image=guidance_image,
            guidance_text=guidance_text,
            generator=generator,
            fps=fps,
            pin_known_frames=pin_known_frames,
            output_type="pt" if interpolate else output_type,
        )
        if interpolate:  # 3. raise the frame rate (paper §3.2)
            frames = interpolation(
                video.frames, prompt, factor=interpolate, num_inference_steps=num_inference_steps,
                generator=generator, fps=video.fps, output_type=output_type,
            )
            video = EmuVideoPipelineOutput(frames=frames.frames, images=video.images, fps=frames.fps)
        return video if return_dict else (video.frames,)
