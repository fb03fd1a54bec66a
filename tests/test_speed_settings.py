"""The training speed settings (issue 18) change how a step runs, not what it computes: channels-last convolutions,
regional torch.compile of the repeated blocks, AdamW's fused kernel; and scripts/bench_train_speed.py compares
each with eager in one run. (The speed itself is measured on a GPU: docs/performance.md.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emuvideo.config import load_config
from emuvideo.models.presets import build_video_unet
from emuvideo.training.config import TrainConfig
from emuvideo.training.stages.video import apply_speed_settings
from emuvideo.training.trainer import make_optimizer

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**overrides) -> TrainConfig:
    return load_config(TrainConfig, overrides=overrides)


def _forward(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.latent_channels
    x = torch.randn(1, c, 3, 8, 8, generator=g)
    text = torch.randn(1, 7, unet.unet.config.cross_attention_dim, generator=g)
    return unet(x, torch.tensor([500]), text, conditioning=torch.randn(1, c, 3, 8, 8, generator=g),
                conditioning_mask=torch.ones(1, 1, 3, 8, 8)).sample


def test_channels_last_changes_the_layout_of_the_2d_convs_not_the_output():
    torch.manual_seed(0)
    unet = build_video_unet("tiny")
    reference = _forward(unet)
    keys = list(unet.state_dict())
    apply_speed_settings(unet, _cfg(channels_last=True))
    convs = [m for m in unet.modules() if type(m) is torch.nn.Conv2d]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert all(not m.weight.is_contiguous() for m in convs if m.weight.shape[-1] > 1 and m.weight.shape[1] > 1)
    assert list(unet.state_dict()) == keys
    torch.testing.assert_close(_forward(unet), reference, atol=1e-5, rtol=1e-5)


def test_regional_compile_compiles_every_repeated_block_in_place(monkeypatch):
    """Each spatial resnet + temporal conv and each transformer + temporal attention is compiled (without
    compiling here: torch.compile's CPU code generation takes minutes), in place: the state dict keeps its keys."""
    unet = build_video_unet("tiny")
    keys = list(unet.state_dict())
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append((type(self).__name__, k)))
    apply_speed_settings(unet, _cfg(compile="regional"))
    names = [type(m).__name__ for m in unet.modules()]
    expected = names.count("ResnetWithTemporalConv") + names.count("TransformerWithTemporalAttention")
    assert expected > 0 and len(compiled) == expected
    assert {name for name, _ in compiled} == {"ResnetWithTemporalConv", "TransformerWithTemporalAttention"}
    assert all(k == {"dynamic": False} for _, k in compiled)  # symbolic frame counts broke inductor on a CPU
    assert list(unet.state_dict()) == keys
    apply_speed_settings(unet, _cfg())  # compile: none compiles nothing
    assert len(compiled) == expected


def test_speed_settings_of_a_stage_that_does_not_apply_them_are_refused():
    """Only the video stage applies channels_last and compile: an image or autoencoder config that sets them is
    refused in one line naming the key, not silently run eager."""
    with pytest.raises(ValueError, match="^compile: regional is for kind: video; this config trains kind: image"):
        _cfg(kind="image", compile="regional")
    with pytest.raises(ValueError, match="^channels_last: true is for kind: video; .* kind: autoencoder"):
        _cfg(kind="autoencoder", channels_last=True)
    assert _cfg(kind="image").compile == "none" and _cfg(compile="regional", channels_last=True).kind == "video"


def test_fused_adamw_takes_the_same_steps_and_8bit_is_refused():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    plain = make_optimizer(weights, _cfg().optim)
    fused = make_optimizer(copies, _cfg(optim={"fused": True}).optim)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    for step in range(3):
        for params, opt in ((weights, plain), (copies, fused)):
            loss = sum((p * (step + 1)).sin().sum() for p in params)
            loss.backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(weights, copies):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="optim.fused: true is torch's AdamW kernel; optim.optimizer is 'adamw8bit'"):
        _cfg(optim={"optimizer": "adamw8bit", "fused": True})


@pytest.mark.slow
def test_bench_train_speed_compares_each_setting_with_eager_in_one_run(tmp_path):
    """The benchmark's plumbing on the tiny preset: eager, channels-last and no checkpointing run, the rest is
    skipped and says why; the same seed gives every variant the same batches and noise, so checkpointing's
    losses equal eager's exactly and channels-last's to float rounding."""
    out = tmp_path / "speed.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train_speed.py"), "--config",
                           "configs/video/sd_stage2.yaml", "--preset", "tiny", "--frames", "3", "--size", "32",
                           "--device", "cpu", "--steps", "2", "--warmup", "1", "--set", "weight_dtype=fp32",
                           "--set", "spatial_quantization=none", "--only", "channels-last convs",
                           "--only", "no checkpointing", "--only", "fused AdamW", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"eager (the config as written)", "channels-last convs", "no checkpointing", "fused AdamW"}
    assert rows["fused AdamW"]["skipped"] == "skipped: optimizer is adamw8bit"
    assert rows["no checkpointing"]["loss_difference"] == 0.0
    assert rows["channels-last convs"]["loss_difference"] < 1e-4
    assert all(len(r["losses"]) == 3 and r["step_s"] > 0 for r in rows.values() if "losses" in r)
    assert report["forward_flops"] > 0 and report["peak_bf16_flops"] is None  # no MFU on a CPU
    assert "| no checkpointing |" in done.stdout and "n/a" in done.stdout


def test_estimate_memory_counts_a_fused_adamw_step_without_foreach_temporaries():
    """The fused kernel cannot run on meta: the estimate counts the single-tensor step in its place, which holds
    the same optimizer state and none of foreach's per-step copies. With checkpointing the activations are small
    enough that the step's peak is the optimizer's: lower without foreach's copies (1,709,056 vs 1,917,440 bytes)."""
    from emuvideo.training.memory import measure_step

    shape = dict(preset="tiny", frames=2, size=16, batch=1)
    foreach = measure_step(_cfg(mode="full", freeze_spatial=False, gradient_checkpointing=True), **shape)
    fused = measure_step(_cfg(mode="full", freeze_spatial=False, gradient_checkpointing=True, optim={"fused": True}),
                         **shape)
    assert fused.breakdown["optimizer"] == foreach.breakdown["optimizer"] > 0
    assert fused.peak_bytes < foreach.peak_bytes
