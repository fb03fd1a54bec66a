"""LoRA on the video U-Net the diffusers way: `unet.load_lora_adapter`, `set_adapters`, `fuse_lora`.

`EmuVideoUNet` gets diffusers' own `PeftAdapterMixin`; only `load_lora_adapter` is extended, to read the
LoRA files diffusers does not know and to refuse a LoRA that does not fit (diffusers only warns):

- a LoRA folder of `emuvideo finetune` (peft's format, see `emuvideo.training.lora`):
      adapter_config.json          peft `LoraConfig`
      adapter_model.safetensors    `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`
  Its `modules_to_save` (the fully trained `conv_in` of a freshly inflated model) is a whole replacement
  weight, which peft's adapter weights, diffusers' `set_adapters` and `fuse_lora` do not blend (peft's
  `ModulesToSaveWrapper` keeps one active copy; `set_adapters` deactivates it). So it is turned into a LoRA
  of full rank on that layer: ΔW = W_saved − W_base, factored exactly by SVD (rank ≤ in·k·k, 81 for SD's
  conv_in), and Δb on `lora_B`'s bias (peft's per-layer `lora_bias`). Scale 1 gives the trained layer,
  0 the base, and weights mix.
- a diffusers LoRA (`pytorch_lora_weights.safetensors`, as `EmuVideoPipeline.save_lora_weights` writes),
  a folder holding it, or any single `.safetensors` file of that format.

Only safetensors are read (no pickle).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import warnings
from pathlib import Path

import torch
from diffusers.loaders import PeftAdapterMixin
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE
from diffusers.utils.peft_utils import get_adapter_name
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError, safe_open
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module names
# Weight files that are pickles: never read as LoRAs (unpickling can run code), even with --allow-pickle
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ---------------------------------------------------------------------------------------------- reading
def read_lora(source: str | Path, model: nn.Module, prefix: str | None) -> tuple[dict, dict | None, dict]:
    """A LoRA folder/file as (state dict keyed by `model`'s module names, peft `LoraConfig` kwargs or None,
    {module name: bias delta} of the whole layers an emuvideo folder replaces, for `lora_B`'s bias).

    `prefix`: the component name a diffusers file puts before module names (`unet`); None: none.
    """
    path = Path(source)
    if path.is_file() and path.name == ADAPTER_WEIGHTS and (path.parent / ADAPTER_CONFIG).is_file():
        path = path.parent
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        return _read_peft_folder(path, model)
    if path.is_dir():
        if (path / LORA_WEIGHT_NAME_SAFE).is_file():
            path = path / LORA_WEIGHT_NAME_SAFE
        else:
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise ValueError(f"LoRA folder {str(source)!r} has no {ADAPTER_CONFIG} and not exactly one "
                                 f".safetensors file (found {len(files)})")
            path = files[0]
    if not path.is_file():
        raise ValueError(f"LoRA {str(source)!r}: no such folder or file")
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA {str(source)!r} is not a .safetensors file (pickle weights are not loaded)")
    state, file_metadata = read_safetensors(path)
    raw = file_metadata.get(LORA_ADAPTER_METADATA_KEY)
    metadata = json.loads(raw) if raw else None
    if any(k.startswith(PEFT_PREFIX) for k in state):
        raise ValueError(f"LoRA {str(source)!r} holds peft weights without the {ADAPTER_CONFIG} that gives their "
                         "alpha and targets; give its folder")
    if prefix:
        state = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
        if metadata is not None:
            metadata = {k.removeprefix(f"{prefix}."): v for k, v in metadata.items() if k.startswith(f"{prefix}.")}
            metadata = metadata or None
    return state, metadata, {}


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a LoRA's `.safetensors` file; a truncated or corrupted one is an error naming it."""
    try:
        with safe_open(str(path), "pt") as f:  # checks the header against the file's size
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"LoRA file {str(path)!r} is not a readable safetensors file (truncated or corrupted?): "
                         f"{str(err).strip().splitlines()[0]}") from None


