"""Crash safety, proven on the real CLI: `emuvideo train` runs in its own process, is killed with SIGKILL at
random moments (one of them inside a checkpoint write, one inside the write of final/) and resumed each time
with `--resume latest`. After every kill each checkpoint folder that exists loads, at most one checkpoint
interval of steps is lost; the run finishes with its final weights and every step logged once. Ctrl+C
(SIGINT) stops the CLI with one line and exit code 130.

Each run is a process forked from a server that imported torch, diffusers and emuvideo once (a fresh import
costs 7-15 s on a busy 2-core machine, the runs themselves a second or two); it runs `emuvideo.cli.main`. When
asked by an environment variable, a run pauses inside a write (with half of the file on disk), so that a kill
lands there deterministically.
"""

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from accelerate.utils.other import load as accelerate_load
from safetensors.torch import load_file

from emuvideo.training.trainer import checkpoint_problem, checkpoints

pytestmark = pytest.mark.slow  # ~30-60 s on 2 cores; runs in CI

MAX_STEPS, EVERY = 48, 4

SERVER = '''
import io, json, os, sys, time, traceback
from pathlib import Path

import safetensors.torch
import torch


def _pausing(save, to_bytes):
    """`save`, except for a file written into the folder named by $PAUSE_IN: half of it, then a long sleep."""
    def wrapper(obj, path, *args, **kwargs):
        pause_in = os.environ.get("PAUSE_IN")
        if pause_in and isinstance(path, (str, os.PathLike)) and pause_in in Path(path).parts:
            data = to_bytes(obj, *args, **kwargs)
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            Path(os.environ["PAUSE_MARKER"]).touch()
            time.sleep(600)
        return save(obj, path, *args, **kwargs)
    return wrapper


def _torch_bytes(obj, *args, **kwargs):
    buffer = io.BytesIO()
    _torch_save(obj, buffer, *args, **kwargs)
    return buffer.getvalue()


_torch_save = torch.save
torch.save = _pausing(torch.save, _torch_bytes)
safetensors.torch.save_file = _pausing(safetensors.torch.save_file,
                                       lambda tensors, metadata=None: safetensors.torch.save(tensors, metadata))

import matplotlib.pyplot  # noqa: F401  (the loss plot's, imported once here rather than in every run)
import torch.utils.tensorboard  # noqa: F401
from emuvideo import cli
from emuvideo.training import stages  # noqa: F401

cli._import_library()
print("ready", flush=True)
for line in sys.stdin:  # one run at a time: {"argv": [...], "env": {...}, "log": path}
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        rc = 1
        try:
            rc = cli.main(job["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    print(f"started {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
'''


