"""`emuvideo render` / `emuvideo.data.shapes.write_clip_folder`: a practice clip folder that `emuvideo finetune
--data` reads back (every clip, its caption), refused before rendering when it cannot be written, and never left
with a half-written file."""

from dataclasses import replace

import pytest

from emuvideo.cli import main
from emuvideo.data import shapes
from emuvideo.data.shapes import DIAGONALS, VIDEO_PAIRS, parse_caption, write_clip_folder
from emuvideo.data.sources import training_data
from emuvideo.training.finetune import finetune_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _finetune_items(folder, num_frames: int, size: int = 64) -> list[dict]:
    """The items `emuvideo finetune --data folder` trains on (data.source: folder, no cache)."""
    cfg = finetune_config()
    cfg = replace(cfg, data=replace(cfg.data, source="folder", root=str(folder), num_frames=num_frames,
                                    cache_dir=None, in_memory=False))
    clips = training_data(cfg, None, None, None, size)
    return [clips[i] for i in range(len(clips))]


def test_finetune_reads_every_clip_and_its_caption(tmp_path):
    folder = tmp_path / "clips"
    paths = write_clip_folder(folder, 5, seed=1, num_frames=8, progress=False)
    assert [p.name for p in paths] == [f"clip{i:05d}.gif" for i in range(5)]
    items = _finetune_items(folder, num_frames=8)
    assert len(items) == 5
    written = {str(p): p.with_suffix(".txt").read_text().strip() for p in paths}
    assert {item["path"]: item["caption"] for item in items} == written
    for item in items:
        assert item["pixel_values"].shape == (3, 8, 64, 64)
        target = parse_caption(item["caption"])  # the shapes world's own phrasing, parsed back
        assert (target["colour"], target["shape"]) in VIDEO_PAIRS


def test_same_seed_same_folder_and_the_options_are_used(tmp_path):
    one = write_clip_folder(tmp_path / "a", 3, seed=7, progress=False)
    two = write_clip_folder(tmp_path / "b", 3, seed=7, progress=False)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    diagonal = write_clip_folder(tmp_path / "d", 4, seed=7, directions=DIAGONALS, size=32, suffix=".mp4",
                                 progress=False)
    assert all(p.suffix == ".mp4" for p in diagonal)
    assert {parse_caption(p.with_suffix(".txt").read_text())["direction"] for p in diagonal} <= set(DIAGONALS)
    assert _finetune_items(tmp_path / "d", num_frames=16, size=32)[0]["pixel_values"].shape == (3, 16, 32, 32)


def test_bad_folders_are_refused_before_rendering(tmp_path, monkeypatch):
    rendered = []
    monkeypatch.setattr(shapes, "render_clip", lambda *a, **k: rendered.append(1))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.mp4").write_bytes(b"x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        write_clip_folder(tmp_path / "full", 2)
    with pytest.raises(ValueError, match="is a file"):
        write_clip_folder(tmp_path / "file", 2)
    with pytest.raises(ValueError, match="cannot be created"):
        write_clip_folder(tmp_path / "file" / "sub", 2)
    with pytest.raises(ValueError, match="num_clips must be an integer >= 1, got 0"):
        write_clip_folder(tmp_path / "new", 0)
    with pytest.raises(ValueError, match="cannot stay inside"):
        write_clip_folder(tmp_path / "new", 2, num_frames=40)
    assert rendered == [] and not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["mine.mp4"]


def test_a_stopped_run_leaves_only_whole_clips_with_captions(tmp_path, monkeypatch):
    from emuvideo.utils import video

    calls = []
    write_gif = video._write_gif

    def stop_while_writing_the_third(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"GIF89a")  # half a file, then Ctrl+C
            raise KeyboardInterrupt
        write_gif(path, frames, fps)

    monkeypatch.setattr(video, "_write_gif", stop_while_writing_the_third)
    with pytest.raises(KeyboardInterrupt):
        write_clip_folder(tmp_path, 5, progress=False)
    gifs = sorted(p.name for p in tmp_path.glob("*.gif"))
    assert gifs == ["clip00000.gif", "clip00001.gif"] and not list(tmp_path.glob(".*"))  # no temporary file left
    assert len(_finetune_items(tmp_path, num_frames=16)) == 2  # both with their caption


def test_the_render_command(tmp_path, capsys):
    assert main(["render", "--out", str(tmp_path / "c"), "--clips", "2", "--frames", "4", "-q"]) == 0
    assert "wrote 2 clips" in capsys.readouterr().out
    assert len(_finetune_items(tmp_path / "c", num_frames=4)) == 2
    assert main(["render", "--out", str(tmp_path / "c"), "--clips", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"emuvideo render: error: clip folder {str(tmp_path / 'c')!r} is not empty: choose a new folder"]
