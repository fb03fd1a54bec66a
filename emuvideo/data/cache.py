"""An on-disk cache of VAE latents and text embeddings, keyed by everything that produced them.

Stale caches are a top complaint of video fine-tuners (a latent with 4 channels read by a model
expecting 16 after a config change). Here a cache lives in `root/<key>/`, where key is a sha256 of
*all* the fields that determine its content (encoder ids and dtypes, sizes, fps, sampling, crop,
and the dataset's files with sizes and mtimes), so a changed config or an edited clip gives a new
directory and can never read an old one. `fields.json` beside the items says what a key stands for.

Building streams items one batch at a time (memory bounded by batch_size), writes each item
atomically (temp file + os.replace, so Ctrl+C never leaves a half-written item) and resumes:
items already on disk are not encoded again.

Layout: root/<key>/fields.json, root/<key>/00000000.safetensors ... (tensors "latents" (C, T, h, w)
and, when text is cached, "text_embeds" (L, D); metadata "caption", "path", "motion" (the clip's motion
score, `emuvideo.data.motion`) and, for the shapes world, "spec"), root/<key>/complete.json once all exist.
It is the one cache of training: `emuvideo.data.sources` fills it from any `data.source`, by default under
`default_cache_dir()/latents` (the user cache dir, shared by every run on the same clips and encoders).
"""

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..utils.files import atomic_path


