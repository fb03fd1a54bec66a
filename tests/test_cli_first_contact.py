"""What a newcomer meets first (issue 19): a mistyped value refused before torch loads, a wrong --device in one
line, the subcommand's usage for a typo'd flag, help that names what the wheel holds, Ctrl+C that says what was
written, prompt files with comments, --output-dir that does not clobber, a re-run that does not restart a
training run, and `animate -v`."""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

import emuvideo.pipelines.loading as loading
from emuvideo.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent

FAST = ["--steps", "1", "--num-frames", "1", "--device", "cpu", "-q"]


def _one_line(capsys, command, *expected):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"emuvideo {command}: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def pipe(monkeypatch, tiny_pipeline):
    """The CLI loads the tiny pipeline; `pipe.calls` counts the loads, `pipe.interrupt_at` makes generation
    call number n (1-based) raise KeyboardInterrupt, as Ctrl+C does."""

    class Loaded:
        calls, generated, interrupt_at = 0, 0, None

        def __call__(self, prompt, **kwargs):
            Loaded.generated += 1
            if Loaded.generated == Loaded.interrupt_at:
                raise KeyboardInterrupt
            return tiny_pipeline(prompt, **kwargs)

        def __getattr__(self, name):
            return getattr(tiny_pipeline, name)

    def load(model=None, **kwargs):
        Loaded.calls += 1
        return Loaded()

    monkeypatch.setattr(loading, "load_pipeline", load)
    return Loaded


# ---------------------------------------------------------------------------------------------- before torch
EARLY = """
import json, sys, time
import emuvideo.cli as cli
codes = []
for argv in {cases!r}:
    start = time.perf_counter()
    codes.append((cli.main(argv), time.perf_counter() - start))
print(json.dumps({{"codes": codes, "torch": "torch" in sys.modules}}))
"""

