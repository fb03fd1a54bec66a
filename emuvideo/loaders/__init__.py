"""Loading adapters for inference (as diffusers' `loaders/`): LoRA on the video and image U-Nets.

Training LoRAs lives in `emuvideo.training.lora`; this package never imports training.
"""

from .lora_pipeline import EmuVideoLoraLoaderMixin, apply_lora, apply_loras, lora_specs
from .peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    EmuVideoPeftAdapterMixin,
    check_lora_fits,
    load_lora,
    merge_lora_layers,
    read_lora,
    set_lora_scale,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PEFT_PREFIX",
    "EmuVideoLoraLoaderMixin",
    "EmuVideoPeftAdapterMixin",
    "apply_lora",
    "apply_loras",
    "check_lora_fits",
    "load_lora",
    "lora_specs",
    "merge_lora_layers",
    "read_lora",
    "set_lora_scale",
]
