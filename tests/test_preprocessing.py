"""One preprocessing path: a file gives the same tensor to training (`ClipDataset`) as to inference (`animate
--image`: `load_image` then `preprocess_image`; `interpolate` and `eval --videos`: `read_frames`, then the
interpolation pipeline's input conversion) — rotation, mode, bit depth, alpha and the resizer included."""

import struct
import warnings
import zlib
from types import SimpleNamespace

import av
import numpy as np
import PIL.Image
import pytest
import torch

from emuvideo.data.clips import ClipDataset, scan_clips
from emuvideo.pipelines.common import preprocess_image
from emuvideo.preprocessing import read_video, resize_and_crop, to_pixels
from emuvideo.utils.video import load_image, read_frames

SIZE = 16  # the model's size: every test image is resized to it (shrunk or enlarged)


def _png16_rgba(path, rgba):
    """A 16-bit RGBA PNG (colour type 6), written by hand: Pillow cannot save one."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = rgba.shape
    rows = b"".join(b"\0" + rgba[i].astype(">u2").tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return (x * 7 + y * 3) % 256  # fine detail, so that two resizers would not agree


def _images(root):
    """name -> what the upright 8-bit picture must show, checked on the training item."""
    grey16 = (_gradient(24, 40) * 257).astype(np.uint16)
    grey16[:, :20] = 32768  # mid-grey: Pillow's own convert("RGB") clips it to white
    grey16[:4] = 1000  # the tRNS value: see-through
    PIL.Image.fromarray(grey16).save(root / "grey16.png", transparency=1000)

    rgba = np.zeros((24, 40, 4), np.uint16)
    rgba[..., 0] = _gradient(24, 40) * 257
    rgba[..., 3] = 65535
    rgba[:, 20:, 3] = 0  # the right half is transparent (and black underneath)
    _png16_rgba(root / "rgba16.png", rgba)

    palette = PIL.Image.new("P", (12, 10))  # smaller than SIZE: enlarged
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0: red (transparent), 1: blue
    palette.putdata([int(i % 3 == 0) for i in range(120)])
    palette.save(root / "palette.png", transparency=0)

    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:, :24] = [255, 0, 0]  # left half red: on top once upright
    stored[:, 24:, 2] = _gradient(32, 24)
    for orientation in (6, 5):  # "rotate 90 CW" (phones), "transpose" (mirrored)
        exif = PIL.Image.Exif()
        exif[0x0112] = orientation
        PIL.Image.fromarray(stored).save(root / f"exif{orientation}.jpg", exif=exif, quality=95)

    for name in ("grey16.png", "rgba16.png", "palette.png", "exif6.jpg", "exif5.jpg"):
        (root / name).with_suffix(".txt").write_text(f"a {name}")


def test_an_image_file_gives_training_and_animate_the_same_tensor(tmp_path):
    _images(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the palette image is upscaled, with a warning
        dataset = ClipDataset(tmp_path, SIZE, SIZE, num_frames=1)
    items = {r.path.name: dataset[i]["pixel_values"] for i, r in enumerate(dataset.records)}
    assert len(items) == 5
    for name, trained in items.items():
        assert trained.shape == (3, 1, SIZE, SIZE)
        animated, _ = preprocess_image(load_image(tmp_path / name), SIZE, SIZE)  # what `animate --image` does
        assert torch.equal(trained[:, 0], animated[0]), name
        with PIL.Image.open(tmp_path / name) as raw:  # an image handed to the pipeline from Python
            assert torch.equal(preprocess_image(raw, SIZE, SIZE)[0][0], animated[0]), name

    pixels = {name: ((x[:, 0] + 1) * 127.5).round().permute(1, 2, 0).numpy() for name, x in items.items()}
    assert (pixels["grey16.png"][0] >= 250).all()  # the 16-bit tRNS value, composited on white
    assert (np.abs(pixels["grey16.png"][8:, 2] - 128) <= 1).all()  # mid-grey rescaled, not clipped
    assert (pixels["rgba16.png"][:, -2:] >= 250).all()  # transparent black -> white
    assert (pixels["palette.png"][..., 0] <= pixels["palette.png"][..., 2]).all()  # the red index is see-through
    for name in ("exif6.jpg", "exif5.jpg"):  # upright: the stored left half (red) is on top
        assert pixels[name][1, SIZE // 2, 0] > 200 and pixels[name][1, SIZE // 2, 2] < 60, name
    # The scan's upright size (buckets are chosen from it) is the size the item is read at.
    for record in scan_clips(tmp_path).kept:
        assert (record.width, record.height) == load_image(record.path).size, record.path.name


def _rotated_clip(path, frames, rotation):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"bf": "0", "qp": "0"})  # lossless
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv444p"
        stream.set_display_rotation(rotation)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.skipif(not hasattr(av.VideoStream, "set_display_rotation"), reason="PyAV cannot write a display matrix")
def test_a_rotated_clip_gives_training_interpolate_and_eval_the_same_tensor(tmp_path):
    stored = np.zeros((3, 32, 48, 3), np.uint8)  # 48 wide as stored, marked in its top-left corner
    stored[:, :8, :8] = 255
    stored[:, 8:, 8:, 1] = _gradient(24, 40)
    _rotated_clip(tmp_path / "phone.mp4", stored, rotation=-90)  # shown turned 90 deg clockwise
    (tmp_path / "phone.txt").write_text("a phone clip")

    frames, fps = read_frames(tmp_path / "phone.mp4")  # what `interpolate` and `eval --videos` read
    assert frames.shape == (3, 48, 32, 3) and fps == 8.0
    assert frames[0, :8, -8:].mean() > 250  # upright: the marked corner is now top-right
    dataset = ClipDataset(tmp_path, 48, 32, num_frames=3, sampling="head")  # the upright size: no resize
    trained = dataset[0]["pixel_values"]
    assert torch.equal(trained, to_pixels(frames))

    from emuvideo.pipelines.interpolation import EmuInterpolationPipeline

    square = resize_and_crop(frames, 32, 32)  # the interpolation model takes square clips
    keys = EmuInterpolationPipeline._key_pixels(SimpleNamespace(size=32), square)  # (1, 3, T, H, W)
    assert torch.equal(keys[0], ClipDataset(tmp_path, 32, 32, num_frames=3, sampling="head")[0]["pixel_values"])
    as_pil = EmuInterpolationPipeline._key_pixels(SimpleNamespace(size=32), [PIL.Image.fromarray(f) for f in square])
    assert torch.equal(as_pil, keys)


def test_one_resizer_shrinks_with_lanczos_and_enlarges_with_bicubic():
    frames = _gradient(24, 40).astype(np.uint8)[None, ..., None].repeat(3, -1)  # (1, 24, 40, 3)
    small = PIL.Image.fromarray(frames[0]).resize((27, 16), PIL.Image.Resampling.LANCZOS)
    assert np.array_equal(resize_and_crop(frames, 16, 16)[0], np.asarray(small)[:, 5:21])
    big = PIL.Image.fromarray(frames[0]).resize((80, 48), PIL.Image.Resampling.BICUBIC)
    assert np.array_equal(resize_and_crop(frames, 48, 48)[0], np.asarray(big)[:, 16:64])


def test_a_transparent_pil_frame_handed_to_interpolation_is_composited_on_white():
    from emuvideo.pipelines.interpolation import EmuInterpolationPipeline

    clear = PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # transparent red
    keys = EmuInterpolationPipeline._key_pixels(SimpleNamespace(size=8), [clear, clear])
    assert torch.equal(keys, torch.ones_like(keys))  # white, as `animate` shows the same image


def test_reading_every_frame_takes_no_fps_and_no_even_sampling(tmp_path):
    for kwargs in ({"fps": 5}, {"sampling": "even"}):
        with pytest.raises(ValueError, match="num_frames=None reads every native frame"):
            read_video(tmp_path / "x.mp4", **kwargs)


def test_an_image_animate_refuses_as_a_bomb_is_skipped_by_the_training_scan(tmp_path, monkeypatch):
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; `load_image` refuses from the limit, so the
    scan does too (rather than keep the image and fail on reading it mid-training)."""
    PIL.Image.new("RGB", (30, 30)).save(tmp_path / "big.png")
    PIL.Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    for name in ("big", "small"):
        (tmp_path / f"{name}.txt").write_text(f"a {name} image")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 600)  # big: 900 pixels, over the limit, under twice it
    with pytest.warns(UserWarning, match=r"big.png: corrupt: DecompressionBombError"):
        report = scan_clips(tmp_path)
    assert [r.path.name for r in report.kept] == ["small.png"]
