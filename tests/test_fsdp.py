"""FSDP2 through accelerate with configs/accelerate/fsdp.yaml, on 2 CPU processes (gloo): each process holds
half of the tiny video U-Net, training matches one process on the same global batch step for step, frozen
weights stay as they were, a sharded checkpoint resumes exactly, and the final weights are gathered whole.

accelerate itself would not choose FSDP on CPUs; tests/fsdp_train.py says why and how the test keeps it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fsdp_train

REPO = Path(__file__).resolve().parent.parent


def _launch(root: Path, *modes: str) -> None:
    """tests/fsdp_train.py on 2 CPU processes under configs/accelerate/fsdp.yaml."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
              "--config_file", str(REPO / "configs/accelerate/fsdp.yaml"),
              "--main_process_port", "0"]  # 0: a free port, not the shared 29500
    cmd = [*launch, str(REPO / "tests/fsdp_train.py"), str(root), *modes]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    return [float(row.split(",")[1]) for row in (run / "losses.csv").read_text().splitlines()]


def _final(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def _check_fsdp_run(root: Path, mode: str, tmp_path: Path, resumed: bool) -> None:
    run = root / mode
    # Sharded: each process holds about half of the parameters (dim-0 shards, padded), together all of them.
    ranks = [json.loads((run / f"rank{i}.json").read_text()) for i in range(2)]
    assert all(r["distributed_type"] == "DistributedType.FSDP" and r["num_processes"] == 2 for r in ranks)
    assert sum(r["local"] for r in ranks) == ranks[0]["total"]
    assert all(0.45 < r["local"] / r["total"] < 0.55 for r in ranks)
    checkpoint = run / "checkpoints" / "checkpoint-2"
    shards = sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one file per process, nothing gathered
    assert (run / "samples" / "step000004-0.gif").is_file()  # drawn by both processes, written by one

    # The same optimisation as one process on the same global batch (2 x 2 items), step for step.
    single = tmp_path / f"{mode}-single"
    fsdp_train.run(single, mode, batch_size=4)
    assert _losses(run) == pytest.approx(_losses(single), rel=1e-5)
    model = fsdp_train.build_model(mode)
    start = {k: v.detach() for k, v in model.state_dict().items()}  # NF4 layers add their quantization state
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    fsdp, one = _final(run), _final(single)
    assert fsdp.keys() == one.keys() == start.keys()
    for key in trained:
        torch.testing.assert_close(fsdp[key], one[key], rtol=0, atol=1e-5)
    # The tolerance means something: every trained weight moved, by far more; the frozen ones not at all.
    assert all(not torch.equal(fsdp[k], start[k]) for k in trained)
    assert max((fsdp[k] - start[k]).abs().max().item() for k in trained) > 1e-3
    assert all(_same_bits(fsdp[k], start[k]) for k in start.keys() - trained)

    if resumed:  # a sharded checkpoint resumes exactly: continued from checkpoint-2, the run ends where it did
        assert _losses(root / f"{mode}-resumed") == _losses(run)[2:]
        again = _final(root / f"{mode}-resumed")
        assert all(_same_bits(again[k], fsdp[k]) for k in fsdp)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (packed 4-bit weights stored as bf16 may read as NaN, which `torch.equal` rejects)."""
    bits = [t.flatten().view(torch.uint8) for t in (a, b)]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*bits)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


@pytest.mark.slow
def test_fsdp_on_two_processes_shards_matches_one_process_and_resumes(tmp_path):
    root = tmp_path / "runs"
    _launch(root, "temporal", "full")  # the temporal run is also resumed from its checkpoint-2
    _check_fsdp_run(root, "temporal", tmp_path, resumed=True)
    _check_fsdp_run(root, "full", tmp_path, resumed=False)


@pytest.mark.slow
def test_fsdp_shards_an_nf4_spatial_base(tmp_path):
    root = tmp_path / "runs"
    _launch(root, "nf4")
    _check_fsdp_run(root, "nf4", tmp_path, resumed=True)
