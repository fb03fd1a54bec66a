"""scripts/gpu_smoke.py (issue 18): the random Stable-Diffusion folder it starts from, its phase runner, and its
phases end to end on the tiny preset (stage 1 stopped by Ctrl+C after its first checkpoint, resumed to max_steps,
its exported folder loading)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emuvideo.models.sd_folder import parameter_counts, save_random_sd_folder
from emuvideo.models.video_unet import EmuVideoUNet
from emuvideo.pipelines.loading import load_pipeline

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_smoke.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_sd_folder_loads_as_a_stable_diffusion_folder_with_77_token_clip_text(tmp_path):
    folder = save_random_sd_folder(tmp_path / "sd", "tiny")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert sorted(p.parent.name for p in folder.rglob("*.safetensors")) == ["text_encoder", "unet", "vae"]
    pipe = load_pipeline(folder)  # a Stable-Diffusion-style folder: its U-Net inflated into a video U-Net
    ids = pipe.tokenizer(["a red circle moving right slowly"], padding="max_length", return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and pipe.tokenizer.decode(ids[0], skip_special_tokens=True).startswith("a red circle")
    assert pipe.text_encoder.config.hidden_size == pipe.image_unet.config.cross_attention_dim == 32
    with pytest.raises(ValueError, match="already holds a model"):
        save_random_sd_folder(folder, "tiny")
    with pytest.raises(ValueError, match="unknown preset"):
        save_random_sd_folder(tmp_path / "other", "sd99")


def test_sd21_counts_are_the_real_model_sizes():
    n = parameter_counts("sd21")
    assert 340e6 < n["text_encoder"] < 341e6  # OpenCLIP ViT-H/14's text tower, as Stable Diffusion 2.1 ships it
    assert 865e6 < n["unet"] < 867e6 and 1.2e9 < n["video_unet"] < 1.21e9


def test_phase_runner_delivers_ctrl_c_even_when_launched_with_sigint_ignored(tmp_path):
    """A background job (`cmd &`, nohup) starts with SIGINT ignored, and a Python child would keep ignoring it:
    the trainer would never see the Ctrl+C that stops stage 1. The runner restores the default in the child."""
    smoke = _load_script()
    ready = tmp_path / "ready"  # Ctrl+C once the child sleeps (not before Python has set up its handler)
    code = "import pathlib, sys, time\ntry:\n    pathlib.Path(sys.argv[1]).touch()\n    time.sleep(30)\n" \
           "except KeyboardInterrupt:\n    sys.exit(130)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        row = smoke.run_phase("sleeper", code, [str(ready)], tmp_path, "cpu", interrupt_when=ready.exists)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert row["rc"] == 130 and row["wall_s"] < 20
    assert row["peak_rss"] > 2**20 and row["card_used"] is None
    lines = smoke.table([row]).splitlines()
    assert lines[0].startswith("phase | exit | wall s") and lines[2].startswith("sleeper | 130 |")


def _script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_smoke_run_stops_resumes_exports_and_generates_on_the_tiny_preset(tmp_path):
    out = tmp_path / "smoke"
    done = _script("--device", "cpu", "--preset", "tiny", "--frames", "4", "--size", "16", "--steps", "6",
                   "--stages", "1", "--clips", "3", "--generate-steps", "2", "--skip-estimate", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    rows = {row["phase"]: row for row in result["phases"]}
    assert list(rows) == ["build", "render", "stage1", "stage1-resume", "generate"] and result["failure"] is None
    # Ctrl+C stopped the first run before max_steps with a checkpoint; the resumed run went on from there.
    assert rows["stage1"]["rc"] == 130 and 2 <= rows["stage1"]["stopped_at"] < 6
    run = out / "stage1"
    assert [int(line.split(",")[0]) for line in (run / "losses.csv").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert "(step 6," in (out / "logs" / "stage1-resume.log").read_text()
    # The exported folder loads, its temporal layers trained away from the identity they were inflated at.
    pipe = load_pipeline(run / "final")
    fresh = EmuVideoUNet.from_unet2d(pipe.image_unet, temporal_head_dim=8).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in pipe.unet.state_dict().items() if ".temporal." in k)
    assert (out / "video.mp4").is_file() and all(row["wall_s"] > 0 for row in rows.values())
