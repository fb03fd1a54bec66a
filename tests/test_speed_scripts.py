"""The speed scripts (scripts/sampler_curve.py, import_time.py, bench_generate.py): their arithmetic, arguments
and a tiny run each; the real measurements are long and run on an idle machine (docs/performance.md)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- sampler_curve.py
def _point(steps, k, n=20):
    return {"steps": steps, "k": k, "n": n, "rate": k / n}


def test_the_pick_is_the_fewest_steps_within_the_reference_interval():
    curve = _script("sampler_curve")
    reference = {"rate": 0.5, "low": 0.3, "high": 0.7}
    picks = curve.pick({"ddim": [_point(4, 2), _point(8, 7), _point(25, 10)],   # 8 steps: 35% >= 30%
                        "euler": [_point(4, 7), _point(6, 9)],                  # 4 steps already: 35%
                        "unipc": [_point(4, 6), _point(6, 4)],                  # 4 steps, 30%: ties with euler
                        "dpm++": [_point(4, 1), _point(6, 2)]}, reference)       # never
    assert picks["per_sampler"] == {"ddim": 8, "euler": 4, "unipc": 4, "dpm++": None}
    assert (picks["sampler"], picks["steps"]) == ("euler", 4)  # tie on steps: the higher rate (35% vs 30%)


def test_prompts_are_spread_over_the_set():
    curve = _script("sampler_curve")
    assert curve.spread(list(range(120)), 4) == [0, 30, 60, 90]
    assert curve.spread([1, 2], None) == [1, 2] and curve.spread([1, 2], 5) == [1, 2]


@pytest.mark.slow
def test_a_tiny_sampler_curve_writes_json_and_a_plot(tmp_path, monkeypatch, capsys):
    """2 prompts x 1 seed x 2 step counts of one sampler, both stages, on the shipped model (reference: 2 steps)."""
    curve = _script("sampler_curve")
    monkeypatch.setattr(curve, "REFERENCE", ("ddim", 2))
    monkeypatch.setattr(curve, "DEFAULT_STEPS", 2)
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    result = curve.main(["--prompts-limit", "2", "--seeds", "1", "--steps", "1", "2", "--samplers", "euler",
                         "--out", str(out), "--plot", str(png), "-q"])
    saved = json.loads(out.read_text())
    assert saved["picks"] == result["picks"] and set(saved["curves"]) == {"video", "image"}
    assert [p["steps"] for p in saved["curves"]["video"]["euler"]] == [1, 2] and saved["reference"]["n"] == 2
    assert len(saved["points"]) == 5  # the reference and 2 x 2 points, none run twice
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pick:" in capsys.readouterr().out


def test_sampler_curve_refuses_an_unknown_sampler(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script("sampler_curve").main(["--samplers", "heun"])
    assert exit_.value.code == 2 and "'heun' is not one of ddim, dpm++, unipc, euler" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- import_time.py
IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:      1000 |       1000 |       torch._C
import time:      2000 |       3000 |     torch
import time:       500 |       3500 |   diffusers.utils
import time:       100 |       3600 | diffusers
import time:       300 |        300 | emuvideo
"""


def test_import_time_sums_self_time_by_package_and_counts_entries_from_outside():
    packages = _script("import_time").parse_importtime(IMPORTTIME)
    assert packages["torch"] == pytest.approx({"self": 0.003, "cumulative": 0.003, "modules": 2})
    # torch came in with diffusers: in its cumulative time, not in its self time
    assert packages["diffusers"] == pytest.approx({"self": 0.0006, "cumulative": 0.0036, "modules": 2})
    assert packages["emuvideo"]["cumulative"] == 0.0003


def test_import_time_of_version(tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.json"
    monkeypatch.setattr("sys.argv", ["import_time.py", "--repeats", "1", "--no-floor", "--out", str(out), "--", "--version"])
    _script("import_time").main()
    row = json.loads(out.read_text())["rows"]["emuvideo --version"]
    assert "emuvideo" in row["packages"] and "torch" not in row["packages"]


# ---------------------------------------------------------------------------------------------- bench_generate.py
def test_bench_compare_runs_the_same_work_both_ways(tmp_path):
    out = tmp_path / "bench.json"
    result = _script("bench_generate").main(["--mode", "compare", "--config", "cpu-tiny", "--steps", "1",
                                             "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["median_s"] == result["median_s"]
    assert set(result["median_s"]) == {"emuvideo", "diffusers loop"} and result["diffusers_over_emuvideo"] > 0
    assert result["max_abs_difference"] < 1e-5  # the same video: the comparison is of the same work
    assert result["settings"]["steps"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_configs_refuse_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script("bench_generate").main(["--mode", "compare", "--config", "gpu-sd21-256"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["bench_generate.py: error: --config gpu-sd21-256 needs a CUDA GPU; "
                                             "this machine has none"]


def test_bench_arguments_are_checked(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script("bench_generate").main(["--mode", "compare", "--steps", "0"])
    assert exit_.value.code == 2 and "--steps must be >= 1, got 0" in capsys.readouterr().err
