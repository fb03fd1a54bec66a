from .image_to_video import EmuImageToVideoPipeline, EmuVideoPipelineOutput
from .text_to_image import EmuImagePipelineOutput, EmuTextToImagePipeline
from .text_to_video import EmuVideoPipeline

__all__ = [
    "EmuImagePipelineOutput",
    "EmuImageToVideoPipeline",
    "EmuTextToImagePipeline",
    "EmuVideoPipeline",
    "EmuVideoPipelineOutput",
]