def _read_peft_folder(folder: Path, model: nn.Module) -> tuple[dict, dict, dict]:
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickles = [p.name for p in sorted(folder.iterdir()) if p.suffix in PICKLE_SUFFIXES]
        hint = f" ({pickles[0]} is a pickle file, which can run code when loaded: convert it)" if pickles else ""
        raise ValueError(f"LoRA folder {str(folder)!r} has no {ADAPTER_WEIGHTS}{hint}")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"LoRA folder {str(folder)!r}: {ADAPTER_CONFIG} is not JSON ({err})") from err
    if config.get("peft_type") != "LORA":
        raise ValueError(f"LoRA folder {str(folder)!r} holds a {config.get('peft_type')!r} adapter, not a LoRA")
    config["base_model_name_or_path"] = peft_base_model(config.get("base_model_name_or_path"))
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in read_safetensors(weights)[0].items()}
    lora = {k: v for k, v in state.items() if ".lora_" in k}
    full = {k: v for k, v in state.items() if ".lora_" not in k}  # modules_to_save: whole layers
    config.pop("modules_to_save", None)
    if not full:
        return lora, config, {}
    return _full_layers_as_lora(full, lora, config, model, folder)


@torch.no_grad()
def _full_layers_as_lora(full: dict, lora: dict, config: dict, model: nn.Module, folder: Path):
    """Trained whole layers (`modules_to_save`) -> full-rank LoRA deltas on the model's current layers."""
    modules = dict(model.named_modules())
    names = sorted({k.rpartition(".")[0] for k in full})
    rank_pattern, alpha_pattern = dict(config.get("rank_pattern") or {}), dict(config.get("alpha_pattern") or {})
    biases = {}
    for name in names:
        layer = modules.get(name)
        layer = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or f"{name}.weight" not in full:
            raise ValueError(f"LoRA {str(folder)!r} does not fit this model (trained on another base?): "
                             f"it replaces {name!r}, which the model has no Linear/Conv2d layer for")
        new, old = full[f"{name}.weight"].double(), layer.weight.double()
        if new.shape != old.shape:
            raise ValueError(f"LoRA {str(folder)!r} does not fit this model (trained on another base?): {name!r} is "
                             f"{tuple(new.shape)} in the LoRA, {tuple(old.shape)} in the model")
        delta = (new - old).flatten(1)  # (out, in*k*k)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # exact: every singular value kept
        rank = s.numel()
        a, b = vh, u * s  # delta = b @ a
        if isinstance(layer, nn.Conv2d):  # peft's Conv2d LoRA: A a conv like the layer, B a 1x1 conv
            a, b = a.reshape(rank, *old.shape[1:]), b.reshape(old.shape[0], rank, 1, 1)
        lora[f"{name}.lora_A.weight"] = a.to(layer.weight.dtype)
        lora[f"{name}.lora_B.weight"] = b.to(layer.weight.dtype)
        if f"{name}.bias" in full and layer.bias is not None:
            biases[name] = (full[f"{name}.bias"].double() - layer.bias.double()).to(layer.bias.dtype)
        rank_pattern[name] = rank
        alpha_pattern[name] = math.sqrt(rank) if config.get("use_rslora") else rank  # scaling 1
    targets = config.get("target_modules")
    escaped = "|".join(re.escape(n) for n in names)
    if isinstance(targets, str):  # a regex, full-matched by peft
        config["target_modules"] = rf"(?:{targets})|(?:{escaped})"
    else:
        config["target_modules"] = [*(targets or []), *names]
    config["rank_pattern"], config["alpha_pattern"] = rank_pattern, alpha_pattern
    return lora, config, biases


def _add_lora_biases(model: nn.Module, biases: dict, adapter_name: str) -> None:
    """Give `lora_B` of these layers a bias (Δb of a replaced layer). peft's `lora_bias` is per layer and
    adapter, but its config switch would put a bias on every layer, and merging fails on the bias-free ones."""
    for name, delta in biases.items():
        layer = model.get_submodule(name)
        old = layer.lora_B[adapter_name]
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, bias=True)
        else:
            new = nn.Linear(old.in_features, old.out_features, bias=True)
        new = new.to(old.weight.device, old.weight.dtype).requires_grad_(False)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.copy_(delta)
        layer.lora_B[adapter_name] = new
        layer.lora_bias[adapter_name] = True


