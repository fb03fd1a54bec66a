"""Training runs refuse bad settings before they start, resume past a damaged checkpoint, keep one run per
output folder, stop cleanly on Ctrl+C, log their config to TensorBoard and cache latents in the user cache dir.

Most tests run the real `Trainer` on a one-layer model (milliseconds a step); the CLI tests stop at the checks.
"""

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from emuvideo.cli import main
from emuvideo.config import load_config, parse_overrides
from emuvideo.data.cache import default_cache_dir
from emuvideo.training.config import DataConfig, TrainConfig
from emuvideo.training.trainer import (
    Trainer,
    TrainingInterrupted,
    checkpoint_problem,
    checkpoints,
    hparams,
    run_lock,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound

RUN = ["batch_size=2", "max_steps=4", "checkpoint_every=2", "keep_last=5", "sample_every=0", "log_every=1",
       "optim.warmup_steps=0"]


def _cfg(tmp_path, *pairs) -> TrainConfig:
    return load_config(TrainConfig, None, parse_overrides([f"output_dir={tmp_path / 'run'}", *RUN, *pairs]))


def _train(cfg, resume=None, hook=None):
    """Train a Linear(3, 1) on 4 fixed vectors; `hook(step)` runs inside each loss computation."""
    calls = []

    def loss_fn(model, x):
        calls.append(None)
        if hook is not None:
            hook(len(calls))
        return model(x).pow(2).mean()

    data = [torch.full((3,), float(i)) for i in range(4)]
    torch.manual_seed(0)
    return Trainer(cfg, torch.nn.Linear(3, 1), loss_fn, data).train(resume=resume)


def _logged_steps(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "losses.csv").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("args, message", [
    (["--max-steps", "0"], "max_steps must be >= 1, got 0"),
    (["--max-steps", "-5"], "max_steps must be >= 1, got -5"),
    (["--set", "checkpoint_every=0"], "checkpoint_every must be >= 1, got 0"),
    (["--set", "checkpoint_every=-2"], "checkpoint_every must be >= 1, got -2"),
    (["--set", "sample_every=-1"], "sample_every must be >= 0, got -1"),
    (["--set", "batch_size=0"], "batch_size must be >= 1, got 0"),
    (["--set", "gradient_accumulation_steps=0"], "gradient_accumulation_steps must be >= 1, got 0"),
    (["--set", "keep_last=0"], "keep_last must be >= 1, got 0"),
    (["--set", "optim.lr=0"], "optim.lr must be a finite number > 0, got 0"),
    (["--set", "optim.lr=-0.0001"], "optim.lr must be a finite number > 0, got -0.0001"),
    (["--set", "optim.lr=.nan"], "optim.lr must be a finite number > 0, got nan"),
    (["--set", "optim.lr=.inf"], "optim.lr must be a finite number > 0, got inf"),
    (["--set", "optim.warmup_steps=-1"], "optim.warmup_steps must be >= 0, got -1"),
    (["--set", "data.num_frames=0"], "data.num_frames must be >= 1, got 0"),
    (["--set", "image_dropout=1.5"], "image_dropout must be in [0, 1], got 1.5"),
    (["--set", "max_minutes=-1"], "max_minutes must be >= 0, got -1"),
])
def test_bad_run_settings_end_in_one_line_before_anything_starts(tmp_path, capsys, args, message):
    config = tmp_path / "ae.yaml"
    config.write_text(f"kind: autoencoder\npreset: tiny\noutput_dir: {tmp_path / 'run'}\n")
    assert main(["train", "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the output folder, the models or the data


def test_the_same_checks_hold_in_python_and_sample_every_0_means_never():
    with pytest.raises(ValueError, match="max_steps must be >= 1, got 0"):
        TrainConfig(max_steps=0)
    assert TrainConfig(sample_every=0).sample_every == 0  # documented: 0 = never sample


def test_finetune_refuses_bad_settings_too(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    assert main(["finetune", "--data", str(tmp_path / "clips"), "--max-steps", "-1"]) == 2
    assert "max_steps must be >= 1, got -1" in capsys.readouterr().err


def test_a_warm_up_longer_than_the_run_is_named_in_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="emuvideo"):
        _train(_cfg(tmp_path, "optim.warmup_steps=100"))
    [warning] = [r.getMessage() for r in caplog.records if "warmup" in r.getMessage()]
    assert "optim.warmup_steps=100 >= max_steps=4" in warning and "4%" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emuvideo"):
        _train(_cfg(tmp_path / "short", "optim.warmup_steps=2"))
    assert not [r for r in caplog.records if "warmup" in r.getMessage()]


def test_tensorboard_holds_the_resolved_config_as_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = _cfg(tmp_path, "optim.lr=0.0123", "seed=7")
    _train(cfg)
    found = {}
    for events in (tmp_path / "run" / "logs").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams").values()
        except KeyError:  # the scalars' event file: the hparams have one of their own
            continue
        for content in contents:
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            for key, value in data.session_start_info.hparams.items():
                found[key] = value.number_value if value.HasField("number_value") else value.string_value
    assert found["optim.lr"] == pytest.approx(0.0123) and found["seed"] == 7
    assert found["data.source"] == "shapes" and found["kind"] == "video"
    assert set(found) == set(hparams(cfg))  # every scalar of the config, flattened


# ---------------------------------------------------------------------------------------------- resume
def _damage_truncate(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    return "model.safetensors"


def _damage_delete(ckpt):
    (ckpt / "optimizer.bin").unlink()
    return "optimizer.bin is missing"


def _damage_rng(ckpt):
    f = ckpt / "random_states_0.pkl"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "random_states_0.pkl"


def _damage_state(ckpt):
    (ckpt / "trainer_state.json").write_text('{"step": 4, "ep')
    return "trainer_state.json cannot be read"


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_delete, _damage_rng, _damage_state])
def test_resume_latest_skips_a_damaged_newest_checkpoint_with_a_warning(tmp_path, caplog, damage):
    _train(_cfg(tmp_path))
    run = tmp_path / "run"
    newest, older = checkpoints(run)[-1], checkpoints(run)[-2]
    assert (newest.name, older.name) == ("checkpoint-4", "checkpoint-2")
    reason = damage(newest)
    assert reason in checkpoint_problem(newest) and checkpoint_problem(older) is None
    with caplog.at_level(logging.INFO, logger="emuvideo"):
        result = _train(_cfg(tmp_path, "max_steps=6"), resume="latest")
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-4" in skipped[0] and reason in skipped[0]
    assert any(f"resumed from {older} at step 2" in r.getMessage() for r in caplog.records)
    assert result.step == 6 and _logged_steps(run) == [1, 2, 3, 4, 5, 6]  # 3-4 redone, each logged once
    assert checkpoint_problem(checkpoints(run)[-1]) is None


def test_resume_from_an_unreadable_folder_is_one_line(tmp_path, capsys):
    _train(_cfg(tmp_path))
    ckpt = checkpoints(tmp_path / "run")[-1]
    _damage_truncate(ckpt)
    config = tmp_path / "ae.yaml"
    config.write_text(f"kind: autoencoder\npreset: tiny\noutput_dir: {tmp_path / 'other'}\n")
    capsys.readouterr()  # the progress bar of the run above
    assert main(["train", "--config", str(config), "--resume", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume '{ckpt}' cannot be read: model.safetensors" in err
    assert main(["train", "--config", str(config), "--resume", str(tmp_path)]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err


def test_resume_latest_with_every_checkpoint_damaged_is_refused(tmp_path):
    _train(_cfg(tmp_path))
    for ckpt in checkpoints(tmp_path / "run"):
        _damage_delete(ckpt)
    with pytest.raises(ValueError, match="none of the 2 checkpoints"):
        _train(_cfg(tmp_path, "max_steps=6"), resume="latest")


def test_a_half_written_checkpoint_is_never_resumed_from_and_is_removed(tmp_path):
    _train(_cfg(tmp_path))
    leftovers = tmp_path / "run" / "checkpoints"
    for name in (".tmp-checkpoint-6", ".trash-checkpoint-0"):  # a kill while writing / while deleting
        (leftovers / name).mkdir()
        (leftovers / name / "trainer_state.json").write_text('{"step": 6, "epoch": 0, "batch_in_epoch": 0}')
    assert [c.name for c in checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-4"]
    result = _train(_cfg(tmp_path, "max_steps=5"), resume="latest")
    assert result.step == 5 and not list(leftovers.glob(".*"))


# ---------------------------------------------------------------------------------------------- one run per folder
def _hold_lock_in_a_child(folder: Path) -> int:
    """A forked process that takes the run lock of `folder` and sleeps; returns its pid once it holds it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no torch work, only the lock
        try:
            with run_lock(folder):
                os.write(write, b"x")
                time.sleep(120)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    return pid


def test_a_second_run_into_the_same_folder_is_refused_until_the_first_is_gone(tmp_path, capsys):
    run = tmp_path / "run"
    pid = _hold_lock_in_a_child(run)
    try:
        with pytest.raises(ValueError, match=f"is in use by another run \\(pid {pid}\\)"):
            _train(_cfg(tmp_path))
        config = tmp_path / "ae.yaml"
        config.write_text(f"kind: autoencoder\npreset: tiny\nmax_steps: 1\noutput_dir: {run}\n")
        capsys.readouterr()
        assert main(["train", "--config", str(config)]) == 2  # refused before the stage is built
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by another run (pid {pid})" in err
    finally:
        os.kill(pid, signal.SIGKILL)  # as a crash would: the OS drops the lock, the file stays
        os.waitpid(pid, 0)
    assert (run / ".lock").read_text().strip() == str(pid)
    assert _train(_cfg(tmp_path), resume="latest").step == 4  # a stale lock file does not block
    with run_lock(run):  # and the lock is re-entrant within one process (run_stage, then the Trainer)
        assert _train(_cfg(tmp_path, "max_steps=5"), resume="latest").step == 5


# ---------------------------------------------------------------------------------------------- Ctrl+C
def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resume_continues(tmp_path):
    def press_ctrl_c(call):
        if call == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="interrupted at step 3; saved .*checkpoint-3 .*--resume latest"):
        _train(_cfg(tmp_path, "max_steps=10", "checkpoint_every=5"), hook=press_ctrl_c)
    run = tmp_path / "run"
    assert [c.name for c in checkpoints(run)] == ["checkpoint-3"] and checkpoint_problem(checkpoints(run)[0]) is None
    assert not (run / "final").exists()  # the run is not finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    result = _train(_cfg(tmp_path, "max_steps=10", "checkpoint_every=5"), resume="latest")
    assert result.step == 10 and _logged_steps(run) == list(range(1, 11))


def test_an_interrupt_inside_a_step_names_the_latest_checkpoint_and_saves_nothing_half_done(tmp_path):
    def interrupt(call):
        if call == 4:
            raise KeyboardInterrupt  # as a second Ctrl+C does, in the middle of step 4

    with pytest.raises(TrainingInterrupted, match="interrupted during step 4; latest checkpoint: .*checkpoint-2"):
        _train(_cfg(tmp_path, "max_steps=10"), hook=interrupt)
    assert [c.name for c in checkpoints(tmp_path / "run")] == ["checkpoint-2"]


# ---------------------------------------------------------------------------------------------- latent cache
def test_the_latent_cache_lives_in_the_user_cache_dir_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMUVIDEO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "emuvideo"
    assert DataConfig().cache_dir == str(tmp_path / "xdg" / "emuvideo" / "latents")
    monkeypatch.setenv("EMUVIDEO_CACHE", str(tmp_path / "mine"))
    assert TrainConfig().data.cache_dir == str(tmp_path / "mine" / "latents")
    monkeypatch.delenv("EMUVIDEO_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "emuvideo"
    assert TrainConfig().data.cache_dir.startswith(str(Path.home()))  # never ./cache
    saved = load_config(TrainConfig, None, parse_overrides(["data.cache_dir=null"]))
    assert saved.data.cache_dir is None  # null: no cache, encode every step
