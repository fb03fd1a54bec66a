"""The speed measurements: the sampler curve's pick and prompts (emuvideo.experiments.sampler_curve), import-time
arithmetic (emuvideo.utils.benchmark), and the command lines of scripts/import_time.py and bench_generate.py, run
as a user runs them; the real measurements are long and run on an idle machine (docs/performance.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emuvideo.experiments import sampler_curve as curve
from emuvideo.experiments import spread
from emuvideo.utils.benchmark import parse_importtime

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGS` in a fresh process, the checkout importable (as from its root)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], capture_output=True,
                          text=True, env=env, timeout=300)


# ---------------------------------------------------------------------------------------------- sampler_curve.py
def _point(steps, k, n=20):
    return {"steps": steps, "k": k, "n": n, "rate": k / n}


def test_the_pick_is_the_fewest_steps_within_the_reference_interval():
    reference = {"rate": 0.5, "low": 0.3, "high": 0.7}
    picks = curve.pick({"ddim": [_point(4, 2), _point(8, 7), _point(25, 10)],   # 8 steps: 35% >= 30%
                        "euler": [_point(4, 7), _point(6, 9)],                  # 4 steps already: 35%
                        "unipc": [_point(4, 6), _point(6, 4)],                  # 4 steps, 30%: ties with euler
                        "dpm++": [_point(4, 1), _point(6, 2)]}, reference)       # never
    assert picks["per_sampler"] == {"ddim": 8, "euler": 4, "unipc": 4, "dpm++": None}
    assert (picks["sampler"], picks["steps"]) == ("euler", 4)  # tie on steps: the higher rate (35% vs 30%)


def test_prompts_are_spread_over_the_set():
    assert spread(list(range(120)), 4) == [0, 30, 60, 90]
    assert spread([1, 2], None) == [1, 2] and spread([1, 2], 5) == [1, 2]


@pytest.mark.slow
def test_a_tiny_sampler_curve_saves_every_point_and_plots(tmp_path, monkeypatch):
    """2 prompts x 1 seed x 2 step counts of one sampler, both stages, on the shipped model (reference: 2 steps)."""
    from emuvideo.evaluation.prompt_sets import load_prompt_set
    from emuvideo.pipelines.loading import load_pipeline

    monkeypatch.setattr(curve, "REFERENCE", ("ddim", 2))
    monkeypatch.setattr(curve, "DEFAULT_STEPS", 2)
    pipe = load_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    schedulers = (pipe.image_scheduler, pipe.scheduler)
    result, saved, lines = {"meta": {"default_sampler": "ddim", "videos_per_point": 2}, "points": {}}, [], []
    curve.run_curve(pipe, spread(load_prompt_set("canonical"), 2), ["euler"], [1, 2], 1, ["video", "image"], result,
                    save=lambda: saved.append(len(result["points"])), echo=lines.append)
    assert set(result["curves"]) == {"video", "image"} and set(result["picks"]) == {"video", "image"}
    assert [p["steps"] for p in result["curves"]["video"]["euler"]] == [1, 2] and result["reference"]["n"] == 2
    assert len(result["points"]) == 5 and len(lines) == 5  # the reference and 2 x 2 points, none run twice
    assert saved == [1, 2, 3, 4, 5, 5]  # after each point, and the picks
    assert (pipe.image_scheduler, pipe.scheduler) == schedulers  # the model's own samplers again
    png = curve.plot(result, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pick:" in curve.table(result)


def test_sampler_curve_refuses_an_unknown_sampler():
    with pytest.raises(ValueError, match="'heun' is not one of ddim, dpm\\+\\+, unipc, euler"):
        curve.check_samplers(["ddim", "heun"])


# ---------------------------------------------------------------------------------------------- import_time.py
IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:      1000 |       1000 |       torch._C
import time:      2000 |       3000 |     torch
import time:       500 |       3500 |   diffusers.utils
import time:       100 |       3600 | diffusers
import time:       300 |        300 | emuvideo
"""


def test_import_time_sums_self_time_by_package_and_counts_entries_from_outside():
    packages = parse_importtime(IMPORTTIME)
    assert packages["torch"] == pytest.approx({"self": 0.003, "cumulative": 0.003, "modules": 2})
    # torch came in with diffusers: in its cumulative time, not in its self time
    assert packages["diffusers"] == pytest.approx({"self": 0.0006, "cumulative": 0.0036, "modules": 2})
    assert packages["emuvideo"]["cumulative"] == 0.0003


def test_import_time_of_version(tmp_path):
    out = tmp_path / "t.json"
    done = _script("import_time", "--repeats", "1", "--no-floor", "--out", str(out), "--", "--version")
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text())["rows"]["emuvideo --version"]
    assert "emuvideo" in row["packages"] and "torch" not in row["packages"]


# ---------------------------------------------------------------------------------------------- bench_generate.py
def test_bench_compare_runs_the_same_work_both_ways(tmp_path):
    out = tmp_path / "bench.json"
    done = _script("bench_generate", "--mode", "compare", "--config", "cpu-tiny", "--steps", "1", "--repeats", "1",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert "| emuvideo |" in done.stdout
    assert set(result["median_s"]) == {"emuvideo", "diffusers loop"} and result["diffusers_over_emuvideo"] > 0
    assert result["max_abs_difference"] < 1e-5  # the same video: the comparison is of the same work
    assert result["settings"]["steps"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_configs_refuse_without_cuda():
    done = _script("bench_generate", "--mode", "compare", "--config", "gpu-sd21-256")
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and err == ["bench_generate.py: error: --config gpu-sd21-256 needs a CUDA GPU; "
                                             "this machine has none"]


def test_bench_arguments_are_checked():
    done = _script("bench_generate", "--mode", "compare", "--steps", "0")
    assert done.returncode == 2 and "--steps must be >= 1, got 0" in done.stderr
