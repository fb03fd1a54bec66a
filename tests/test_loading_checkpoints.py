"""What a run writes and reads back: checkpoint and final/ weights readable by others (0o644 under umask 022), the
`.lock` of a run gone once it ends or is refused, and a resume that cannot restore its RNG state says so."""

import json
import logging
import os

import pytest
import torch

from emuvideo.cli import main
from emuvideo.config import load_config, parse_overrides
from emuvideo.training.config import TrainConfig
from emuvideo.training.trainer import Trainer, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["batch_size=2", "max_steps=2", "checkpoint_every=2", "sample_every=0", "log_every=1", "optim.warmup_steps=0"]


def _train(tmp_path, *pairs, resume=None, save_fn=None):
    """A Linear(3, 1) on 4 fixed vectors, into tmp_path/run (as tests/test_runs.py)."""
    cfg = load_config(TrainConfig, None, parse_overrides([f"output_dir={tmp_path / 'run'}", *RUN, *pairs]))
    data = [torch.full((3,), float(i)) for i in range(4)]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return Trainer(cfg, model, lambda m, x: m(x).pow(2).mean(), data, save_fn=save_fn).train(resume=resume)


def _save_safetensors(model, folder):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def test_checkpoint_and_final_weights_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        _train(tmp_path, save_fn=_save_safetensors)
    finally:
        os.umask(old)
    run = tmp_path / "run"
    weights = sorted(run.rglob("*.safetensors"))
    assert {p.parent.name for p in weights} == {"checkpoint-2", "final"}
    assert {oct(p.stat().st_mode & 0o777) for p in weights} == {"0o644"}  # safetensors alone writes 0o600


def test_the_lock_is_gone_when_a_run_ends_or_is_refused(tmp_path, capsys):
    folder = tmp_path / "new-run"
    with pytest.raises(ValueError, match="refused"):
        with run_lock(folder):
            assert (folder / ".lock").read_text().strip() == str(os.getpid())
            raise ValueError("refused")
    assert not folder.exists()  # the lock made the folder; nothing was written there
    (tmp_path / "kept").mkdir()
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "losses.csv").write_text("1,0.5\n")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["losses.csv"]

    config = tmp_path / "ae.yaml"  # a run the CLI refuses once it holds the lock: its checkpoint is no checkpoint
    config.write_text(f"kind: autoencoder\npreset: tiny\nmax_steps: 1\noutput_dir: {tmp_path / 'refused'}\n")
    assert main(["train", "--config", str(config), "--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "refused" / ".lock").exists()


def test_a_resume_whose_rng_state_cannot_be_read_warns_naming_the_file(tmp_path, caplog):
    _train(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    rng = checkpoint / "random_states_0.pkl"
    torch.save({"step": 2}, rng)  # a readable file that is not an RNG state (as a bad copy or a bit flip can give)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["files"]["random_states_0.pkl"] = rng.stat().st_size  # so the checkpoint itself passes its check
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="emuvideo"):
        assert _train(tmp_path, "max_steps=3", resume="latest").step == 3
    [warning] = [r.getMessage() for r in caplog.records if "RNG state" in r.getMessage()]
    assert str(rng) in warning and "'random_state'" in warning


def test_a_resume_with_its_rng_state_gives_no_warning(tmp_path, caplog):
    _train(tmp_path)
    with caplog.at_level(logging.WARNING, logger="emuvideo"):
        _train(tmp_path, "max_steps=3", resume="latest")
    assert not [r for r in caplog.records if "RNG state" in r.getMessage()]
