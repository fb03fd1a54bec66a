"""LoRA adapters on the video U-Net, through peft, saved in peft's own format.

A LoRA folder is what `peft.PeftModel.save_pretrained` writes, so peft (and anything that reads peft
adapters) loads it without emuvideo:

    adapter_config.json          peft `LoraConfig` (r, lora_alpha, target_modules regex, base model)
    adapter_model.safetensors    `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`

`target_modules` is a regex over `EmuVideoUNet` module names, built from `lora.layers`:
``temporal`` adapts only modules under a `.temporal.` wrapper (the layers Emu Video adds, paper §3.1);
``spatial`` only the others (the image model's layers); ``all`` every module of the U-Net whose name ends
in one of `lora.target_modules`. On a freshly inflated model `conv_in` also trains (peft's
`modules_to_save`, saved in the same folder): its image-condition and mask channels start at zero.

Loading (`load_lora`, `pipe.load_lora_weights`, `unet.load_lora_adapter`) is inference and lives in
`emuvideo.loaders`; this module keeps what trains, saves, and `lora merge` (a model-folder tool).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn

# Loading for inference lives in `emuvideo.loaders`; these names stay importable from here for old imports.
from ..loaders.lora_pipeline import apply_lora, lora_specs  # noqa: F401
from ..loaders.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, load_lora, merge_lora_layers  # noqa: F401
from ..loaders.peft import peft_base_model, set_lora_scale  # noqa: F401
from ..utils.files import atomic_dir
from .config import LoraConfig

ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Conv3d)  # bnb Linear4bit is an nn.Linear


# ---------------------------------------------------------------------------------------------- targets
def target_regex(layers: str, target_modules: list[str]) -> str:
    """peft `target_modules` regex (peft full-matches it against module names)."""
    if not target_modules:
        raise ValueError("lora.target_modules is empty: name at least one layer, e.g. to_q")
    names = "|".join(re.escape(m) for m in target_modules)
    if layers == "temporal":
        return rf".*\.temporal\.(?:.*\.)?(?:{names})"
    if layers == "spatial":  # every matching module not under a temporal wrapper
        return rf"(?!.*\.temporal\.)(?:.*\.)?(?:{names})"
    if layers == "all":
        return rf"(?:.*\.)?(?:{names})"
    raise ValueError(f"lora.layers must be 'temporal', 'spatial' or 'all', got {layers!r}")


def resolve_targets(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Names of the modules `lora` adapts in `model`; an error when it matches none or a non-layer."""
    pattern = re.compile(target_regex(lora.layers, lora.target_modules))
    names = [n for n, m in model.named_modules() if not isinstance(m, BaseTunerLayer) and pattern.fullmatch(n)]
    if not names:
        raise ValueError(
            f"lora.target_modules {lora.target_modules} with lora.layers={lora.layers!r} match no layer of the model"
        )
    modules = dict(model.named_modules())
    wrong = [n for n in names if not isinstance(modules[n], ADAPTABLE)]
    if wrong:
        kind = type(modules[wrong[0]]).__name__
        raise ValueError(f"lora.target_modules match {wrong[0]!r}, a {kind}, not a Linear/Conv layer")
    return names


def peft_config(lora: LoraConfig, base_model: str | None = None, train_conv_in: bool = False) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_regex(lora.layers, lora.target_modules),
        modules_to_save=["conv_in"] if train_conv_in else None,
        base_model_name_or_path=peft_base_model(base_model),  # never a name that sends peft to the Hub
    )


def add_lora(
    model: nn.Module, lora: LoraConfig, base_model: str | None = None, train_conv_in: bool = False
) -> list[str]:
    """Inject trainable LoRA layers into `model` in place (everything else frozen); returns their names.

    A's weights start random (from torch's RNG: seed first for a reproducible run), B's at zero, so the
    model starts out unchanged. `train_conv_in`: `conv_in` trains in full beside the adapters (peft's
    `modules_to_save`), which a freshly inflated model needs (its condition channels start at zero).
    """
    targets = resolve_targets(model, lora)
    inject_adapter_in_model(peft_config(lora, base_model, train_conv_in), model)
    return targets


# ---------------------------------------------------------------------------------------------- files
def save_lora(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> Path:
    """Write `model`'s adapter as a peft LoRA folder (see module docstring), atomically."""
    folder = Path(folder)
    config = model.peft_config[adapter_name]
    state = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        inference = PeftLoraConfig(**{**config.to_dict(), "inference_mode": True})
        inference.save_pretrained(str(tmp))
    return folder


# ---------------------------------------------------------------------------------------------- pipelines
def save_model_folder(pipe, out: str | Path, base_dir: str | Path | None = None) -> Path:
    """Write `pipe` as a model folder `out`, atomically.

    When `base_dir` is an `EmuVideoPipeline` folder it is copied and only its `unet/` is replaced by
    `pipe.unet` (so a base shipped without its text encoder stays that way); otherwise (a Stable-Diffusion
    folder that was inflated, a random model) the whole pipeline is saved.
    """
    out = Path(out)
    index = Path(base_dir) / "model_index.json" if base_dir is not None else None
    copy = index is not None and index.is_file() and json.loads(index.read_text())["_class_name"] == "EmuVideoPipeline"
    with atomic_dir(out) as tmp:
        if copy:
            shutil.copytree(base_dir, tmp, dirs_exist_ok=True)
            shutil.rmtree(tmp / "unet")
            pipe.unet.save_pretrained(str(tmp / "unet"))
        else:
            pipe.save_pretrained(str(tmp))
    return out


def merge_lora(model_dir: str | Path | None, lora: str | Path, out: str | Path, scale: float = 1.0,
               allow_pickle: bool = False) -> Path:
    """A copy of the model folder `model_dir` (None: the shipped default) with the LoRA baked in.
    `allow_pickle`: as `load_pipeline`'s (a model with pickle weights is refused without it)."""
    from ..pipelines.loading import default_model_dir, load_pipeline

    out = Path(out)
    if out.exists():
        raise ValueError(f"--output {str(out)!r} already exists; give a new folder")
    if model_dir is None:
        model_dir = default_model_dir()
        if not (model_dir / "model_index.json").is_file():
            raise ValueError("no default model is installed to merge into; give --model FOLDER")
    pipe = load_pipeline(str(model_dir), allow_pickle=allow_pickle)
    load_lora(pipe.unet, lora, scale=scale)
    merge_lora_layers(pipe.unet)
    local = Path(model_dir) if Path(model_dir).is_dir() else None
    return save_model_folder(pipe, out, base_dir=local)
