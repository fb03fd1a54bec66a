"""The one denoising loop every emuvideo pipeline runs, and the pieces diffusers users pass to it.

As DiT's `p_sample_loop(model.forward_with_cfg, ...)`: the loop calls the U-Net as a plain function on
`len(scales) + 1` copies of the latents (one per guidance term) and combines the terms; the U-Net knows
nothing of the schedule, the loop nothing of what the conditions are.
"""

from __future__ import annotations

from typing import Callable

import torch

from .common import step_kwargs


def guide(terms: tuple[torch.Tensor, ...], scales: tuple[float, ...]) -> torch.Tensor:
    """Nested classifier-free guidance: X_0 + Σ_k w_k·(X_k − X_{k−1}), each term adding one condition.

    Text-to-image: (X(∅), X(p)) with (w,). Emu Video's two conditions (paper §3.2): (X(∅), X(I), X(I, p)) with
    (w_i, w_p). No scale: the one term as is.
    """
    out = terms[0]
    for k, w in enumerate(scales):
        out = out + w * (terms[k + 1] - terms[k])
    return out


def check_callback(callback, tensor_inputs: list[str] | None, allowed: list[str]) -> list[str]:
    """The tensor names a `callback_on_step_end` asks for (diffusers' `PipelineCallback` brings its own)."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback.tensor_inputs
    tensor_inputs = list(tensor_inputs or ["latents"])
    if callback is not None and not callable(callback):
        raise ValueError(f"callback_on_step_end must be callable, got {type(callback).__name__}")
    unknown = [name for name in tensor_inputs if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs must be among {allowed}, got {unknown}")
    return tensor_inputs


def denoise(
    pipe,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    scales: tuple[float, ...],
    text: torch.Tensor,
    generator=None,
    after_step: Callable | None = None,
    callback_on_step_end: Callable | None = None,
    callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    **conditions,
) -> torch.Tensor:
    """Run `pipe.scheduler` with `pipe.unet` over `timesteps` from `latents`; returns the final latents.

    Each step: `pipe.unet(x, t, text, **conditions).sample` on the latents repeated `len(scales) + 1` times (the
    guidance terms in one batch; `text` and `conditions` hold each term's conditions, batched the same way), combined by `guide`,
    one scheduler step; then `after_step(latents, i)` (e.g. putting known frames back), then
    `callback_on_step_end(pipe, i, t, {"latents": latents})` as in diffusers: a "latents" it returns replaces them.
    """
    scheduler, unet, n = pipe.scheduler, pipe.unet, len(scales) + 1
    for i, t in enumerate(pipe.progress_bar(timesteps)):
        x = scheduler.scale_model_input(torch.cat([latents] * n), t)
        terms = unet(x, t, text, **conditions).sample.chunk(n)
        latents = scheduler.step(guide(terms, scales), t, latents, **step_kwargs(scheduler, generator)).prev_sample
        if after_step is not None:
            latents = after_step(latents, i)
        if callback_on_step_end is not None:
            tensors = {"latents": latents}
            outputs = callback_on_step_end(pipe, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
            latents = (outputs or {}).get("latents", latents)
    return latents
