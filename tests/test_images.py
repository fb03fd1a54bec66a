"""Images in: every mode and bit depth comes out as the 8-bit RGB a viewer shows; bad files and arrays are
refused in one line naming them. (`load_image` reads files for `emuvideo animate`; `preprocess_image` takes
what Python callers pass to `image_to_video`.)"""

import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from emuvideo.pipelines.common import preprocess_image
from emuvideo.utils.video import array_to_image, load_image, to_rgb


def _saved(tmp_path, image, name="image.png", **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _pixels(image):
    assert image.mode == "RGB"
    return np.asarray(image)


# ---------------------------------------------------------------------------------------------- bit depth
@pytest.mark.parametrize("value, expected", [(0, 0), (32768, 128), (65535, 255), (257 * 200, 200)])
def test_16_bit_grey_png_is_rescaled_not_clipped(tmp_path, value, expected):
    """Pillow's own convert("RGB") clips 16-bit values at 255: a mid-grey 32768 would come out white."""
    path = _saved(tmp_path, PIL.Image.fromarray(np.full((6, 5), value, np.uint16)))
    with PIL.Image.open(path) as raw:
        assert raw.mode == "I;16"  # what a 16-bit grey PNG opens as
    assert (_pixels(load_image(path)) == expected).all()


def test_16_bit_gradient_keeps_its_order_and_range(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)[None].repeat(3, 0)
    out = _pixels(load_image(_saved(tmp_path, PIL.Image.fromarray(ramp))))[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out) >= 0).all()
    assert np.abs(out - np.arange(256)).max() <= 1  # a linear ramp stays linear


@pytest.mark.parametrize(
    "image, expected",
    [
        (PIL.Image.fromarray(np.full((4, 4), 32768, np.int32)), 128),  # 32-bit "I", read as 16-bit range
        (PIL.Image.fromarray(np.full((4, 4), 0.5, np.float32)), 128),  # float "F", [0, 1]
        (PIL.Image.fromarray(np.full((4, 4), 100, np.uint8)), 100),  # plain 8-bit grey
    ],
    ids=["I", "F", "L"],
)
def test_grey_modes_map_to_the_same_grey(image, expected):
    assert (_pixels(to_rgb(image)) == expected).all()


# ---------------------------------------------------------------------------------------------- colour modes
def test_palette_with_transparency_is_composited_on_white(tmp_path):
    palette = PIL.Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0: red, index 1: blue
    palette.putdata([0, 0, 1, 1, 0, 0, 1, 1])
    path = _saved(tmp_path, palette, transparency=0)  # red is the transparent colour
    out = _pixels(load_image(path))
    assert (out[:, :2] == 255).all()  # transparent -> white, not red
    assert (out[:, 2:] == [0, 0, 255]).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    rgba = np.zeros((2, 3, 4), np.uint8)  # black everywhere
    rgba[:, 0, 3] = 0  # transparent
    rgba[:, 1, 3] = 255  # opaque
    rgba[:, 2, 3] = 128  # half
    image = PIL.Image.fromarray(rgba).convert(mode)
    out = _pixels(load_image(_saved(tmp_path, image))).astype(int)
    assert (out[:, 0] == 255).all() and (out[:, 1] == 0).all()
    assert (np.abs(out[:, 2] - 127) <= 1).all()


def test_cmyk_jpeg_comes_out_in_rgb(tmp_path):
    cyan = PIL.Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    out = _pixels(load_image(_saved(tmp_path, cyan, "cyan.jpg", quality=100))).astype(int)
    assert (np.abs(out - [0, 255, 255]) <= 3).all()


