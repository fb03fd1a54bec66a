"""Video files: H.264 mp4 and gif round trips, odd sizes, and atomic writes."""

import av
import numpy as np
import PIL.Image
import pytest

from emuvideo.utils.video import load_image, read_frames, write_video


def smooth_clip(t: int, h: int, w: int) -> np.ndarray:
    """(T, H, W, 3) uint8: colour gradients drifting a little each frame (easy for a codec, not constant)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(t):
        r = 128 + 100 * np.sin((x + 2 * i) / w * np.pi)
        g = 128 + 100 * np.cos((y - i) / h * np.pi)
        b = 60 + 120 * (x + y) / (h + w)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_mp4_round_trip(tmp_path):
    clip = smooth_clip(6, 32, 48)
    path = write_video(tmp_path / "clip.mp4", clip, fps=12)
    assert path == tmp_path / "clip.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 12
        assert stream.codec_context.pix_fmt == "yuv420p"
    frames, fps = read_frames(path)
    assert frames.shape == clip.shape and fps == 12.0
    assert psnr(frames, clip) >= 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary file left behind


def test_gif_round_trip(tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250]], dtype=np.uint8)
    clip = np.broadcast_to(colours[:, None, None, :], (4, 10, 14, 3)).copy()
    clip[:, 2:5, 3:9] = 0  # a black box, so each frame has some structure
    path = write_video(tmp_path / "clip.GIF", clip, fps=5)  # the extension decides, in any case
    with PIL.Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (14, 10)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        for i in range(4):
            gif.seek(i)
            assert np.array_equal(np.asarray(gif.convert("RGB")), clip[i])  # few colours: lossless


@pytest.mark.parametrize("h, w", [(15, 17), (16, 17), (15, 16)])
def test_odd_sizes_are_padded_for_h264(tmp_path, h, w):
    clip = smooth_clip(3, h, w)
    frames, _ = read_frames(write_video(tmp_path / "odd.mp4", clip, fps=8))
    assert frames.shape == (3, h + h % 2, w + w % 2, 3)
    # The picture stays at the top left, unscaled, edge included: the padding repeats the last row/column,
    # so the 2x2 chroma samples it shares with the edge keep the edge's colour.
    assert psnr(frames[:, :h, :w], clip) >= 30
    if h % 2:
        assert psnr(frames[:, h:, :w], clip[:, h - 1 :, :]) >= 30  # the padded row repeats the last one
    if w % 2:
        assert psnr(frames[:, :h, w:], clip[:, :, w - 1 :]) >= 30


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    real = av.VideoFrame.from_ndarray
    calls = []

    def fail_on_second_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("encoder crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_on_second_frame)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(tmp_path / "clip.mp4", smooth_clip(4, 16, 16), fps=8)
    assert len(calls) == 2  # it did fail midway, after a frame was encoded
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.gif", smooth_clip(2, 8, 8), fps=4)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_video(path, smooth_clip(3, 8, 8), fps=4)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]


@pytest.mark.parametrize(
    "name, frames, fps, message",
    [
        ("a.txt", np.zeros((2, 8, 8, 3), np.uint8), 8, "a.txt"),
        ("a.mp4", np.zeros((2, 8, 8, 3), np.float32), 8, "float32"),
        ("a.mp4", np.zeros((8, 8, 3), np.uint8), 8, r"\(8, 8, 3\)"),
        ("a.mp4", np.zeros((2, 8, 8, 3), np.uint8), 0, "got 0"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path, name, frames, fps, message):
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / name, frames, fps)
    assert list(tmp_path.iterdir()) == []


def test_load_image_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "garbage.png").write_bytes(b"\x00not an image\xff" * 10)
    with pytest.raises(ValueError, match="garbage.png.*cannot be read"):
        load_image(tmp_path / "garbage.png")
    PIL.Image.new("L", (5, 3), 200).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (5, 3)
