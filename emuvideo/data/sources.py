"""The one data seam of training: `data.source` picks where clips come from, here and nowhere else.

Every stage of `emuvideo train` (image and video) and `emuvideo finetune` read their data through
`training_data`:

- ``shapes``: the shapes world the project renders (`ShapesDataset`); captions are drawn per step from
  each clip's spec, in a random phrasing, so no text is cached;
- ``folder``: your clips (`ClipDataset`, `data.root`): a same-name `.txt` caption or a `metadata.jsonl/.csv`.

With `data.cache_dir`, the clips are encoded once into one `LatentCache` (latents, the motion score of each
clip, and for folders the text states), keyed by the source's settings and files and by the encoders' weights.
`data.high_motion_fraction` keeps the clips the motion score ranks highest (paper §4's high-motion fine-tune),
for either source. Items: {"latents" (C, T, h, w) or "pixel_values" (3, T, H, W) without a cache, "caption",
optionally "text_embeds" (L, D) and "spec"}.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from .cache import LatentCache, module_digest
from .motion import select_high_motion

logger = logging.getLogger(__name__)


def shapes_clips(cfg, size: int, num_frames: int):
    """The shapes world at `size` px. `num_frames=1` (image stage): the first frames of `data.num_frames` clips."""
    from .shapes import ShapesDataset

    d = cfg.data
    split = "image" if cfg.kind in ("image", "autoencoder") else d.split  # stills: every colour x shape pair
    return ShapesDataset(split, d.num_frames, d.fps, d.num_clips, seed=cfg.seed, resolution=size,
                         render_frames=num_frames)


def folder_clips(cfg, size: int, num_frames: int):
    """Your clips in `data.root`, read at the model's size (each skipped clip named with its reason)."""
    from .clips import ClipDataset

    d = cfg.data
    if d.root is None:
        raise ValueError("data.source: folder needs data.root (or --data DIR): a folder of clips")
    logger.info("clips: %dx%d (the model's size), %d frames, sampling %s", size, size, num_frames, d.sampling)
    return ClipDataset(d.root, size, size, num_frames, fps=d.fps if d.sampling == "fps" else None,
                       sampling=d.sampling, crop=d.crop, seed=cfg.seed)


SOURCES = {"shapes": shapes_clips, "folder": folder_clips}
# Sources whose items carry a spec that a caption is drawn from at every step: their text is not cached.
CAPTIONS_PER_STEP = {"shapes"}


def training_clips(cfg, size: int, num_frames: int | None = None):
    """The clips of `cfg.data.source` as pixels, uncached: {"pixel_values" (3, T, H, W) in [-1, 1], "caption", ...}.
    What `training_data` encodes, and the autoencoder stage's data."""
    if cfg.data.source not in SOURCES:
        raise ValueError(f"data.source must be one of {sorted(SOURCES)}, got {cfg.data.source!r}")
    return SOURCES[cfg.data.source](cfg, size, num_frames or cfg.data.num_frames)


def process_state() -> PartialState:
    """This process's device and rank, before the Trainer's Accelerator exists. ACCELERATE_USE_CPU is read as
    the Accelerator reads it, so that `accelerate launch` on CPUs gets the same (multi-process) state."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def encoder_fields(vae, tokenizer, text_encoder) -> dict:
    """The latent cache's model half of the key: the VAE, the text encoder and the tokenizer that made it."""
    vocab = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()[:20]
    return {
        "vae": module_digest(vae),
        "text_encoder": module_digest(text_encoder),
        "tokenizer": f"{type(tokenizer).__name__}:{tokenizer.model_max_length}:{vocab}",
        "dtype": str(vae.dtype),
        "latents": "posterior mode",  # encode_frames(sample=False)
    }