def peft_base_model(name: str | None) -> str | None:
    """What a LoRA records as its `base_model_name_or_path`: a local folder (absolute), a Hub id (owner/name) or
    None. Anything else (a preset name, "emuvideo-default") is not a model peft can find, and peft would ask
    the Hub for it (`get_peft_model_state_dict` looks for the base's config there)."""
    if not name:
        return None
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().absolute())
    parts = str(name).split("/")
    return name if len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) else None


# ---------------------------------------------------------------------------------------------- checking
def check_lora_fits(model: nn.Module, state_dict: dict, source: str) -> None:
    """A LoRA whose layers the model lacks, or of other sizes, is an error, not an adapter that does nothing.

    `state_dict` is keyed by `model`'s module names, in peft's or diffusers' older LoRA key format.
    """
    if state_dict and not any("lora_A" in k for k in state_dict):
        state_dict = convert_unet_state_dict_to_peft(state_dict)
    keys = [k for k in state_dict if ".lora_A." in k or ".lora_B." in k]
    if not keys:
        first = next(iter(state_dict), None)
        raise ValueError(f"LoRA {source} has no LoRA weights for this model"
                         + (f" (its keys look like {first!r})" if first else ""))
    modules = dict(model.named_modules())
    for key in keys:
        name, _, rest = key.partition(".lora_")
        layer = modules.get(name)
        if layer is None:
            raise ValueError(f"LoRA {source} does not fit this model (trained on another base?): "
                             f"it adapts {name!r}, which the model lacks")
        layer = layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer
        size = (getattr(layer, "in_features", None) or getattr(layer, "in_channels", None),
                getattr(layer, "out_features", None) or getattr(layer, "out_channels", None))
        value = state_dict[key]
        got, want = (value.shape[1], size[0]) if rest.startswith("A.") else (value.shape[0], size[1])
        if value.ndim > 1 and got != want:
            side = "input" if rest.startswith("A.") else "output"
            raise ValueError(f"LoRA {source} does not fit this model (trained on another base?): {name!r} has "
                             f"{want} {side} features in the model, {got} in the LoRA")


def check_lora_ranks(state_dict: dict, config: dict, source: str) -> None:
    """The rank each layer's `lora_A` has must be the one its config gives (`r`, or its `rank_pattern` entry):
    peft builds the layers from the config, and loading tensors of another rank would fail deep in torch."""
    if "r" not in config:
        return
    rank_pattern = config.get("rank_pattern") or {}
    for key, value in state_dict.items():
        if ".lora_A." not in key:
            continue
        name = key.partition(".lora_A.")[0]
        want = rank_pattern.get(get_pattern_key(rank_pattern.keys(), name), config["r"])
        if value.shape[0] != want:
            raise ValueError(f"LoRA {source} contradicts its config: {name!r} has rank {value.shape[0]} in its weights, "
                             f"the config says {want} (r={config['r']}); the weights and the config are from "
                             "different LoRAs")


