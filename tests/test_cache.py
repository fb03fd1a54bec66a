"""The latent cache: keyed by everything that produced it, atomic, resumable, streaming."""

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import emuvideo.data.cache as cache_module
from emuvideo.data.cache import LatentCache, cache_key
from emuvideo.data.clips import ClipDataset

ENCODERS = {"vae": "tiny-vae@0123abc", "text_encoder": "tiny-te@4567def", "dtype": "float32"}


class FakeClips(torch.utils.data.Dataset):
    """Deterministic items of the given (T, H, W) shapes; logs every access."""

    def __init__(self, shapes, crop="center", log=None):
        self.shapes, self.crop, self.log = shapes, crop, log if log is not None else []

    def __len__(self):
        return len(self.shapes)

    def __getitem__(self, i):
        self.log.append(f"get {i}")
        generator = torch.Generator().manual_seed(i)
        pixels = torch.rand((3, *self.shapes[i]), generator=generator) * 2 - 1  # (3, T, H, W)
        return {"pixel_values": pixels, "caption": f"clip number {i}", "path": f"clip{i}.mp4"}


class Encoders:
    """A stand-in VAE (4x spatial average pool, 4 channels) and text encoder; records calls."""

    def __init__(self, log=None, fail_on_call=None):
        self.log, self.fail_on_call, self.calls = log if log is not None else [], fail_on_call, 0
        self.encoded_captions, self.outputs = [], {}

    def video(self, pixel_values):  # (B, 3, T, H, W) -> (B, 4, T, H/4, W/4)
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash in the VAE")
        self.log.append(f"encode {pixel_values.shape[0]}")
        pooled = F.avg_pool3d(pixel_values, (1, 4, 4))
        return torch.cat([pooled, pooled[:, :1] ** 2], dim=1)

    def text(self, captions):  # list[str] -> (B, 6, 8)
        self.encoded_captions += captions
        out = torch.stack([torch.linspace(0, len(c), 48).reshape(6, 8) + sum(map(ord, c)) for c in captions])
        for caption, embed in zip(captions, out):
            self.outputs[caption] = embed
        return out


def item_files(cache):
    return sorted(p.name for p in cache.dir.iterdir() if p.name.endswith(".safetensors"))


def test_cache_key_is_stable_and_changes_with_every_field():
    fields = {**ENCODERS, "height": 256, "width": 384, "num_frames": 16, "fps": 8.0, "sampling": "fps",
              "crop": "center", "files": [["a.mp4", 1000, 1700000000000000000]], "options": {"b": 1, "a": [1, 2]}}
    key = cache_key(**fields)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    # The same fields in another order, nested dicts included, give the same key.
    shuffled = dict(reversed(list(fields.items())))
    shuffled["options"] = {"a": [1, 2], "b": 1}
    assert cache_key(**shuffled) == key
    # Pinned, so a change of the canonical form (which would orphan every cache) is noticed.
    canonical = b'{"files":[["a.mp4",1,2]],"fps":8.0,"height":16,"vae":"x"}'
    assert cache_key(vae="x", height=16, fps=8.0, files=[("a.mp4", 1, 2)]) == hashlib.sha256(canonical).hexdigest()
    changes = {"vae": "tiny-vae@0123abd", "text_encoder": "other", "dtype": "float16", "height": 257,
               "width": 383, "num_frames": 17, "fps": 8.5, "sampling": "even", "crop": "random",
               "files": [["a.mp4", 1000, 1700000000000000001]], "options": {"b": 2, "a": [1, 2]}}
    assert set(changes) == set(fields)
    keys = {cache_key(**{**fields, name: value}) for name, value in changes.items()}
    assert len(keys) == len(changes) and key not in keys
    assert cache_key(**fields, extra=None) != key
    assert cache_key(root=Path("/data/clips")) == cache_key(root="/data/clips")
    with pytest.raises(TypeError, match=r"fields.model has unsupported type object"):
        cache_key(model=object())
    with pytest.raises(ValueError, match="finite"):
        cache_key(fps=float("nan"))


