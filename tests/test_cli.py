"""The `emuvideo` command: real files on success; on bad input, exit code 2, one line, no file."""

import shutil
import subprocess
import sys

import av
import numpy as np
import PIL.Image
import pytest

import emuvideo
import emuvideo.pipelines.loading as loading
import emuvideo.utils.video as video_io
from emuvideo.cli import main
from emuvideo.models.presets import get_preset


# ---------------------------------------------------------------------------------------------- end to end
def test_console_script_writes_h264_on_the_shipped_default(tmp_path):
    """The installed script, in its own process, on the default model (random if no weights are shipped)."""
    exe = shutil.which("emuvideo")
    assert exe, "the emuvideo console script is not installed (pip install -e .)"
    out = tmp_path / "clip.mp4"
    args = ["generate", "--prompt", "a red circle moves right", "--steps", "2", "--num-frames", "4", "--fps", "6"]
    result = subprocess.run(
        [exe, *args, "--output", str(out), "--device", "cpu", "-q"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(out)]
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 6
        assert len(list(container.decode(stream))) == 4
    preset = get_preset("default")
    size = preset.unet["sample_size"] * 2 ** (len(preset.vae["block_out_channels"]) - 1)  # latent size x VAE factor
    assert (stream.width, stream.height) == (size, size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


# ---------------------------------------------------------------------------------------------- start-up
STARTUP = """
import gc, sys
import emuvideo.cli as cli
print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
cli._import_library()
print("diffusers" in sys.modules, gc.isenabled(), gc.get_freeze_count() > 0)
"""


@pytest.mark.slow
def test_cli_imports_the_library_only_to_run_a_command_and_leaves_the_collector_on():
    """`--help` and argument errors stay instant; the import pauses the collector and then restores it."""
    result = subprocess.run([sys.executable, "-c", STARTUP], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True True True"]


def test_package_names_resolve_on_first_use():
    assert emuvideo.load_pipeline is loading.load_pipeline
    assert emuvideo.EmuVideoPipeline.__name__ == "EmuVideoPipeline"
    assert set(emuvideo.__all__) <= set(dir(emuvideo))
    with pytest.raises(AttributeError, match="no attribute 'load_pipline'"):
        emuvideo.load_pipline  # noqa: B018


# ---------------------------------------------------------------------------------------------- in process
class RecordingPipeline:
    """The tiny pipeline, logging each call's prompt into a shared event log."""

    def __init__(self, pipe, log):
        self.pipe, self.log = pipe, log

    def __call__(self, prompt, **kwargs):
        self.log.append(("generate", prompt, kwargs.get("num_frames")))
        return self.pipe(prompt, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@pytest.fixture()
def events(monkeypatch, tiny_pipeline):
    """Make the CLI load the tiny pipeline; return the log of generate calls and file writes, in order."""
    log = []

    def load(model=None, device="cpu", dtype=None, attention=None, **options):  # variant, allow_pickle, sampler: off
        assert model is None and device == "cpu" and attention == "auto" and not any(options.values())
        return RecordingPipeline(tiny_pipeline, log)

    real_write = video_io.write_video

    def write(path, frames, fps):
        log.append(("write", path.name, fps))
        return real_write(path, frames, fps)

    monkeypatch.setattr(loading, "load_pipeline", load)
    monkeypatch.setattr(video_io, "write_video", write)
    return log


FAST = ["--steps", "1", "--device", "cpu", "-q"]


def test_gif_when_the_extension_says_so(tmp_path, capsys, events):
    out = tmp_path / "clip.gif"
    assert main(["generate", "--prompt", "a blue square", "--num-frames", "3", "--fps", "4", "--output", str(out), *FAST]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out)]
    with PIL.Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3 and gif.info["duration"] == 250 and gif.size == (16, 16)
    assert events == [("generate", "a blue square", 3), ("write", "clip.gif", 4)]


def test_output_dir_writes_one_numbered_video_per_prompt_in_order(tmp_path, capsys, events):
    out_dir = tmp_path / "videos"  # created on demand
    prompts = ["first: a red circle", "second: a green triangle"]
    argv = ["generate", "--prompt", prompts[0], "--prompt", prompts[1], "--num-frames", "2", "--output-dir", str(out_dir)]
    assert main(argv + FAST) == 0
    paths = [out_dir / "000.mp4", out_dir / "001.mp4"]
    assert capsys.readouterr().out.splitlines() == [str(p) for p in paths]
    # Prompt i's video is generated, then written to i's file, before prompt i+1 starts.
    assert events == [
        ("generate", prompts[0], 2),
        ("write", "000.mp4", 8),  # the model's default fps
        ("generate", prompts[1], 2),
        ("write", "001.mp4", 8),
    ]
    for path in paths:
        frames, fps = video_io.read_frames(path)
        assert frames.shape == (2, 16, 16, 3) and fps == 8


def test_prompt_file_one_prompt_a_line(tmp_path, capsys, events):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("  a red circle  \n\n a blue square\n")
    argv = ["generate", "--prompt-file", str(prompt_file), "--num-frames", "1", "--format", "gif"]
    assert main(argv + ["--output-dir", str(tmp_path / "out"), *FAST]) == 0
    assert [e[1] for e in events if e[0] == "generate"] == ["a red circle", "a blue square"]
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "out" / n) for n in ("000.gif", "001.gif")]


def test_animate_writes_the_requested_frames(tmp_path, capsys, events):
    image = tmp_path / "start.png"
    PIL.Image.fromarray(np.full((20, 30, 3), 180, np.uint8)).save(image)  # not square: resized and cropped
    out = tmp_path / "moving.mp4"
    argv = ["animate", "--image", str(image), "--prompt", "it moves", "--num-frames", "3", "--output", str(out)]
    assert main(argv + FAST) == 0
    assert capsys.readouterr().out.splitlines() == [str(out)]
    frames, fps = video_io.read_frames(out)
    assert frames.shape == (3, 16, 16, 3) and fps == 8


def test_info_names_the_default_model_and_attention_backend(capsys):
    assert main(["info"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert str(loading.default_model_dir()) in lines["default model"]
    active, available = lines["attention"].split()[0], lines["attention"].split(": ", 1)[1]
    assert active in ("sdpa", "xformers") and available.startswith("sdpa, math")


# ---------------------------------------------------------------------------------------------- bad input
def _garbage_png(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"\x89PNG but not really" + bytes(range(256)))
    return path


BAD = {
    "missing image": (["animate", "--image", "{tmp}/missing.png", "--prompt", "a cat"], "missing.png"),
    "unreadable image": (["animate", "--image", "GARBAGE", "--prompt", "a cat"], "garbage.png"),
    "empty prompt": (["generate", "--prompt", ""], "--prompt must be non-empty text, got ''"),
    "blank animate prompt": (["animate", "--image", "GARBAGE", "--prompt", "  "], "got '  '"),
    "unknown model path": (["generate", "--prompt", "a cat", "--model", "{tmp}/no/such/model"], "no/such/model"),
    "zero frames": (["generate", "--prompt", "a cat", "--num-frames", "0"], "--num-frames must be >= 1, got 0"),
    "height not a multiple": (["generate", "--prompt", "a cat", "--height", "60"], "got 60"),
    "zero steps": (["generate", "--prompt", "a cat", "--steps", "0"], "--steps must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_no_file(tmp_path, capsys, case):
    argv, expected = BAD[case]
    out, garbage = tmp_path / "out.mp4", _garbage_png(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("GARBAGE", str(garbage)) for a in argv]
    argv += ["--output", str(out), "--device", "cpu", "-q"] + ([] if "--steps" in argv else ["--steps", "1"])
    assert main(argv) == 2
    _assert_one_line_error(capsys, argv[0], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.png"]  # out.mp4 absent, no temp file


@pytest.mark.parametrize(
    "argv, expected, path",
    [
        (["--prompt", "a cat", "--output", "{tmp}/clip.txt"], "clip.txt", "clip.txt"),
        (["--prompt", "a cat", "--prompt", "a dog", "--output", "{tmp}/clip.mp4"], "2 prompts", "clip.mp4"),
        (["--prompt", "a cat"], "--output", None),
    ],
    ids=["txt suffix", "output with two prompts", "no output"],
)
def test_bad_output_exits_2_with_one_line_and_no_file(tmp_path, capsys, argv, expected, path):
    argv = ["generate"] + [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--device", "cpu", "-q"]
    assert main(argv) == 2
    _assert_one_line_error(capsys, "generate", expected)
    assert list(tmp_path.iterdir()) == []


def _assert_one_line_error(capsys, command, expected):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"emuvideo {command}: error: ") and expected in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


# ---------------------------------------------------------------------------------------------- first contact
def test_version_and_a_help_that_says_what_the_tool_does(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"emuvideo {emuvideo.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Text-to-video" in capsys.readouterr().out


def _all_options(parser, name="emuvideo"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_options(sub, f"{name} {sub_name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield name, action


def test_every_flag_has_help_and_says_its_default():
    from emuvideo.cli import build_parser

    options = list(_all_options(build_parser()))
    assert len(options) > 50
    for command, action in options:
        flag = f"{command} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{flag} has no help text"
        if action.default not in (None, False, [], "==SUPPRESS=="):
            assert "default" in action.help, f"{flag} does not say its default {action.default!r}"


def test_info_names_the_versions_a_bug_report_needs(capsys):
    assert main(["info"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    for name in ("python", "torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "PyAV", "Pillow"):
        assert lines[name].strip() and lines[name].strip() != "not installed", name
    assert "all-MiniLM-L6-v2" in lines["text encoder"]