class Runs:
    """The fork server: `start` a CLI run (returns its pid), `poll` / `wait` for its exit code."""

    def __init__(self, folder: Path):
        (folder / "server.py").write_text(SERVER)
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, str(folder / "server.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()

        def read():  # the server's lines, then ["server ended", rc] (it failed to start, say): no one waits 180 s
            for line in self.proc.stdout:
                self.lines.put(line.split())
            self.lines.put(["server ended", str(self.proc.wait())])

        threading.Thread(target=read, daemon=True).start()
        assert self.lines.get(timeout=180) == ["ready"]
        self.pid, self.code = None, None

    def start(self, argv: list[str], log: Path, **env) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        kind, pid = self.lines.get(timeout=30)
        assert kind == "started"
        self.pid, self.code = int(pid), None
        return self.pid

    def poll(self, timeout: float = 0.0) -> int | None:
        if self.code is None:
            try:
                kind, pid, code = self.lines.get(timeout=timeout) if timeout else self.lines.get_nowait()
            except queue.Empty:
                return None
            assert kind == "exited" and int(pid) == self.pid
            self.code = int(code)
        return self.code

    def wait(self, timeout: float) -> int:
        code = self.poll(timeout)
        assert code is not None, f"run {self.pid} did not end within {timeout} s"
        return code

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    server = Runs(tmp_path_factory.mktemp("server"))
    yield server
    server.close()


def _setup(tmp_path: Path, max_steps: int = MAX_STEPS) -> tuple[list[str], Path]:
    config, run = tmp_path / "ae.yaml", tmp_path / "run"
    config.write_text(f"kind: autoencoder\npreset: tiny\nbatch_size: 2\nmax_steps: {max_steps}\n"
                      f"checkpoint_every: {EVERY}\nkeep_last: 2\nsample_every: 0\nlog_every: 1\noutput_dir: {run}\n"
                      "data:\n  num_clips: 8\n  resolution: 16\n  cache_dir: null\noptim:\n  warmup_steps: 0\n")
    return ["train", "--config", str(config), "--resume", "latest"], run


def _logged(run: Path) -> list[int]:
    """Steps in losses.csv (a line cut short by a kill ends the list)."""
    path = run / "losses.csv"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        head = line.split(",")[0]
        if head.isdigit():
            steps.append(int(head))
    return steps


def _wait_for(condition, runs: Runs, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert runs.poll() is None, f"the run ended (exit code {runs.code}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _load_every_checkpoint(run: Path) -> int:
    """Load each checkpoint's files as a resume would; returns the newest step (0: none)."""
    found = checkpoints(run)
    for ckpt in found:
        assert checkpoint_problem(ckpt) is None, f"{ckpt}: {checkpoint_problem(ckpt)}"
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["step"] == int(ckpt.name.split("-")[1])
        assert load_file(str(ckpt / "model.safetensors"))
        for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            assert accelerate_load(str(ckpt / name), map_location="cpu") is not None  # weights_only=True
    return int(found[-1].name.split("-")[1]) if found else 0


def test_sigkill_at_random_moments_and_inside_writes_loses_at_most_one_interval(tmp_path, runs):
    argv, run = _setup(tmp_path)
    rng = random.Random(12)
    marker = tmp_path / "paused"
    # random moments, one inside a checkpoint write, more random ones, one inside the write of final/
    plan = ["random", "in checkpoint", "random", "random", "random", "in final"]
    for trial, where in enumerate(plan):
        before = _load_every_checkpoint(run)
        env = {}
        if where == "in checkpoint":
            env = {"PAUSE_IN": f".tmp-checkpoint-{before + EVERY}", "PAUSE_MARKER": str(marker)}
        elif where == "in final":
            env = {"PAUSE_IN": ".tmp-final", "PAUSE_MARKER": str(marker)}
        runs.start(argv, tmp_path / f"trial{trial}.log", **env)
        if env:
            _wait_for(marker.exists, runs, f"the pause {where}")
            marker.unlink()
        else:  # once this run has trained a step of its own, a random moment later
            _wait_for(lambda: len(_logged(run)) > before, runs, "a new step")
            time.sleep(rng.uniform(0, 1.0))
            assert runs.poll() is None, "the run finished before its random kill; lower the delay"
        reached = max(_logged(run), default=0)
        runs.signal(signal.SIGKILL)
        assert runs.wait(30) == -signal.SIGKILL

        latest = _load_every_checkpoint(run)  # every checkpoint folder that exists loads
        assert reached - latest <= EVERY, f"trial {trial} ({where}): step {reached} reached, latest checkpoint {latest}"
        if where == "in checkpoint":
            assert (run / "checkpoints" / f".tmp-checkpoint-{before + EVERY}").is_dir()  # the half-written one
            assert latest == before  # ... is not a checkpoint
        if where == "in final":
            assert latest == MAX_STEPS and not (run / "final").exists()  # half a final/ is no final/

    runs.start(argv, tmp_path / "last.log")
    assert runs.wait(120) == 0, (tmp_path / "last.log").read_text()[-2000:]
    assert _logged(run) == list(range(1, MAX_STEPS + 1))  # every step logged once, whatever was redone
    assert _load_every_checkpoint(run) == MAX_STEPS
    weights = load_file(str(run / "final" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert not list(run.glob(".*final*")) and not list((run / "checkpoints").glob(".*"))  # no leftovers


def test_ctrl_c_on_the_cli_saves_a_checkpoint_and_exits_130_with_one_line(tmp_path, runs):
    argv, run = _setup(tmp_path, max_steps=1000)
    runs.start(argv, tmp_path / "run.log")
    _wait_for(lambda: len(_logged(run)) >= 2, runs, "two steps")
    runs.signal(signal.SIGINT)
    assert runs.wait(60) == 130
    output = (tmp_path / "run.log").read_text()
    assert "Traceback" not in output
    step = _load_every_checkpoint(run)
    last = output.strip().splitlines()[-1]
    assert last == f"emuvideo train: interrupted at step {step}; saved {run / 'checkpoints' / f'checkpoint-{step}'} " \
                   "(resume with --resume latest)"
    assert step >= 2 and not (run / "final").exists()
