"""What every training stage is: `Stage`, and the parts stages share (the caption encoder, captions of a batch)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ...models.encoding import encode_prompt
from ..config import TrainConfig


class Stage:
    """One training job, as the `Trainer` runs it: a step is `loss(model, batch)`, then the optimizer.

    A stage is built from its config (`Stage(cfg)`) and holds:

    - `model`: the module whose trainable parameters are optimised and checkpointed;
    - `dataset`, `collate_fn`: the training items (from the one data seam, `emuvideo.data.sources`);
    - `frozen`: modules the step runs without training them, kept on the training device;
    - `trainable_only`: checkpoints hold the trainable parameters only (the frozen base is re-read from `init`);

    and three methods: `loss(model, batch) -> scalar`, `sample(model, step) -> {name: video (T, H, W, 3) uint8}`
    (what TensorBoard and `samples/` show) and `save(model, folder)` (the weights in their published format).
    The Trainer passes `model` back in (prepared by accelerate: wrapped for DDP, sharded for FSDP).
    """

    model: torch.nn.Module
    dataset: torch.utils.data.Dataset
    collate_fn = None
    frozen: tuple[torch.nn.Module, ...] = ()
    trainable_only: bool = False

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, model: torch.nn.Module, step: int) -> dict[str, np.ndarray]:
        return {}

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        raise NotImplementedError


class CaptionEncoder:
    """Frozen-text-encoder states `(B, L, D)` for captions, memoised per caption string.

    The shapes world's captions come from a finite set of phrasings, so the text encoder (over half of a step's
    time on CPU) runs less and less often. The memo holds at most `max_items` captions (about 50 KB each): the
    rich grammar has ~10^6 phrasings, and a long run must not grow without bound.
    """

    def __init__(self, tokenizer, text_encoder, max_items: int = 20_000):
        self.tokenizer, self.text_encoder, self.memo, self.max_items = tokenizer, text_encoder, {}, max_items

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.memo})
        if missing:
            if len(self.memo) + len(missing) > self.max_items:
                self.memo.clear()
                missing = sorted(set(captions))
            states = encode_prompt(self.tokenizer, self.text_encoder, missing, device)
            self.memo.update(zip(missing, states))
        return torch.stack([self.memo[c] for c in captions]).to(device)


def batch_captions(batch: dict, style: str) -> list[str]:
    """The captions of a batch: the folder source's own, or for the shapes world a random phrasing of each clip's
    spec in `style` (`data.captions`), drawn anew every step with python `random`, whose state checkpoints restore."""
    if "spec" not in batch:
        return list(batch["caption"])
    from ...data.shapes import ShapeSpec, random_caption

    return [random_caption(ShapeSpec(**spec), random, style=style) for spec in batch["spec"]]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
