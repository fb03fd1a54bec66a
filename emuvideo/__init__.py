"""emuvideo: text-to-video the way Emu Video does it — text -> image -> video, on one GPU or a CPU."""

import importlib
import logging

# bitsandbytes (imported by diffusers when installed) warns at import on CPUs without its optional
# `kernels` package; the fallback it uses is correct, so the warning is only noise for our users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

# The public names, resolved on first use (PEP 562): importing torch + diffusers takes seconds, so
# `import emuvideo.cli` (whose `--help` and argument errors need neither) does not pay for it.
_EXPORTS = {
    "EmuImageToVideoPipeline": ".pipelines",
    "EmuTextToImagePipeline": ".pipelines",
    "EmuVideoPipeline": ".pipelines",
    "EmuVideoPipelineOutput": ".pipelines",
    "EmuVideoUNet": ".models.video_unet",
    "load_pipeline": ".pipelines.loading",
}

__all__ = [
    "EmuImageToVideoPipeline",
    "EmuTextToImagePipeline",
    "EmuVideoPipeline",
    "EmuVideoPipelineOutput",
    "EmuVideoUNet",
    "load_pipeline",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'emuvideo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
