"""LoRA on `EmuVideoPipeline` the diffusers way: `pipe.load_lora_weights`, `set_adapters`, `fuse_lora`.

Two U-Nets take LoRAs:
- the video U-Net `unet` (`load_lora_weights`, and diffusers' `set_adapters` / `fuse_lora` / `unload_lora_weights`
  from `LoraBaseMixin`, whose `_lora_loadable_modules` is just `unet`): emuvideo's LoRA folders and diffusers
  files, through `EmuVideoPeftAdapterMixin.load_lora_adapter`;
- the image U-Net `image_unet`, a plain `UNet2DConditionModel` (`load_image_lora_weights`): any Stable
  Diffusion LoRA, diffusers or kohya format, read and converted by diffusers' own
  `StableDiffusionLoraLoaderMixin`; mix its adapters with `pipe.image_unet.set_adapters`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE, LoraBaseMixin

from ..utils.files import plain_permissions
from .peft import PICKLE_SUFFIXES, check_lora_fits


class EmuVideoLoraLoaderMixin(LoraBaseMixin):
    """LoRA loading for a pipeline with a video U-Net `unet` and an image U-Net `image_unet`.

    Built on `LoraBaseMixin` (as each of diffusers' pipeline mixins is) rather than on
    `StableDiffusionLoraLoaderMixin`, whose `load_lora_weights` also loads into `text_encoder`: here the text
    encoder is shared by both stages, and the video U-Net reads files SD's loader does not know. That
    loader's own reading and kohya conversion serve the image stage (`load_image_lora_weights`).
    """

    _lora_loadable_modules = ["unet"]
    unet_name = "unet"

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          hotswap: bool = False, **kwargs) -> None:
        """Load a LoRA into the video U-Net: an emuvideo LoRA folder, a diffusers `.safetensors` file or
        folder (keys `unet.<module>`), or such a state dict. See `EmuVideoPeftAdapterMixin.load_lora_adapter`."""
        self.unet.load_lora_adapter(pretrained_model_name_or_path_or_dict, prefix=self.unet_name,
                                    adapter_name=adapter_name, hotswap=hotswap, _pipeline=self, **kwargs)

    @classmethod
    def save_lora_weights(cls, save_directory, unet_lora_layers, unet_lora_adapter_metadata: dict | None = None,
                          is_main_process: bool = True, weight_name: str | None = None, save_function=None,
                          safe_serialization: bool = True) -> None:
        """Write the video U-Net's LoRA layers as diffusers' `pytorch_lora_weights.safetensors` (readable by others,
        as the JSON files a pipeline folder holds: `plain_permissions`)."""
        if not unet_lora_layers:
            raise ValueError("unet_lora_layers is empty: there is no LoRA to save")
        cls._save_lora_weights(save_directory, {cls.unet_name: unet_lora_layers},
                               {cls.unet_name: unet_lora_adapter_metadata}, is_main_process=is_main_process,
                               weight_name=weight_name, save_function=save_function,
                               safe_serialization=safe_serialization)
        if is_main_process and safe_serialization:
            plain_permissions(Path(save_directory) / (weight_name or LORA_WEIGHT_NAME_SAFE))

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs) -> None:
        super().fuse_lora(components=components or ["unet"], lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs) -> None:
        super().unfuse_lora(components=components or ["unet"], **kwargs)

    def load_image_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                                **kwargs) -> None:
        """Load a Stable Diffusion LoRA (diffusers or kohya format) into the image U-Net `image_unet`.

        The text encoder is shared by both stages, so a text-encoder part of the LoRA is left out (with a
        warning) rather than changing the video stage too.
        """
        source = ("(state dict)" if isinstance(pretrained_model_name_or_path_or_dict, dict)
                  else repr(str(pretrained_model_name_or_path_or_dict)))
        kwargs.setdefault("use_safetensors", True)  # never fall back to pickle
        state, network_alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs
        )
        prefix = f"{StableDiffusionLoraLoaderMixin.unet_name}."
        dropped = [k for k in state if not k.startswith(prefix)]
        if dropped:
            warnings.warn(f"image LoRA {source}: {len(dropped)} weights not for the U-Net (e.g. {dropped[0]!r}) are "
                          "left out; the text encoder is shared by the image and video stages", stacklevel=2)
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
        unet_state = {k.removeprefix(prefix): v for k, v in state.items()}
        check_lora_fits(self.image_unet, unet_state, f"{source} (image stage)")
        StableDiffusionLoraLoaderMixin.load_lora_into_unet(
            state, network_alphas=network_alphas, unet=self.image_unet, adapter_name=adapter_name,
            metadata=metadata, _pipeline=self,
        )


# ---------------------------------------------------------------------------------------------- --lora
def lora_specs(paths, scales, flag: str = "--lora") -> list[tuple[str, float]]:
    """(path, scale) pairs from `--lora` given N times and `--lora-scale` given once (for all) or N times.

    `paths`: None, one path or a list; `scales`: None (1.0), one number or a list.
    """
    paths = [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)
    scales = [] if scales is None else [scales] if isinstance(scales, (int, float)) else list(scales)
    if not paths:
        if len(scales) > 1 or (scales and scales[0] != 1.0):
            raise ValueError(f"{flag}-scale is given but no {flag}")
        return []
    if len(scales) > 1 and len(scales) != len(paths):
        raise ValueError(f"{flag}-scale is given {len(scales)} times for {len(paths)} {flag}: give one for all, "
                         "or one for each, in order")
    scales = scales * len(paths) if len(scales) == 1 else scales or [1.0] * len(paths)
    for scale in scales:
        if not math.isfinite(scale):
            raise ValueError(f"{flag}-scale must be a finite number, got {scale}")
    for path in paths:
        p = Path(path)
        if p.is_file() and p.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"{flag} {str(path)!r} is a pickle file, which can run code when loaded; LoRAs are read "
                             "from .safetensors only (convert it)")
        if not (p.is_dir() or (p.is_file() and p.suffix == ".safetensors")):
            raise ValueError(f"{flag} {str(path)!r}: no such LoRA folder or .safetensors file")
    return [(str(p), float(s)) for p, s in zip(paths, scales)]


def apply_loras(pipe, loras: list[tuple[str, float]], image_loras: list[tuple[str, float]] = ()) -> None:
    """Load `(path, scale)` LoRAs into the video U-Net and the image U-Net of `pipe`, mixed by their scales."""
    names = [f"lora_{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(path, adapter_name=name)
    if loras:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    image_names = [f"image_lora_{i}" for i in range(len(image_loras))]
    for name, (path, _) in zip(image_names, image_loras):
        pipe.load_image_lora_weights(path, adapter_name=name)
    if image_loras:
        pipe.image_unet.set_adapters(image_names, weights=[scale for _, scale in image_loras])


def apply_lora(pipe, path: str | Path, scale: float = 1.0):
    """Load one LoRA (folder or `.safetensors`) into `pipe.unet` (the video U-Net), in place; returns `pipe`."""
    apply_loras(pipe, lora_specs(path, scale))
    return pipe