MISTYPED = [
    (["generate", "--prompt", "a cat", "--steps", "-3", "--output", "x.mp4"], "--steps must be >= 1, got -3"),
    (["generate", "--prompt", "a cat", "--device", "gpu", "--output", "x.mp4"],
     "--device 'gpu' is not a device; use auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps"),
    (["animate", "--image", "a.png", "--prompt", "p", "--output", "x.mp4", "--num-frames", "0"],
     "--num-frames must be >= 1, got 0"),
    (["animate", "--image", "a.png", "--prompt", "p", "--output", "x.mp4", "--guidance-text", "nan"],
     "--guidance-text must be a finite number, got nan"),
    (["interpolate", "clip.mp4", "--output", "x.mp4", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["interpolate", "clip.mp4", "--output", "x.mp4", "--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    (["eval", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["eval", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
]


def test_mistyped_numbers_and_devices_are_refused_before_torch_is_imported(tmp_path):
    cases = [argv for argv, _ in MISTYPED]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", EARLY.format(cases=cases)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert [code for code, _ in run["codes"]] == [2] * len(cases) and run["torch"] is False, run
    lines = result.stderr.splitlines()
    assert len(lines) == len(cases) and "Traceback" not in result.stderr, result.stderr
    for line, (argv, expected) in zip(lines, MISTYPED):
        assert line.startswith(f"emuvideo {argv[0]}: error: {expected}"), line
    assert max(seconds for _, seconds in run["codes"]) < 0.5  # no library import: refused at once
    assert list(tmp_path.iterdir()) == []


def test_a_device_torch_knows_but_this_machine_lacks_is_one_line(tmp_path, capsys, pipe):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = ["generate", "--prompt", "a cat", "--output", str(tmp_path / "x.mp4"), "--steps", "1", "--device", "cuda:1"]
    assert main(argv) == 2
    _one_line(capsys, "generate", "--device 'cuda:1': CUDA is not available on this machine")
    assert pipe.calls == 0


# ---------------------------------------------------------------------------------------------- argparse
@pytest.mark.parametrize("argv, usage", [
    (["generate", "--prompt", "a cat", "--promt", "a dog"], "usage: emuvideo generate "),
    (["lora", "merge", "--lora", "a", "--output", "b", "--scale", "2"], "usage: emuvideo lora merge "),
])
def test_a_typod_flag_shows_the_subcommands_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(usage), err
    command = usage.removeprefix("usage: ").strip()
    assert err.splitlines()[-1] == f"{command}: error: unrecognized arguments: {' '.join(argv[-2:])}"


def _options(parser, name="emuvideo"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for pseudo in action._choices_actions:  # the one-line help of each command in `emuvideo --help`
                yield f"{name} {pseudo.dest}", pseudo
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        else:
            yield name, action


def test_no_metavar_is_an_internal_name():
    """`--steps N`, not `--steps NUM_INFERENCE_STEPS`: a metavar argparse derives from a dest that differs from the
    flag would leak the Python name."""
    for command, action in _options(build_parser()):
        if action.option_strings and action.nargs != 0 and action.metavar is None and not action.choices:
            flag = max(action.option_strings, key=len).lstrip("-").replace("-", "_")
            assert action.dest == flag, f"{command} {action.option_strings}: shows {action.dest.upper()}"
    text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for shown in ("--steps N ", "--guidance-text S ", "--image-steps N ", "--height PX ", "--prompt-file FILE "):
        assert shown in text, shown


def test_help_names_only_what_an_installed_wheel_holds():
    """The wheel ships emuvideo/ and its configs (by name), not the repository's docs/, scripts/ or configs/ paths."""
    for command, action in _options(build_parser()):
        for repo_only in ("docs/", "scripts/", "configs/", ".md"):
            assert repo_only not in (action.help or ""), f"{command} {action.option_strings}: {action.help}"


# ---------------------------------------------------------------------------------------------- generate
def test_ctrl_c_during_generate_says_what_was_written_and_exits_130(tmp_path, capsys, pipe):
    out = tmp_path / "videos"
    argv = ["generate", "--prompt", "a red circle", "--prompt", "a blue square", "--output-dir", str(out), *FAST]
    pipe.interrupt_at = 2
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.err == f"emuvideo generate: interrupted; 1 of 2 videos written, the last {out / '000.mp4'}\n"
    assert sorted(p.name for p in out.iterdir()) == ["000.mp4"]

    pipe.generated, pipe.interrupt_at = 0, 1
    assert main([*argv, "--overwrite"]) == 130
    assert capsys.readouterr().err == "emuvideo generate: interrupted; nothing written\n"


def test_prompt_file_skips_comment_lines(tmp_path, capsys, pipe):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# today's prompts\na red circle\n  # a blue square (not today)\n\n")
    out = tmp_path / "videos"
    assert main(["generate", "--prompt-file", str(prompts), "--output-dir", str(out), *FAST]) == 0
    assert pipe.generated == 1 and capsys.readouterr().out.splitlines() == [str(out / "000.mp4")]


def test_output_dir_refuses_to_replace_files_unless_overwrite(tmp_path, capsys, pipe):
    out = tmp_path / "videos"
    out.mkdir()
    (out / "001.png").write_bytes(b"an earlier first frame")
    (out / "keep.txt").write_text("not ours")
    argv = ["generate", "--prompt", "a", "--prompt", "b", "--output-dir", str(out), "--save-image", *FAST]
    assert main(argv) == 2
    _one_line(capsys, "generate", f"--output-dir '{out}' already holds 001.png", "--overwrite")
    assert pipe.calls == 0 and (out / "001.png").read_bytes() == b"an earlier first frame"

    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.mp4", "000.png", "001.mp4", "001.png", "keep.txt"]
    assert (out / "001.png").read_bytes() != b"an earlier first frame"


# ---------------------------------------------------------------------------------------------- animate
def test_animate_verbose_logs_what_was_done_to_the_image(tmp_path, caplog, pipe, monkeypatch):
    monkeypatch.setattr(logging.getLogger("emuvideo"), "level", logging.NOTSET)  # -v sets it; undone after
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red, 30 wide, 20 high
    image = tmp_path / "start.png"
    PIL.Image.fromarray(rgba).save(image)
    argv = ["animate", "--image", str(image), "--prompt", "it moves", "--output", str(tmp_path / "a.mp4"), *FAST]

    assert main(argv) == 0
    assert not [r for r in caplog.records if r.name.startswith("emuvideo") and r.levelno == logging.INFO]

    assert main([*argv, "-v"]) == 0
    said = [r.getMessage() for r in caplog.records if r.name.startswith("emuvideo") and r.levelno == logging.INFO]
    read = [m for m in said if m.startswith("--image ")]
    assert read == [f"--image {image}: 30x20 RGBA; transparency composited on white, converted from RGBA to RGB"]
    assert any("30x20" in m and "16x16" in m for m in said if m not in read), said  # the pipeline's resize and crop


# ---------------------------------------------------------------------------------------------- training
def _earlier_run(folder):
    checkpoint = folder / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 4}')
    return checkpoint


def test_training_again_into_a_folder_with_checkpoints_needs_resume(tmp_path, capsys, monkeypatch):
    import emuvideo.training.finetune as finetune
    import emuvideo.training.stages as stages

    started, done = [], SimpleNamespace(step=4, last_loss=0.5, output_dir=tmp_path / "run")
    monkeypatch.setattr(stages, "run_stage", lambda cfg, resume=None: started.append(("train", resume)) or done)
    monkeypatch.setattr(finetune, "run_finetune", lambda cfg, data, model=None, resume=None:
                        started.append(("finetune", resume)) or done)
    run, clips = tmp_path / "run", tmp_path / "clips"
    clips.mkdir()
    config = tmp_path / "ae.yaml"
    config.write_text(f"kind: autoencoder\npreset: tiny\noutput_dir: {run}\n")
    _earlier_run(run)
    train = ["train", "--config", str(config)]
    tune = ["finetune", "--data", str(clips), "--output-dir", str(run)]

    assert main(train) == 2
    _one_line(capsys, "train", f"output folder '{run}' holds an earlier run (up to checkpoint-4)",
              "pass --resume latest to continue it, or choose a new folder (--set output_dir=DIR)")
    assert main(tune) == 2
    _one_line(capsys, "finetune", "--resume latest", "(--output-dir DIR)")
    assert started == []  # refused before anything was built

    assert main([*train, "--resume", "latest"]) == 0 and main([*tune, "--resume", "latest"]) == 0
    assert main([*train, "--set", f"output_dir={tmp_path / 'new'}"]) == 0
    assert started == [("train", "latest"), ("finetune", "latest"), ("train", None)]
