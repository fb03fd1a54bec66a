"""emuvideo: text-to-video the way Emu Video does it — text -> image -> video, on one GPU or a CPU."""

import importlib
import importlib.util
import logging
import sys

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


# ---------------------------------------------------------------------------------------------- diffusers
# `DiffusionPipeline.from_pretrained(folder)` looks the `_class_name` of the folder's model_index.json up as an
# attribute of the `diffusers` module. emuvideo's pipeline names resolve there as soon as diffusers is imported
# (before or after emuvideo), importing `emuvideo.pipelines` on first use: `import emuvideo` is enough, and
# stays cheap (it imports neither torch nor diffusers).
PIPELINE_CLASSES = ("EmuVideoPipeline", "EmuTextToImagePipeline", "EmuImageToVideoPipeline", "EmuInterpolationPipeline")


def _resolve_in_diffusers(diffusers) -> None:
    """Let `getattr(diffusers, "EmuVideoPipeline")` (and the other pipelines) import them on first use.

    diffusers is a lazy module (its `_LazyModule.__getattr__` imports a class when first asked for it) whose
    table only knows its own modules; a subclass of its type adds ours, and `emuvideo.pipelines` then sets
    them as plain attributes (`register_with_diffusers`).
    """
    lazy = type(diffusers)

    class _DiffusersAndEmuvideo(lazy):
        def __getattr__(self, name):
            if name in PIPELINE_CLASSES:
                return getattr(importlib.import_module(".pipelines", __name__), name)
            return lazy.__getattr__(self, name)

    diffusers.__class__ = _DiffusersAndEmuvideo


class _WhenDiffusersIsImported:
    """A `sys.meta_path` finder that runs `_resolve_in_diffusers` once `import diffusers` has run (a post-import
    hook). It finds diffusers through the other finders and wraps the loader's `exec_module`; a bare
    `importlib.util.find_spec("diffusers")` (an availability check) gets a spec that is never executed."""

    def __init__(self):
        self._finding = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_resolve(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _resolve_in_diffusers(sys.modules[fullname])  # diffusers puts its lazy module in sys.modules

        spec.loader.exec_module = exec_then_resolve
        return spec


if "diffusers" in sys.modules:
    _resolve_in_diffusers(sys.modules["diffusers"])
elif not any(isinstance(finder, _WhenDiffusersIsImported) for finder in sys.meta_path):
    sys.meta_path.insert(0, _WhenDiffusersIsImported())
