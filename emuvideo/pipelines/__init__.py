from .image_to_video import EmuImageToVideoPipeline, EmuVideoPipelineOutput
from .interpolation import EmuInterpolationPipeline
from .text_to_image import EmuImagePipelineOutput, EmuTextToImagePipeline
from .text_to_video import EmuVideoPipeline

__all__ = [
    "EmuImagePipelineOutput",
    "EmuImageToVideoPipeline",
    "EmuInterpolationPipeline",
    "EmuTextToImagePipeline",
    "EmuVideoPipeline",
    "EmuVideoPipelineOutput",
]

from .common import register_with_diffusers  # noqa: E402

# `DiffusionPipeline.from_pretrained(folder)` finds emuvideo's pipelines by their `_class_name` (no remote code)
register_with_diffusers(EmuVideoPipeline, EmuTextToImagePipeline, EmuImageToVideoPipeline, EmuInterpolationPipeline)