def default_cache_dir() -> Path:
    """emuvideo's folder in the user cache: $EMUVIDEO_CACHE, else $XDG_CACHE_HOME/emuvideo, else ~/.cache/emuvideo.

    Where a diffusers user looks for caches (Hugging Face's are under ~/.cache/huggingface, by the same rules);
    never the current directory, so that runs started from different folders share what they encoded.
    """
    if os.environ.get("EMUVIDEO_CACHE"):
        return Path(os.environ["EMUVIDEO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "emuvideo"


def _canonical(value, where: str = "fields"):
    """JSON-ready copy of `value` whose serialization is stable across runs and machines; types
    without a stable text form (arbitrary objects, whose repr may hold an address) are refused."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cache key field {where} must be finite, got {value}")
        return value
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, torch.dtype):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _canonical(value.item(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value), where)
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(f"cache key field {where} has a non-str key {k!r}")
        return {k: _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"cache key field {where} has unsupported type {type(value).__name__}; "
                    "use str/int/float/bool/None, lists, dicts, Paths or dataclasses")


def _canonical_json(fields: dict) -> str:
    return json.dumps(_canonical(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(**fields) -> str:
    """sha256 (hex) of a canonical JSON of `fields`: the same fields give the same key in any
    order and on any machine; changing any field (value or type: 1 vs 1.0 vs "1") changes it."""
    if not fields:
        raise ValueError("cache_key needs at least one field")
    return hashlib.sha256(_canonical_json(fields).encode("utf-8")).hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 (20 hex) of a module's class, config and weights: what its outputs depend on.

    The model half of a cache key (fine-tuning's latent cache, the training stages' shapes cache).
    """
    h = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        # diffusers/transformers bookkeeping (`_name_or_path`, `_diffusers_version`, ...) is not what the
        # outputs depend on: the same weights read from another folder must give the same digest
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def fingerprint_files(paths: Sequence, root=None) -> list[list]:
    """[path, size, mtime_ns] per file (path relative to `root` when given), for cache keys: an
    edited, replaced or touched file changes its fingerprint."""
    out = []
    for path in map(Path, paths):
        stat = path.stat()
        name = path.relative_to(root).as_posix() if root is not None else path.as_posix()
        out.append([name, stat.st_size, stat.st_mtime_ns])
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class LatentCache:
    """Precomputed latents and text embeddings of a dataset, in `root/<cache_key(**key_fields)>/`.

    Args:
        root: folder holding caches (one sub-folder per key).
        key_fields: everything that produced the cache. For a `ClipDataset` use
            `{**dataset.cache_fields(), "vae": "<model id>@<revision>", "text_encoder": ...,
            "dtype": "fp16"}`; `build` refuses fields that disagree with the dataset or that
            name no encoder.

    Item i is dataset item i: {"latents": (C, T, h, w), "text_embeds": (L, D), "caption": str,
    "path": str}. `buckets` gives each item's latent shape, for `BucketBatchSampler`.
    """

    def __init__(self, root, key_fields: dict):
        self.fields = _canonical(dict(key_fields))
        self.key = cache_key(**key_fields)
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"key": self.key, "fields": self.fields}
        fields_path = self.dir / "fields.json"
        if fields_path.exists():
            stored = json.loads(fields_path.read_text(encoding="utf-8"))
            if stored != record:
                raise ValueError(f"{fields_path} does not match the fields hashed to {self.key}; "
                                 "the cache folder was modified by hand: delete it")
        else:
            _write_json_atomic(fields_path, record)
        self._complete = None  # complete.json, read once: it never changes after build()

    def _item_path(self, index: int) -> Path:
        return self.dir / f"{index:08d}.safetensors"

    def _check_cacheable(self, dataset) -> None:
        if getattr(dataset, "crop", None) == "random" or self.fields.get("crop") == "random":
            raise ValueError("cannot cache random crops (crop='random'): a cached latent is one fixed "
                             "crop; use crop='center' to train from the cache, or train without a cache")
        if not hasattr(dataset, "cache_fields"):
            return
        expected = _canonical(dataset.cache_fields())
        differ = sorted(k for k, v in expected.items() if self.fields.get(k) != v)
        if differ:
            raise ValueError(f"key_fields disagree with the dataset on {', '.join(differ)}; "
                             "build key_fields as {**dataset.cache_fields(), <encoder fields>}")
        if not set(self.fields) - set(expected):
            raise ValueError("key_fields only describe the dataset; add what encodes it (e.g. "
                             "vae='<model id>@<revision>', text_encoder=..., dtype=...) so that latents of "
                             "another model are never read from this cache")

    def build(self, dataset, encode_video: Callable, encode_text: Callable | None, batch_size: int = 1,
              progress: bool = True, num_workers: int = 0) -> None:
        """Encode every dataset item not yet on disk and write it.

        Args:
            dataset: items {"pixel_values": (3, T, H, W) in [-1, 1], "caption": str, "path": str}, and
                optionally "spec" (a dict, kept as JSON metadata).
            encode_video: (B, 3, T, H, W) float in [-1, 1] -> latents (B, C, T, h, w).
            encode_text: list of B captions -> (B, L, D); None: no text is cached (captions vary per step).
            batch_size: items encoded together (items of different shapes are never batched).
            progress: show a tqdm bar.
            num_workers: DataLoader worker processes that decode or render items (and score their motion)
                while this process encodes.

        An exception (from an encoder, or Ctrl+C) leaves only complete item files; call build
        again to encode the rest.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._check_cacheable(dataset)
        n = len(dataset)
        todo = [i for i in range(n) if not self._item_path(i).exists()]
        # Streamed: items are decoded one at a time (in `num_workers` processes, a few ahead), so only one
        # batch of pixels (and the workers' prefetch) is ever in memory.
        items = torch.utils.data.DataLoader(_Scored(dataset, todo), batch_size=None, num_workers=num_workers,
                                            collate_fn=_identity)
        with torch.no_grad(), tqdm(total=n, initial=n - len(todo), disable=not progress,
                                   desc=f"caching latents in {self.dir.name[:12]}", unit="item") as bar:
            batch: list[dict] = []
            for item in items:
                if batch and item["pixel_values"].shape != batch[0]["pixel_values"].shape:
                    bar.update(self._write_batch(batch, encode_video, encode_text))  # a batch must stack
                    batch = []
                batch.append(item)
                if len(batch) == batch_size:
                    bar.update(self._write_batch(batch, encode_video, encode_text))
                    batch = []
            if batch:
                bar.update(self._write_batch(batch, encode_video, encode_text))
        shapes = []
        for i in range(n):
            with safe_open(self._item_path(i), framework="pt") as f:
                shapes.append(list(f.get_slice("latents").get_shape()))
        _write_json_atomic(self.dir / "complete.json", {"num_items": n, "latent_shapes": shapes})
        self._complete = None

    def _write_batch(self, batch: list[dict], encode_video: Callable, encode_text: Callable | None) -> int:
        pixel_values = torch.stack([item["pixel_values"] for item in batch])  # (B, 3, T, H, W)
        captions = [item["caption"] for item in batch]
        latents = encode_video(pixel_values)  # (B, C, T, h, w)
        if latents.ndim != 5 or latents.shape[0] != len(batch):
            raise ValueError(f"encode_video must return (B={len(batch)}, C, T, h, w), got {tuple(latents.shape)}")
        text_embeds = encode_text(captions) if encode_text is not None else None  # (B, L, D)
        if text_embeds is not None and (text_embeds.ndim != 3 or text_embeds.shape[0] != len(batch)):
            raise ValueError(f"encode_text must return (B={len(batch)}, L, D), got {tuple(text_embeds.shape)}")
        for b, item in enumerate(batch):
            path = self._item_path(item["index"])
            tensors = {"latents": latents[b].detach().cpu().contiguous().clone()}
            if text_embeds is not None:
                tensors["text_embeds"] = text_embeds[b].detach().cpu().contiguous().clone()
            metadata = {"caption": item["caption"], "path": str(item.get("path", "")), "motion": repr(item["motion"])}
            if "spec" in item:
                metadata["spec"] = json.dumps(item["spec"])
            # atomic (written beside, renamed): readers and resumes see a whole item or none; with a plain write's
            # permissions (safetensors writes 0o600; a shared cache is read by other users too)
            with atomic_path(path) as tmp:
                save_file(tensors, tmp, metadata=metadata)
        return len(batch)

    def _manifest(self) -> dict:
        if self._complete is None:
            path = self.dir / "complete.json"
            if not path.exists():
                done = len([p for p in self.dir.glob("*.safetensors") if not p.name.startswith(".")])  # not temporaries
                raise RuntimeError(f"latent cache {self.dir} is incomplete ({done} items written); run build()")
            self._complete = json.loads(path.read_text(encoding="utf-8"))
        return self._complete

    def is_complete(self) -> bool:
        """True when build() finished and every item file is present."""
        try:
            n = self._manifest()["num_items"]
        except RuntimeError:
            return False
        return all(self._item_path(i).exists() for i in range(n))

    @property
    def buckets(self) -> list[tuple[int, ...]]:
        """Latent shape (C, T, h, w) per item: items with equal shapes stack."""
        return [tuple(s) for s in self._manifest()["latent_shapes"]]

    def __len__(self) -> int:
        return self._manifest()["num_items"]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} items")
        path = self._item_path(index)
        if not path.exists():
            raise FileNotFoundError(f"latent cache item {path} is missing; run build() again")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            item = {name: f.get_tensor(name) for name in f.keys()}  # latents (+ text_embeds)
        item.update(caption=meta["caption"], path=meta["path"], motion=float(meta["motion"]))
        if "spec" in meta:
            item["spec"] = json.loads(meta["spec"])
        return item

    def motion_scores(self) -> list[float]:
        """Each item's motion score (read from the item files' headers, not their tensors)."""
        scores = []
        for i in range(len(self)):
            with safe_open(self._item_path(i), framework="pt") as f:
                scores.append(float(f.metadata()["motion"]))
        return scores


def _identity(item):
    return item


class _Scored(torch.utils.data.Dataset):
    """Items `indices` of `dataset`, each with its index and motion score, computed where it is decoded."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        from .motion import motion_score

        item = self.dataset[self.indices[i]]
        frames = item["pixel_values"]  # (3, T, H, W)
        return {**item, "index": self.indices[i], "motion": motion_score(frames) if frames.shape[1] > 1 else 0.0}