# ---------------------------------------------------------------------------------------------- mixin
class EmuVideoPeftAdapterMixin(PeftAdapterMixin):
    """diffusers' `PeftAdapterMixin` (`load_lora_adapter`, `set_adapters`, `fuse_lora`, `unload_lora`, ...)
    whose `load_lora_adapter` also reads emuvideo's LoRA folders and checks the fit first."""

    def load_lora_adapter(self, pretrained_model_name_or_path_or_dict, prefix="unet", hotswap: bool = False, **kwargs):
        """Load a LoRA (an emuvideo/peft folder, a diffusers `.safetensors` file or folder, or a state dict).

        `prefix`: the component name before module names in a diffusers file or dict (`unet`, as
        `EmuVideoPipeline.save_lora_weights` writes); None for keys that are this model's module names.
        Other arguments as `PeftAdapterMixin.load_lora_adapter` (`adapter_name`, `metadata`, ...).
        """
        given = pretrained_model_name_or_path_or_dict
        metadata, biases = kwargs.pop("metadata", None), {}
        if kwargs.get("adapter_name") is None:
            kwargs["adapter_name"] = get_adapter_name(self)
        if isinstance(given, dict):
            source = "(state dict)"
            ours = [k for k in given if not prefix or k.startswith(f"{prefix}.")]
            state = {k.removeprefix(f"{prefix}.") if prefix else k: given[k] for k in ours}
        else:  # a local folder or file (not a Hub id), safetensors only
            if kwargs.pop("use_safetensors", None) is False:
                raise ValueError("LoRAs are read from .safetensors only (pickle weights are not loaded)")
            given = Path(given, kwargs.pop("subfolder", None) or "", kwargs.pop("weight_name", None) or "")
            source = repr(str(given))
            state, read_metadata, biases = read_lora(given, self, prefix)
            metadata = metadata or read_metadata
        check_lora_fits(self, state, source)
        if metadata:
            check_lora_ranks(state, metadata, source)
        network_alphas = kwargs.pop("network_alphas", None)
        with _missing_keys_of(kwargs["adapter_name"]):
            if network_alphas:  # diffusers wants a prefix with them: put one back
                state = {f"unet.{k}": v for k, v in state.items()}
                metadata = {f"unet.{k}": v for k, v in metadata.items()} if metadata else None
                super().load_lora_adapter(state, prefix="unet", hotswap=hotswap, network_alphas=network_alphas,
                                          metadata=metadata, **kwargs)
            else:
                super().load_lora_adapter(state, prefix=None, hotswap=hotswap, metadata=metadata, **kwargs)
        _add_lora_biases(self, biases, kwargs["adapter_name"])


class _OnlyKeysOf(logging.Filter):
    """diffusers warns of the new adapter's missing keys by taking every missing key in which the adapter's name
    occurs (`adapter_name in key`): adapter "b" gets all the keys of the adapters loaded before it (`down_blocks`
    holds a "b"). Keep the keys that hold the name as a part (`.b.`), as peft matches adapter names."""

    MISSING = "Loading adapter weights from state_dict led to missing keys in the model: "

    def __init__(self, adapter_name: str):
        super().__init__()
        self.part = f".{adapter_name}."

    def filter(self, record: logging.LogRecord) -> bool:
        before, found, keys = record.getMessage().partition(self.MISSING)
        if not found:
            return True
        ours = [k for k in keys.rstrip(".").split(", ") if self.part in k]
        message = f"{before}{self.MISSING}{', '.join(ours)}." if ours else before.strip()
        record.msg, record.args = message, ()
        return bool(message)


@contextlib.contextmanager
def _missing_keys_of(adapter_name: str):
    logger = logging.getLogger("diffusers.utils.peft_utils")  # where `_maybe_warn_for_unhandled_keys` logs
    only = _OnlyKeysOf(adapter_name)
    logger.addFilter(only)
    try:
        with warnings.catch_warnings():  # peft's note on a second adapter: here several adapters are the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        logger.removeFilter(only)


# ---------------------------------------------------------------------------------------------- one LoRA
def load_lora(model: nn.Module, folder: str | Path, scale: float = 1.0, adapter_name: str = "default") -> None:
    """Add the LoRA saved in `folder` to `model` (an `EmuVideoUNet`) in place, at strength `scale` (0: the base)."""
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"the model already has a LoRA named {adapter_name!r}; load the LoRA into a fresh model")
    model.load_lora_adapter(folder, prefix=None, adapter_name=adapter_name)
    set_lora_scale(model, scale, adapter_name)


def set_lora_scale(model: nn.Module, scale: float, adapter_name: str = "default") -> None:
    """Strength of a loaded LoRA: its update is multiplied by `scale` (0 gives back the base exactly)."""
    if not math.isfinite(scale):
        raise ValueError(f"LoRA scale must be a finite number, got {scale}")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("the model has no LoRA layers")
    for layer in layers:
        layer.set_scale(adapter_name, scale)


def merge_lora_layers(model: nn.Module) -> None:
    """Bake every LoRA into its base weight and put the plain layers back (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
