"""emuvideo: text-to-video the way Emu Video does it — text -> image -> video, on one GPU or a CPU."""

import logging

# bitsandbytes (imported by diffusers when installed) warns at import on CPUs without its optional
# `kernels` package; the fallback it uses is correct, so the warning is only noise for our users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .models.video_unet import EmuVideoUNet  # noqa: E402
from .pipelines import (  # noqa: E402
    EmuImageToVideoPipeline,
    EmuTextToImagePipeline,
    EmuVideoPipeline,
    EmuVideoPipelineOutput,
)
from .pipelines.loading import load_pipeline  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "EmuImageToVideoPipeline",
    "EmuTextToImagePipeline",
    "EmuVideoPipeline",
    "EmuVideoPipelineOutput",
    "EmuVideoUNet",
    "load_pipeline",
]
