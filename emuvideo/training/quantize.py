"""QLoRA's frozen base: the video U-Net's linear layers in 4-bit NormalFloat (Dettmers et al., 2023).

Two uses: QLoRA (`lora.quantize_base`: every linear layer of the frozen U-Net) and a 4-bit frozen spatial
base under fully trained temporal layers (`spatial_quantization: nf4`: only the spatial linear layers).
Every selected `nn.Linear` of a frozen model becomes a bitsandbytes `Linear4bit` holding NF4 weights with double
quantization (the per-block absmax scales are quantized too, QLoRA §3); the layers compute in bf16 on a
GPU and in fp32 on a CPU. LoRA adapters (`emuvideo.training.lora`) then train on top of them in fp32 —
peft wraps `Linear4bit` with its own bnb-aware LoRA layer.

bitsandbytes is used directly rather than through diffusers' `BitsAndBytesConfig`, which refuses to
load without a GPU; bitsandbytes >= 0.45 runs NF4 on a CPU too, so QLoRA is tested everywhere.
Convolutions (resnets, temporal convs, conv_in) stay in full precision: bitsandbytes has no 4-bit conv.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

QUANT_TYPE = "nf4"  # NormalFloat4: information-theoretically optimal for normally distributed weights
DOUBLE_QUANT = True  # compress_statistics: ~0.37 bit/parameter less for the scales


def compute_dtype_for(device: str | torch.device) -> torch.dtype:
    """bf16 on a GPU (the dtype QLoRA computes in), fp32 on a CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _to_nf4(
    linear: nn.Linear, device: torch.device, compute_dtype: torch.dtype, quant_storage: torch.dtype = torch.uint8
) -> bnb.nn.Linear4bit:
    import bitsandbytes as bnb  # imported here: a run without quantization never loads it

    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=DOUBLE_QUANT,
        quant_type=QUANT_TYPE,
        quant_storage=quant_storage,  # the layer re-wraps a weight FSDP gathered as this dtype
        device="meta",  # no fp32 copy: the weight is replaced just below
    )
    if device.type == "meta":  # a memory estimate: Params4bit would skip quantizing on a move to meta
        from ..utils.memory import params4bit_on_meta

        q.weight = params4bit_on_meta(linear.weight.data.to("meta"), quant_type=QUANT_TYPE,
                                      compress_statistics=DOUBLE_QUANT, quant_storage=quant_storage, module=q)
    else:
        # Params4bit quantizes when it is moved to a device: one layer at a time, so a GPU never holds the
        # full-precision model (that peak would defeat the point of QLoRA).
        q.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, compress_statistics=DOUBLE_QUANT, quant_type=QUANT_TYPE,
            quant_storage=quant_storage, module=q,
        ).to(device)
    if linear.bias is not None:
        # In the compute dtype from the start: Linear4bit.forward otherwise swaps `bias.data` for a cast copy on
        # its first call, behind the back of FSDP, which holds the gathered bias.
        q.bias = nn.Parameter(linear.bias.data.to(device, compute_dtype), requires_grad=False)
    # bitsandbytes 0.50 repacks a CPU layer's weight into a bf16 format the first time it runs in eval mode
    # without grad: that breaks on layers narrower than a block (in_features < 64) and makes samples drawn
    # during training compute differently from the training steps. Keep one format.
    q.support_avx512bf16_for_cpu = False
    return q


def quantize_linear_layers(
    model: nn.Module,
    device: str | torch.device,
    compute_dtype: torch.dtype | None = None,
    only: Callable[[str], bool] | None = None,
    quant_storage: torch.dtype = torch.uint8,
) -> int:
    """Replace every `nn.Linear` of `model` (or those whose name `only` accepts) by an NF4 `Linear4bit` on
    `device`, in place. The layers quantized must be frozen; the rest of the model may train.

    Everything else is moved to `device` unchanged. Sets `model.is_loaded_in_4bit`, which peft reads to
    give these layers its 4-bit LoRA wrapper.

    Args:
        model: the module; its selected linear layers are frozen (a 4-bit weight is never updated).
        device: where the quantized model lives ("cpu", "cuda:N", or "meta" for a memory estimate).
        compute_dtype: the dtype the 4-bit layers compute in (default: `compute_dtype_for(device)`).
        only: a predicate on module names (e.g. spatial layers only); None: every linear layer.
        quant_storage: the dtype the packed 4-bit weights are stored as (two 4-bit values a byte either way:
            same values, same math). torch.bfloat16 lets FSDP shard them like any bf16 weight; with uint8
            accelerate leaves them whole on every process.
    Returns:
        how many layers were quantized.
    """
    device = torch.device(device)
    compute_dtype = compute_dtype or compute_dtype_for(device)
    selected = [
        (name, module) for name, module in model.named_modules()
        if type(module) is nn.Linear and (only is None or only(name))  # exact type: wrapped layers are skipped
    ]
    trainable = [f"{name}.{p}" for name, module in selected for p, v in module.named_parameters() if v.requires_grad]
    if trainable:
        raise ValueError(f"NF4 layers are frozen, but {trainable[0]} (and {len(trainable) - 1} more) train")
    for name, child in selected:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, _to_nf4(child, device, compute_dtype, quant_storage))
    count = len(selected)
    if count == 0:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    model.to(device)
    model.is_loaded_in_4bit = True
    return count


def is_nf4(module: nn.Module) -> bool:
    """True for a `Linear4bit` holding NF4 weights with double quantization."""
    import bitsandbytes as bnb  # imported here: a run without quantization never loads it

    if not isinstance(module, bnb.nn.Linear4bit):
        return False
    state = module.weight.quant_state
    return state is not None and state.quant_type == QUANT_TYPE and bool(state.nested) == DOUBLE_QUANT
