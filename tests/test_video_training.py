"""Video training at real-scale settings, on tiny models: the paper's stages on your clips from a Stable
Diffusion folder (inflated), the NF4 spatial base under fully trained temporal layers, LoRA on a fresh
inflation, and the one data seam that `train` and `finetune` share."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from emuvideo.cli import main
from emuvideo.config import load_config, parse_overrides
from emuvideo.models.presets import build_video_unet
from emuvideo.models.video_unet import EmuVideoUNet
from emuvideo.training.config import TrainConfig
from emuvideo.training.quantize import is_nf4
from emuvideo.training.stages.video import export_unet, prepare_unet

from test_finetune import write_clips

REPO = Path(__file__).resolve().parent.parent
TINY = ["data.resolution=16", "data.num_frames=4", "batch_size=2", "gradient_accumulation_steps=1", "max_steps=2",
        "sample_every=0", "log_every=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


def _sets(*pairs):
    return [arg for pair in [*TINY, *pairs] for arg in ("--set", pair)]


def _spatial_equal(video_unet: EmuVideoUNet, unet2d: UNet2DConditionModel) -> list[str]:
    """Names of the 2D weights (conv_in aside: it trains) where the video U-Net differs from the image U-Net."""
    mine, theirs = video_unet.spatial_state_dict(), unet2d.state_dict()
    return [k for k in theirs if not k.startswith("conv_in.") and not torch.equal(mine[k], theirs[k])]


@pytest.mark.slow
def test_paper_stages_on_your_clips_from_a_stable_diffusion_folder(tmp_path, sd_folder, capsys):
    clips = write_clips(tmp_path / "clips", n=6)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    base = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    model, runs = str(sd_folder), []
    for stage, extra in (("sd_stage1", []), ("sd_stage2", []), ("sd_stage3", ["data.high_motion_fraction=0.5"])):
        out = tmp_path / stage
        args = ["train", "--config", str(REPO / "configs/video" / f"{stage}.yaml"), "--model", model, "--data", str(clips)]
        assert main([*args, *_sets(cache, f"output_dir={out}", *extra)]) == 0, capsys.readouterr().err
        model = str(out / "final")
        runs.append(out)

    objectives = [json.loads((r / "final/scheduler/scheduler_config.json").read_text())["prediction_type"] for r in runs]
    assert objectives == ["epsilon", "v_prediction", "v_prediction"]  # paper §4: stage 1 eps, then v + zero SNR
    cfg = load_config(TrainConfig, runs[0] / "config.yaml")
    assert cfg.spatial_quantization == "nf4" and cfg.data.source == "folder" and cfg.init == str(sd_folder.resolve())
    for run in runs:
        unet = EmuVideoUNet.from_pretrained(run / "final" / "unet")
        # Trained on an NF4 spatial base, saved with the base's full-precision spatial weights, bit for bit.
        assert unet.dtype == torch.float32 and _spatial_equal(unet, base) == []
        # The image-condition channels of conv_in started at zero and learned.
        assert unet.unet.conv_in.weight[:, 4:].abs().sum() > 0
    fresh = EmuVideoUNet.from_unet2d(base, temporal_head_dim=64)
    last = EmuVideoUNet.from_pretrained(runs[-1] / "final" / "unet").state_dict()
    moved = [k for k, v in fresh.state_dict().items() if ".temporal." in k and not torch.equal(v, last[k])]
    assert moved  # the temporal layers left the identity
    # Here the three stages read the clips at one size, length and fps, through encoders with the same weights
    # (each stage's model folder carries them on): one cache, encoded once, whatever folder the model is in.
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1

    from emuvideo.pipelines.loading import load_pipeline

    pipe = load_pipeline(str(runs[-1] / "final"))
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red square", num_inference_steps=2, num_frames=4, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 4, 16, 16, 3)


def _cfg(*pairs) -> TrainConfig:
    return load_config(TrainConfig, None, parse_overrides(list(pairs)))


def _copy(state: dict) -> EmuVideoUNet:
    """A fresh full-precision U-Net holding `state`: the base as `save_fn` re-reads it from `init`."""
    unet = build_video_unet("tiny")
    unet.load_state_dict(state)
    return unet


def test_nf4_spatial_base_trains_temporal_layers_in_full_and_exports_the_base_weights():
    torch.manual_seed(0)
    base = build_video_unet("tiny")
    unet = _copy(base.state_dict())
    prepare_unet(unet, _cfg("spatial_quantization=nf4"), torch.device("cpu"))
    linears = {n: m for n, m in unet.named_modules() if isinstance(m, nn.Linear)}
    spatial = {n for n in linears if ".temporal." not in n}
    assert spatial and all(is_nf4(linears[n]) for n in spatial)
    assert all(type(linears[n]) is nn.Linear for n in set(linears) - spatial)  # temporal: full precision
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in unet.named_parameters() if ".temporal." in n or n.startswith("unet.conv_in.")}

    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    x, text = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 32)
    unet(x, 10, text, x, torch.ones(2, 1, 3, 8, 8)).sample.square().mean().backward()
    optimizer.step()
    exported = export_unet(unet, _copy(base.state_dict()))
    reference = base.state_dict()
    for name, value in exported.state_dict().items():
        if ".temporal." in name or name.startswith("unet.conv_in."):
            continue
        assert torch.equal(value, reference[name]), name  # never the dequantized NF4 weights
    trained = dict(unet.named_parameters())
    assert all(torch.equal(exported.state_dict()[n], trained[n]) for n in trainable)
    assert any(not torch.equal(trained[n], reference[n]) for n in trainable)


def test_spatial_lora_beside_full_temporal_training_merges_into_the_export():
    torch.manual_seed(0)
    unet = build_video_unet("tiny")
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    prepare_unet(unet, _cfg("spatial_quantization=nf4", "spatial_lora=true", "lora.rank=2"), torch.device("cpu"))
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert any("lora_" in n and ".temporal." not in n for n in trainable)  # spatial adapters
    assert any(".temporal." in n and "lora_" not in n for n in trainable)  # temporal layers in full
    assert not any("lora_" in n and ".temporal." in n for n in trainable)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter
    exported = export_unet(unet, _copy(base))
    x, text = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 5, 32)
    with torch.no_grad():
        changed = [n for n, v in exported.state_dict().items() if not torch.equal(v, base[n])]
        assert changed and all(".temporal." not in n for n in changed)  # LoRA deltas merged into spatial weights
        # The merged full-precision model computes what the 4-bit base + adapters computed, up to NF4's error.
        got, want = exported(x, 10, text).sample, unet(x, 10, text).sample
        assert (got - want).abs().max() < 0.1 * want.abs().max()


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh inflation", "trained video model"])
def test_lora_on_a_fresh_inflation_also_trains_conv_in(fresh):
    unet = build_video_unet("tiny")
    prepare_unet(unet, _cfg("mode=lora"), torch.device("cpu"), fresh=fresh)
    conv_in = [n for n, p in unet.named_parameters() if p.requires_grad and "conv_in" in n]
    assert bool(conv_in) == fresh


@pytest.mark.parametrize("pairs, message", [
    (["mode=lora", "spatial_quantization=nf4"], "spatial_quantization: nf4 needs mode: full"),
    (["freeze_spatial=false", "spatial_quantization=nf4"], "spatial_quantization: nf4 needs mode: full and freeze_spatial: true"),
    (["spatial_lora=true", "mode=lora"], "spatial_lora: true needs mode: full"),
    (["lora.quantize_base=true"], "lora.quantize_base: true needs mode: lora"),
])
def test_impossible_mode_combinations_are_one_line_errors(tmp_path, capsys, pairs, message):
    config = tmp_path / "c.yaml"
    config.write_text("kind: video\npreset: tiny\n")
    code = main(["train", "--config", str(config), "--data", str(tmp_path), *_sets(*pairs)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_train_and_finetune_read_one_data_seam_and_share_its_cache(tmp_path, sd_folder, capsys):
    clips = write_clips(tmp_path / "clips", n=4)
    cache = tmp_path / "cache"
    common = [f"data.cache_dir={cache}", "mode=lora", "objective=epsilon"]
    code = main(["finetune", "--data", str(clips), "--model", str(sd_folder), "--output-dir", str(tmp_path / "ft"),
                 *_sets(*common)])
    assert code == 0, capsys.readouterr().err
    [made] = [p for p in cache.iterdir() if p.is_dir()]
    stamp = {p.name: p.stat().st_mtime_ns for p in made.iterdir()}
    config = tmp_path / "video.yaml"
    config.write_text("kind: video\n")
    code = main(["train", "--config", str(config), "--model", str(sd_folder), "--data", str(clips),
                 *_sets(*common, f"output_dir={tmp_path / 'tr'}")])
    assert code == 0, capsys.readouterr().err
    assert [p for p in cache.iterdir() if p.is_dir()] == [made]  # the same key: nothing encoded twice
    assert {p.name: p.stat().st_mtime_ns for p in made.iterdir()} == stamp
    a = load_config(TrainConfig, tmp_path / "ft" / "config.yaml")
    b = load_config(TrainConfig, tmp_path / "tr" / "config.yaml")
    assert replace(a, output_dir="x") == replace(b, output_dir="x")  # finetune is a video run with its defaults