def training_data(cfg, vae, tokenizer, text_encoder, size: int, num_frames: int | None = None):
    """The stage's training items from `cfg.data.source`, cached when `cfg.data.cache_dir` is set.

    Args:
        cfg: the `TrainConfig` (its `data` section, `kind` and `seed`).
        vae, tokenizer, text_encoder: the frozen encoders (moved to this process's device while caching).
        size: frame side in pixels (the model's size).
        num_frames: frames per item (default `data.num_frames`; 1 for the image stage).
    Returns:
        a map-style dataset (a `LatentCache`, a `torch.utils.data.Subset` of one, or the raw clips; held in
        memory, `InMemory`, with `data.in_memory`).
    """
    from ..models.encoding import encode_frames, encode_prompt

    d = cfg.data
    num_frames = num_frames or d.num_frames
    clips = training_clips(cfg, size, num_frames)
    if d.high_motion_fraction is not None and not 0 < d.high_motion_fraction <= 1:
        raise ValueError(f"data.high_motion_fraction must be in (0, 1], got {d.high_motion_fraction}")
    if not d.cache_dir or d.crop == "random":
        if d.high_motion_fraction is not None:
            raise ValueError("data.high_motion_fraction needs data.cache_dir and data.crop: center "
                             "(motion scores are computed while caching)")
        if d.crop == "random" and d.cache_dir:
            logger.warning("data.crop: random is not cached (a cached latent is one crop): encoding clips every step")
        if d.in_memory and d.crop == "random":
            raise ValueError("data.in_memory holds one crop of each clip: it needs data.crop: center")
        return InMemory(clips) if d.in_memory else clips

    state = process_state()
    device = state.device
    cache_text = d.source not in CAPTIONS_PER_STEP
    fields = {**clips.cache_fields(), **encoder_fields(vae, tokenizer, text_encoder), "text_cached": cache_text}
    with state.main_process_first():  # the first process encodes, the others find the items on disk
        cache = LatentCache(d.cache_dir, fields)
        if not cache.is_complete():
            homes = [next(m.parameters()).device for m in (vae, text_encoder)]
            vae.to(device)
            text_encoder.to(device)
            try:
                # Rendering / decoding and motion scoring run in worker processes; encoding on the device.
                workers = min(8, (os.cpu_count() or 1) - 1) if len(clips) >= 512 else 0
                cache.build(
                    clips,
                    encode_video=lambda x: encode_frames(vae, x.to(device)),
                    encode_text=(lambda c: encode_prompt(tokenizer, text_encoder, c, device)) if cache_text else None,
                    batch_size=max(1, 256 // num_frames) if workers else 1,
                    num_workers=workers,
                    progress=state.is_main_process,
                )
            finally:
                for module, home in zip((vae, text_encoder), homes):
                    module.to(home)
    logger.info("latent cache: %s", cache.dir)
    dataset = cache
    if d.high_motion_fraction is not None:
        scores = cache.motion_scores()
        keep = select_high_motion(scores, d.high_motion_fraction)
        logger.info("high-motion subset: %d of %d clips (motion score >= %.4f)", len(keep), len(scores),
                    min(scores[i] for i in keep))
        dataset = torch.utils.data.Subset(cache, keep)
    return InMemory(dataset) if d.in_memory else dataset


class InMemory(torch.utils.data.Dataset):
    """`dataset`'s items, read (or rendered) once and then held in memory (`data.in_memory`).

    Items are made in `num_workers` forked processes and come back pickled through pipes as numpy arrays, not as
    torch's shared-memory tensors: thousands of those would hold as many file descriptors, and a container's
    /dev/shm is often small.
    """

    def __init__(self, dataset, num_workers: int | None = None, progress: bool = True):
        import multiprocessing

        from tqdm.auto import tqdm

        if num_workers is None:
            num_workers = min(15, (os.cpu_count() or 1) - 1) if len(dataset) >= 512 else 0
        self.source = dataset  # what was read: a LatentCache (or a Subset of one) or the raw clips
        indices = range(len(dataset))
        bar = dict(total=len(dataset), desc="into memory", unit="item", disable=not progress)
        if num_workers > 0:
            global _IN_MEMORY_SOURCE
            _IN_MEMORY_SOURCE = dataset  # inherited by the forked workers
            # One torch thread per worker, as DataLoader's workers: an OpenMP pool the parent already used does
            # not survive a fork, and a child entering it would hang.
            with multiprocessing.get_context("fork").Pool(num_workers, initializer=torch.set_num_threads,
                                                          initargs=(1,)) as pool:
                items = list(tqdm(pool.imap(_numpy_item, indices, chunksize=64), **bar))
        else:
            items = [_as_numpy(dataset[i]) for i in tqdm(indices, **bar)]
        self.items = [{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in it.items()}
                      for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


_IN_MEMORY_SOURCE = None


def _as_numpy(item: dict) -> dict:
    return {k: v.numpy() if torch.is_tensor(v) else v for k, v in item.items()}


def _numpy_item(index: int) -> dict:
    return _as_numpy(_IN_MEMORY_SOURCE[index])


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep everything else (captions, specs) as lists."""
    return {key: torch.stack([it[key] for it in items]) if torch.is_tensor(items[0][key]) else [it[key] for it in items]
            for key in items[0]}