def test_round_trip_with_buckets_and_streaming(tmp_path):
    log = []
    shapes = [(4, 16, 16), (4, 16, 16), (2, 16, 24), (4, 16, 16), (4, 16, 16), (2, 16, 24)]
    dataset, encoders = FakeClips(shapes, log=log), Encoders(log=log)
    cache = LatentCache(tmp_path, {"dataset": "fake-v1", **ENCODERS})
    assert not cache.is_complete()
    old_umask = os.umask(0o022)  # not 077 (where a plain write is 0o600 too, as safetensors' own files are)
    try:
        cache.build(dataset, encoders.video, encoders.text, batch_size=2, progress=False)
    finally:
        os.umask(old_umask)

    assert cache.is_complete() and len(cache) == 6
    # Items stream: a batch is encoded before later items are loaded, and an item of another
    # shape closes the batch early (a batch must stack).
    assert log == ["get 0", "get 1", "encode 2", "get 2", "get 3", "encode 1", "get 4", "encode 2",
                   "get 5", "encode 1"]
    for i, shape in enumerate(shapes):
        item = cache[i]
        expected = encoders.video(dataset[i]["pixel_values"][None])[0]
        assert torch.equal(item["latents"], expected) and item["latents"].shape == (4, shape[0], 4, shape[2] // 4)
        assert torch.equal(item["text_embeds"], encoders.outputs[f"clip number {i}"])
        assert item["caption"] == f"clip number {i}" and item["path"] == f"clip{i}.mp4"
    assert cache.buckets == [(4, t, 4, w // 4) for t, _, w in shapes]
    stored = json.loads((cache.dir / "fields.json").read_text())
    assert stored == {"key": cache.key, "fields": {"dataset": "fake-v1", **ENCODERS}}
    # a cache shared between users: every item readable as a plain write is (0o666 less the umask 022)
    assert {p.stat().st_mode & 0o777 for p in cache.dir.rglob("*.safetensors")} == {0o644}
    assert cache.dir == tmp_path / cache_key(dataset="fake-v1", **ENCODERS)


def test_an_interrupted_build_leaves_whole_items_and_resumes(tmp_path):
    dataset = FakeClips([(2, 8, 8)] * 5)
    cache = LatentCache(tmp_path, {"dataset": "fake-v1", **ENCODERS})
    crashing = Encoders(fail_on_call=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache.build(dataset, crashing.video, crashing.text, progress=False)
    assert item_files(cache) == ["00000000.safetensors", "00000001.safetensors"]
    assert not [p for p in cache.dir.iterdir() if "tmp" in p.name]
    assert not cache.is_complete()
    with pytest.raises(RuntimeError, match="incomplete .2 items written.; run build"):
        len(cache)

    resumed = Encoders()
    LatentCache(tmp_path, {"dataset": "fake-v1", **ENCODERS}).build(dataset, resumed.video, resumed.text,
                                                                  progress=False)
    assert resumed.encoded_captions == [f"clip number {i}" for i in (2, 3, 4)]  # only the missing ones
    assert cache.is_complete() and len(cache) == 5
    assert torch.equal(cache[0]["latents"], Encoders().video(dataset[0]["pixel_values"][None])[0])


def test_a_crash_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    def save_half_and_die(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "save_file", save_half_and_die)
    cache = LatentCache(tmp_path, {"dataset": "fake-v1", **ENCODERS})
    encoders = Encoders()
    with pytest.raises(KeyboardInterrupt):
        cache.build(FakeClips([(2, 8, 8)] * 2), encoders.video, encoders.text, progress=False)
    assert item_files(cache) == [] and not [p for p in cache.dir.iterdir() if "tmp" in p.name]


@pytest.fixture()
def image_folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 28, 3), 40 * i, np.uint8)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"image {i}")
    return root


def test_a_changed_config_or_file_never_reads_the_old_cache(tmp_path, image_folder):
    dataset = ClipDataset(image_folder, 16, 16, num_frames=1)
    encoders = Encoders()
    cache = LatentCache(tmp_path / "cache", {**dataset.cache_fields(), **ENCODERS})
    cache.build(dataset, encoders.video, encoders.text, progress=False)
    assert cache.is_complete() and cache[1]["caption"] == "image 1"
    assert torch.equal(cache[1]["latents"], encoders.video(dataset[1]["pixel_values"][None])[0])

    def key_after(change):
        change()
        fields = {**ClipDataset(image_folder, 16, 16, num_frames=1).cache_fields(), **ENCODERS}
        return LatentCache(tmp_path / "cache", fields)

    other_size = LatentCache(tmp_path / "cache", {**ClipDataset(image_folder, 16, 20, num_frames=1).cache_fields(),
                                                  **ENCODERS})
    other_vae = LatentCache(tmp_path / "cache", {**dataset.cache_fields(), **ENCODERS, "vae": "tiny-vae@new"})
    new_caption = key_after(lambda: (image_folder / "img0.txt").write_text("image zero"))
    stat = (image_folder / "img2.png").stat()
    touched = key_after(lambda: os.utime(image_folder / "img2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9)))
    new_clip = key_after(lambda: (Image.fromarray(np.zeros((20, 28, 3), np.uint8)).save(image_folder / "img3.png"),
                                  (image_folder / "img3.txt").write_text("image 3")))
    caches = [cache, other_size, other_vae, new_caption, touched, new_clip]
    assert len({c.dir for c in caches}) == len(caches)
    assert not any(c.is_complete() for c in caches[1:])


def test_refuses_random_crops_and_fields_that_do_not_describe_the_build(tmp_path, image_folder):
    encoders = Encoders()
    with pytest.raises(ValueError, match=r"cannot cache random crops \(crop='random'\)"):
        LatentCache(tmp_path, {"dataset": "fake", **ENCODERS}).build(
            FakeClips([(1, 8, 8)], crop="random"), encoders.video, encoders.text, progress=False)
    random_crops = ClipDataset(image_folder, 16, 16, num_frames=1, crop="random")
    with pytest.raises(ValueError, match="crop='random'"):
        LatentCache(tmp_path, {**random_crops.cache_fields(), **ENCODERS}).build(
            random_crops, encoders.video, encoders.text, progress=False)

    dataset = ClipDataset(image_folder, 16, 16, num_frames=1)
    stale = {**dataset.cache_fields(), **ENCODERS, "height": 32}
    with pytest.raises(ValueError, match="disagree with the dataset on height"):
        LatentCache(tmp_path, stale).build(dataset, encoders.video, encoders.text, progress=False)
    with pytest.raises(ValueError, match="only describe the dataset"):
        LatentCache(tmp_path, dataset.cache_fields()).build(dataset, encoders.video, encoders.text, progress=False)
    assert encoders.calls == 0
