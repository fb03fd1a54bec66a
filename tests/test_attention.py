"""Attention backends (`emuvideo.models.attention`): every layer gets the backend, spatial and temporal; the
backends available on this machine agree; what cannot run is one line."""

import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from emuvideo.cli import main
from emuvideo.config import load_config, parse_overrides
from emuvideo.models.attention import (
    attention_in_use,
    available_attention,
    resolve_attention,
    set_attention,
    xformers_unavailable,
)
from emuvideo.models.presets import build_video_unet
from emuvideo.pipelines.loading import random_pipeline
from emuvideo.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def moving_unet():
    """A tiny video U-Net whose temporal layers are random, not identity, so temporal attention shows in the output."""
    torch.manual_seed(0)
    unet = build_video_unet("tiny").eval()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "temporal" in name:
                param.normal_(0, 0.2)
    return unet


def _forward(unet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 8, 8, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        return unet(x, 500, text).sample


def test_every_attention_layer_gets_the_backend_temporal_ones_too(moving_unet):
    temporal = [m for t in moving_unet.modules() if isinstance(t, TransformerTemporalModel)
                for m in t.modules() if isinstance(m, Attention)]
    assert temporal
    for backend, processor in (("math", "AttnProcessor"), ("sdpa", "AttnProcessor2_0")):
        assert set_attention(moving_unet, backend) == backend
        assert attention_in_use(moving_unet) == backend
        assert {type(m.processor).__name__ for m in temporal} == {processor}


@pytest.mark.parametrize("backend", [b for b in available_attention("cpu") if b != "sdpa"])
def test_the_available_backends_agree_on_the_video_unet(moving_unet, backend):
    set_attention(moving_unet, "sdpa")
    reference = _forward(moving_unet)
    set_attention(moving_unet, backend)
    try:
        out = _forward(moving_unet)
    finally:
        set_attention(moving_unet, "sdpa")
    assert reference.abs().max() > 0.1  # the output is not trivially zero
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_the_backends_agree_on_a_whole_pipeline(tiny_clip):
    tokenizer, text_encoder = tiny_clip
    pipe = random_pipeline("tiny", text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    videos = {}
    for backend in available_attention("cpu"):
        assert pipe.set_attention(backend) == backend
        assert {attention_in_use(m) for m in (pipe.unet, pipe.image_unet, pipe.vae)} == {backend}
        videos[backend] = pipe("a red circle moving right", num_frames=3, num_inference_steps=2, output_type="pt",
                               generator=torch.Generator().manual_seed(0)).frames
    for backend, video in videos.items():
        torch.testing.assert_close(video, videos["sdpa"], atol=1e-4, rtol=0, msg=backend)


def test_auto_and_what_cannot_run():
    assert resolve_attention("auto", "cpu") == "sdpa"  # xformers needs CUDA
    assert xformers_unavailable("cpu") == "it needs a CUDA device"
    with pytest.raises(ValueError, match=r"^attention xformers: it needs a CUDA device$"):
        resolve_attention("xformers", "cpu")
    with pytest.raises(ValueError, match=r"^attention must be one of auto, sdpa, xformers, math, got 'flash'$"):
        resolve_attention("flash", "cpu")
    with pytest.raises(ValueError, match=r"config key 'attention' must be one of \['auto', 'sdpa', 'xformers', 'math'\]"):
        load_config(TrainConfig, None, parse_overrides(["attention=flash"]))
    assert load_config(TrainConfig, None, parse_overrides(["attention=math"])).attention == "math"


def test_training_sets_attention_with_the_same_function():
    import emuvideo.training.stages.video as training_video

    assert training_video.set_attention is set_attention


def test_cli_xformers_on_a_cpu_is_one_line(tmp_path, capsys):
    out = tmp_path / "x.mp4"
    code = main(["generate", "--prompt", "x", "--output", str(out), "--attention", "xformers", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["emuvideo generate: error: attention xformers: it needs a CUDA device"]
    assert not out.exists()
