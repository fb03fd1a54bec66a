"""The clip pipeline: scanning with named skips, timestamp sampling, rotation, buckets.

Every clip is written here with PyAV. Frame k of a test clip is black with a white vertical bar
at columns [k * bar, (k + 1) * bar), so a decoded frame tells which source frame it is.
"""

import json
import logging
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from emuvideo.data.buckets import BucketBatchSampler
from emuvideo.data.clips import (
    ClipDataset,
    ClipDecodeError,
    read_video,
    resize_and_crop,
    scan_clips,
)

VFR_PTS = [0, 10, 30, 40, 80, 90, 100, 150]  # in 1/100 s; the clip ends at 1.6 s


def bar_frames(n, height, width):
    bar = width // n
    frames = np.zeros((n, height, width, 3), np.uint8)
    for k in range(n):
        frames[k, :, k * bar:(k + 1) * bar] = 255
    return frames


def frame_indices(frames, n_source, width):
    """Which source frame each decoded (T, H, W, 3) frame is, from its bar position."""
    bar = width // n_source
    return [int(f[..., 0].mean(axis=0).argmax()) // bar for f in frames]


def write_video(path, frames, fps=10, pts=None, rotation=None):
    """mp4/mov/mkv: lossless h264 (yuv444p allows odd sizes, no B-frames); gif: rgb8.
    `pts` in 1/100 s makes a variable-frame-rate clip; `rotation` sets the display matrix."""
    gif = path.suffix == ".gif"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif" if gif else "libx264", rate=fps,
                                      options={} if gif else {"bf": "0", "qp": "0"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "rgb8" if gif else "yuv444p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pts is not None:
            stream.time_base = Fraction(1, 100)
        for k, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[k], Fraction(1, 100)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def corner_marked(height, width):
    """A frame with a white 8x8 block in its top-left corner."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:8, :8] = 255
    return frame


def bright_corner(frame):
    h, w = frame.shape[:2]
    corners = {"top-left": frame[:8, :8], "top-right": frame[:8, w - 8:],
               "bottom-left": frame[h - 8:, :8], "bottom-right": frame[h - 8:, w - 8:]}
    return max(corners, key=lambda c: corners[c].mean())


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """Four usable clips and five unusable files of every kind."""
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "good.mp4", bar_frames(12, 61, 97))  # odd size, 12 frames at 10 fps
    write_video(root / "anim.gif", bar_frames(6, 30, 42))
    write_video(root / "vfr.mp4", bar_frames(8, 32, 48), pts=VFR_PTS)
    write_video(root / "rotated.mp4", [corner_marked(32, 48)] * 6, rotation=-90)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_video(root / "nocap.mp4", bar_frames(6, 16, 24))
    write_video(root / "emptycap.mp4", bar_frames(6, 16, 24))
    write_video(root / "short.mp4", bar_frames(2, 16, 24))
    Image.fromarray(corner_marked(32, 48)).save(root / "photo.png")
    for name in ("good", "anim", "vfr", "rotated", "corrupt", "short", "photo"):
        (root / f"{name}.txt").write_text(f"a {name} clip\n")
    (root / "emptycap.txt").write_text("  \n")
    return root


def test_scan_keeps_usable_clips_and_names_every_skip(clip_dir, caplog):
    with caplog.at_level(logging.INFO, logger="emuvideo.data.clips"):
        with pytest.warns(UserWarning) as record:
            report = scan_clips(clip_dir, min_frames=4)

    assert sorted(r.path.name for r in report.kept) == ["anim.gif", "good.mp4", "rotated.mp4", "vfr.mp4"]
    reasons = {path.name: reason.split(":")[0] for path, reason in report.skipped}
    assert reasons == {"corrupt.mp4": "corrupt", "nocap.mp4": "no caption", "emptycap.mp4": "no caption",
                       "short.mp4": "too short", "photo.png": "image"}
    messages = [str(w.message) for w in record]
    for name in reasons:
        assert any(name in m for m in messages), f"no warning names {name}"
    summary = "kept 4 clips, skipped 5 (corrupt: 1, too short: 1, no caption: 2, image: 1)"
    assert report.summary() == summary
    assert [r.getMessage() for r in caplog.records if "kept" in r.getMessage()] == [f"{clip_dir}: {summary}"]

    good = next(r for r in report.kept if r.path.name == "good.mp4")
    assert (good.width, good.height, good.num_frames, good.caption) == (97, 61, 12, "a good clip")
    assert good.fps == pytest.approx(10) and good.duration == pytest.approx(1.2)


def test_min_frames_at_target_fps_counts_by_duration(clip_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = scan_clips(clip_dir, min_frames=8, fps=5)
    kept = {r.path.name: r.num_frames for r in report.kept}
    # vfr.mp4 lasts 1.6 s -> 8 frames at 5 fps (not 9: 1.6 * 5 = 8.000000000000002 in floats)
    assert kept == {"vfr.mp4": 8}
    assert "too short: 6 frames at 5 fps" in dict((p.name, r) for p, r in report.skipped)["good.mp4"]


def test_zero_usable_clips_raises_with_the_reasons(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    (tmp_path / "bad.txt").write_text("caption")
    write_video(tmp_path / "a.mp4", bar_frames(4, 16, 16))
    write_video(tmp_path / "b.mov", bar_frames(4, 16, 16))
    with pytest.warns(UserWarning), pytest.raises(
            ValueError, match=re.escape(f"no usable clips in {tmp_path}: 3 skipped (corrupt: 1, no caption: 2)")):
        scan_clips(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable clips .* no files with extensions"):
        scan_clips(tmp_path / "empty")


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_metadata_file_lists_clips_relative_to_the_folder(tmp_path, kind):
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "sub" / "a.mp4", bar_frames(4, 16, 24))
    write_video(tmp_path / "b.mkv", bar_frames(4, 16, 24))
    write_video(tmp_path / "c.mp4", bar_frames(4, 16, 24))
    (tmp_path / "c.txt").write_text("ignored: the metadata file is the caption source")
    rows = [("sub/a.mp4", "clip a"), ("b.mkv", "clip b"), ("missing.mp4", "gone"), ("c.mp4", "")]
    if kind == "jsonl":
        keys = [("video_path", "caption"), ("file_name", "text"), ("path", "caption"), ("video_path", "caption")]
        lines = [json.dumps({pk: p, ck: c}) for (pk, ck), (p, c) in zip(keys, rows)]
        (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    else:
        (tmp_path / "metadata.csv").write_text("video_path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))

    with pytest.warns(UserWarning) as record:
        report = scan_clips(tmp_path)
    assert sorted(str(w.message).split(":")[0] for w in record) == [f"skipping {tmp_path / 'c.mp4'}",
                                                                    f"skipping {tmp_path / 'missing.mp4'}"]
    assert [(r.path.name, r.caption, r.num_frames) for r in report.kept] == [("a.mp4", "clip a", 4),
                                                                             ("b.mkv", "clip b", 4)]
    assert report.counts() == {"no caption": 1, "missing file": 1}


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_fps_sampling_of_variable_frame_rate_clips_picks_by_timestamp(tmp_path, suffix):
    path = write_video(tmp_path / f"vfr{suffix}", bar_frames(8, 32, 48), pts=VFR_PTS)
    times = [p / 100 for p in VFR_PTS]
    for fps, count in ((5, 8), (10, 16), (2.5, 4), (3, 4)):
        frames = read_video(path, count, fps=fps)
        expected = [max(k for k, t in enumerate(times) if t <= j / fps + 1e-9) for j in range(count)]
        assert frame_indices(frames, 8, 48) == expected, f"fps={fps}"
    # 1.6 s at 5 fps is 8 frames; a 9th would be at 1.6 s, past the end.
    with pytest.raises(ClipDecodeError, match=r"vfr.*asked for 9 frames at 5 fps, the clip yields only 8"):
        read_video(path, 9, fps=5)


def test_even_head_and_fps_sampling_on_a_constant_rate_clip(clip_dir):
    path = clip_dir / "good.mp4"  # 12 frames at 10 fps
    assert read_video(path, 4, sampling="even").shape == (4, 61, 97, 3)
    assert frame_indices(read_video(path, 4, sampling="even"), 12, 97) == [0, 4, 7, 11]
    assert frame_indices(read_video(path, 3, sampling="head"), 12, 97) == [0, 1, 2]
    assert frame_indices(read_video(path, 3, fps=5), 12, 97) == [0, 2, 4]
    assert frame_indices(read_video(path, 12), 12, 97) == list(range(12))  # fps=None: native frames
    with pytest.raises(ClipDecodeError, match="good.mp4"):
        read_video(path, 13, sampling="even")
    with pytest.raises(ValueError, match="fps is only used with sampling='fps'"):
        read_video(path, 3, fps=5, sampling="even")


def test_reads_are_thread_safe(clip_dir):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: read_video(clip_dir / "vfr.mp4", 8, fps=5), range(8)))
    assert all(np.array_equal(r, results[0]) for r in results)


@pytest.mark.parametrize("rotation, corner", [
    (-90, "top-right"),   # ffprobe "rotation of -90": shown turned 90 deg clockwise (iPhone portrait)
    (90, "bottom-left"),  # shown turned 90 deg counter-clockwise
    (180, "bottom-right"),
])
def test_rotated_clips_come_out_upright(tmp_path, rotation, corner):
    # PyAV writes the display matrix (VideoStream.set_display_rotation, PyAV 18) and reads it back
    # (VideoFrame.rotation); the raw frames are 48 wide x 32 high, marked in their top-left corner.
    if not hasattr(av.VideoStream, "set_display_rotation"):
        pytest.skip(f"PyAV {av.__version__} cannot write a display matrix")
    path = write_video(tmp_path / "phone.mp4", [corner_marked(32, 48)] * 3, rotation=rotation)
    (tmp_path / "phone.txt").write_text("a phone clip")
    frames = read_video(path, 3)
    upright = (32, 48) if rotation == 180 else (48, 32)
    assert frames.shape == (3, *upright, 3)
    assert all(bright_corner(f) == corner for f in frames)
    record = scan_clips(tmp_path).kept[0]
    assert (record.height, record.width, record.rotation) == (*upright, rotation % 360)


def test_exif_rotated_images_come_out_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phones write portrait photos
    Image.fromarray(corner_marked(32, 48)).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    (tmp_path / "photo.txt").write_text("a photo")
    frame = read_video(tmp_path / "photo.jpg", 1)[0]
    assert frame.shape == (48, 32, 3) and bright_corner(frame) == "top-right"
    record = scan_clips(tmp_path).kept[0]
    assert (record.is_image, record.width, record.height, record.num_frames) == (True, 32, 48, 1)


def test_resize_and_crop():
    frames = np.broadcast_to(np.arange(50, dtype=np.uint8)[None, None, :, None], (2, 30, 50, 3)).copy()
    center = resize_and_crop(frames, 30, 30)  # no scaling needed: a pure center crop
    assert center.shape == (2, 30, 30, 3) and np.array_equal(center[0, 0, :, 0], np.arange(10, 40))
    a = resize_and_crop(frames, 30, 30, crop="random", rng=np.random.default_rng(1))
    b = resize_and_crop(frames, 30, 30, crop="random", rng=np.random.default_rng(1))
    assert np.array_equal(a, b) and 0 <= a[0, 0, 0, 0] <= 20
    small = resize_and_crop(np.zeros((3, 61, 97, 3), np.uint8), 16, 24)
    assert small.shape == (3, 16, 24, 3) and small.dtype == np.uint8
    with pytest.raises(ValueError, match="allow_upscale=False"):
        resize_and_crop(small, 32, 32, allow_upscale=False)


def test_dataset_buckets_are_stackable_and_clips_fill_the_largest_frame_bucket(clip_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = ClipDataset(clip_dir, 16, 24, num_frames=6, sampling="head", frame_buckets=[2, 4, 6],
                              resolution_buckets=[(16, 24), (24, 16)])
    buckets = {r.path.name: b for r, b in zip(dataset.records, dataset.buckets)}
    assert buckets == {"good.mp4": (6, 16, 24), "anim.gif": (6, 16, 24), "vfr.mp4": (6, 16, 24),
                       "rotated.mp4": (6, 24, 16), "short.mp4": (2, 16, 24)}

    sampler = BucketBatchSampler(dataset.buckets, batch_size=2, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    seen = []
    for batch in loader:
        pixels = batch["pixel_values"]
        assert pixels.dtype == torch.float32 and pixels.shape[:2] == (len(batch["path"]), 3)
        assert -1.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.9
        assert {tuple(pixels.shape[2:])} == {buckets[Path(p).name] for p in batch["path"]}
        seen += batch["path"]
    assert sorted(seen) == sorted(str(r.path) for r in dataset.records) and len(sampler) == 4

    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    sampler.set_epoch(0)
    assert list(sampler) == orders[0] == list(BucketBatchSampler(dataset.buckets, 2, seed=3))
    assert any(o != orders[0] for o in orders[1:])
    with pytest.warns(UserWarning, match=r"drop_last=True drops 3 of 5 items"):
        assert len(BucketBatchSampler(dataset.buckets, 2, drop_last=True)) == 1


@pytest.mark.filterwarnings("ignore")
def test_dataset_upright_rotated_item_and_upscale_policy(clip_dir):
    with pytest.warns(UserWarning, match=r"upscaling .*rotated.mp4"):
        dataset = ClipDataset(clip_dir, 64, 64, num_frames=4, sampling="head")
    item = dataset[[r.path.name for r in dataset.records].index("rotated.mp4")]
    assert item["pixel_values"].shape == (3, 4, 64, 64) and item["caption"] == "a rotated clip"

    with pytest.warns(UserWarning, match=r"skipping .*anim.gif: too small: 42x30"):
        small = ClipDataset(clip_dir, 32, 32, num_frames=4, sampling="head", allow_upscale=False)
    assert sorted(r.path.name for r in small.records) == ["good.mp4", "rotated.mp4", "vfr.mp4"]


def test_images_are_kept_only_for_one_frame_training_or_when_asked(clip_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames1 = ClipDataset(clip_dir, 16, 16, num_frames=1)
        video = ClipDataset(clip_dir, 16, 16, num_frames=4, sampling="head")
        still = ClipDataset(clip_dir, 16, 16, num_frames=4, sampling="head", include_images=True)
    assert "photo.png" in [r.path.name for r in frames1.records]
    assert "photo.png" not in [r.path.name for r in video.records]
    index = [r.path.name for r in still.records].index("photo.png")
    pixels = still[index]["pixel_values"]
    assert pixels.shape == (3, 4, 16, 16) and torch.equal(pixels[:, 0], pixels[:, 3])  # a still clip


def test_random_crops_depend_on_seed_epoch_and_index_only(clip_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = ClipDataset(clip_dir, 16, 16, num_frames=4, sampling="head", crop="random", seed=7)
    good = [r.path.name for r in dataset.records].index("good.mp4")
    first = dataset[good]["pixel_values"]
    assert torch.equal(first, dataset[good]["pixel_values"])
    crops = []
    for epoch in range(1, 5):
        dataset.set_epoch(epoch)
        crops.append(dataset[good]["pixel_values"])
    assert any(not torch.equal(first, c) for c in crops)


def test_a_clip_that_breaks_after_the_scan_raises_naming_the_file(tmp_path, clip_dir):
    (tmp_path / "clip.mp4").write_bytes((clip_dir / "good.mp4").read_bytes())
    (tmp_path / "clip.txt").write_text("a clip")
    dataset = ClipDataset(tmp_path, 16, 16, num_frames=4, sampling="head")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(ClipDecodeError, match=re.escape(str(tmp_path / "clip.mp4"))):
        dataset[0]