def test_one_bit_image_is_black_and_white(tmp_path):
    bits = PIL.Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    out = _pixels(load_image(_saved(tmp_path, bits)))
    assert (out[0, 0] == 0).all() and (out[0, 1] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    """A phone stores a portrait photo landscape + "rotate 90° clockwise to view" (orientation 6)."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = [255, 0, 0]  # left half red
    stored[:, 20:] = [0, 0, 255]  # right half blue
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = _saved(tmp_path, PIL.Image.fromarray(stored), "phone.jpg", exif=exif, quality=95)
    out = _pixels(load_image(path)).astype(int)
    assert out.shape == (40, 20, 3)  # upright: taller than wide
    assert (np.abs(out[5, 10] - [255, 0, 0]) < 40).all()  # the left of the stored image is now the top
    assert (np.abs(out[35, 10] - [0, 0, 255]) < 40).all()
    # the same for a PIL image handed to the pipeline from Python
    with PIL.Image.open(path) as raw:
        x, _ = preprocess_image(raw, 40, 20)
    assert x.shape == (1, 3, 40, 20) and x[0, 0, 5, 10] > 0.5 and x[0, 2, 35, 10] > 0.5


def test_16_bit_pil_image_from_python_is_rescaled_by_preprocess_image():
    x, _ = preprocess_image(PIL.Image.fromarray(np.full((8, 8), 32768, np.uint16)), 8, 8)
    assert torch.allclose(x, torch.full_like(x, 128 / 127.5 - 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------- arrays
@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((4, 4, 3), 128, np.uint8), [128, 128, 128]),
        (np.full((4, 4), 32768, np.uint16), [128, 128, 128]),
        (np.full((4, 4, 3), 32768, np.uint16), [128, 128, 128]),
        (np.full((4, 4, 3), 0.5, np.float32), [128, 128, 128]),
        (np.full((4, 4, 1), 200, np.uint8), [200, 200, 200]),
        (np.ones((4, 4), bool), [255, 255, 255]),
        (np.zeros((4, 4, 4), np.uint8), [255, 255, 255]),  # transparent black -> white
    ],
    ids=["uint8 rgb", "uint16 grey", "uint16 rgb", "float rgb", "uint8 (H,W,1)", "bool", "uint8 rgba"],
)
def test_arrays_of_every_dtype_map_to_the_grey_they_mean(array, expected):
    assert (_pixels(to_rgb(array_to_image(array))) == expected).all()
    x, _ = preprocess_image(array, 4, 4)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected) / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "image, expected",
    [
        (np.full((4, 4, 3), 1.5, np.float32), "[0, 1]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 3, np.int64), "int64"),
        (np.zeros((4, 4, 2), np.uint8), "(4, 4, 2)"),
        (np.zeros((0, 4, 3), np.uint8), "(0, 4, 3)"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (torch.zeros(4, 4), "(4, 4)"),
        ("image.png", "str"),
    ],
    ids=["float above 1", "float NaN", "int64", "two channels", "empty", "tensor NaN", "tensor 2-D", "a path string"],
)
def test_bad_arrays_and_types_are_refused_naming_what_is_wrong(image, expected):
    with pytest.raises(ValueError, match="image") as err:
        preprocess_image(image, 4, 4)
    assert expected in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- bad files
def _png_claiming(width, height):
    """A valid PNG header claiming width x height 8-bit grey, with a tiny (inconsistent) body."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _truncated(tmp_path, name, fmt):
    full = tmp_path / f"full.{fmt}"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    data = full.read_bytes()
    full.unlink()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "missing": (lambda d: d / "missing.png", "does not exist"),
    "a folder": (lambda d: (d / "folder.png").mkdir() or d / "folder.png", "is not a file"),
    "not an image": (lambda d: (d / "notes.png").write_text("hello") and d / "notes.png", "cannot be read"),
    "empty file": (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png", "cannot be read"),
    "truncated png": (lambda d: _truncated(d, "cut.png", "png"), "cannot be read"),
    "truncated jpeg": (lambda d: _truncated(d, "cut.jpg", "jpeg"), "cannot be read"),
    "decompression bomb": (
        lambda d: (d / "bomb.png").write_bytes(_png_claiming(50_000, 50_000)) and d / "bomb.png",
        "decompression bomb",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_image_files_are_refused_in_one_line_naming_the_file(tmp_path, case):
    make, expected = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(ValueError) as err:
        load_image(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_an_image_between_the_warning_and_the_error_limit_is_refused_too(tmp_path, monkeypatch):
    """Pillow only warns (DecompressionBombWarning) up to twice MAX_IMAGE_PIXELS; we refuse from the limit."""
    path = _saved(tmp_path, PIL.Image.new("RGB", (30, 30)))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 600)  # 900 pixels: over the limit, under twice it
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(path).size == (30, 30)
