"""Which kernel computes attention: one setting for every attention layer of a model, spatial and temporal.

Backends, by name (`ATTENTION_BACKENDS`):

- ``"sdpa"``: `torch.nn.functional.scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`, its default):
  torch picks flash / memory-efficient / math kernels by device, dtype and shape.
- ``"xformers"``: xformers' memory-efficient attention (CUDA only; `pip install xformers`).
- ``"math"``: diffusers' `AttnProcessor`, softmax(QKᵀ/√d)·V with plain matmuls — the reference the fused
  kernels are checked against, and the one to try when a fused kernel is suspected of a wrong result. It is
  a per-layer processor rather than `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)` because a processor is
  part of the model: it holds in every call (pipelines, training loops, `torch.compile`) without a context
  manager around each one, and `attn_processors` shows it.
- ``"auto"``: xformers on a CUDA device when it is installed, else sdpa.

Every `diffusers.models.attention_processor.Attention` inside the module gets the backend: the spatial
self- and cross-attentions, the temporal attentions (diffusers' `TransformerTemporalModel`), the VAE's.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "math")


def xformers_unavailable(device) -> str | None:
    """Why xformers cannot run on `device` (None when it can)."""
    if torch.device(device).type != "cuda":
        return "it needs a CUDA device"
    if importlib.util.find_spec("xformers") is None:
        return "it is not installed (pip install xformers)"
    return None


def resolve_attention(backend: str, device) -> str:
    """The concrete backend ("sdpa", "xformers" or "math") that `backend` means on `device`; one-line errors."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "sdpa" if xformers_unavailable(device) else "xformers"
    if backend == "xformers" and (reason := xformers_unavailable(device)):
        raise ValueError(f"attention xformers: {reason}")
    return backend


def available_attention(device) -> list[str]:
    """The concrete backends that can run on `device`."""
    return ["sdpa", "math"] + ([] if xformers_unavailable(device) else ["xformers"])


def set_attention(module: nn.Module, backend: str, device=None) -> str:
    """Make every attention layer of `module` use `backend` (see the module docstring); returns the one in use.

    `device`: where the module will run (default: where its parameters are), for "auto" and "xformers".
    """
    if device is None:
        device = next(module.parameters(), torch.empty(0)).device
    backend = resolve_attention(backend, device)
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    for layer in layers:
        if backend == "xformers":
            layer.set_use_memory_efficient_attention_xformers(True)
        else:
            layer.set_processor(AttnProcessor2_0() if backend == "sdpa" else AttnProcessor())
    logger.info("attention: %s (%d layers of %s)", backend, len(layers), type(module).__name__)
    return backend


def attention_in_use(module: nn.Module) -> str | None:
    """The backend of `module`'s attention layers ("sdpa", "xformers", "math", "mixed"), None if it has none."""
    names = {_backend_of(m.processor) for m in module.modules() if isinstance(m, Attention)}
    if not names:
        return None
    return names.pop() if len(names) == 1 else "mixed"


def _backend_of(processor) -> str:
    kind = type(processor).__name__
    if "XFormers" in kind:
        return "xformers"
    if kind == "AttnProcessor":
        return "math"
    if kind == "AttnProcessor2_0":
        return "sdpa"
    return kind  # another processor (a LoRA or IP-Adapter one): named as it is
