"""LoRA and QLoRA on the tiny video U-Net: which layers get adapters, that a trained LoRA changes the output
and scale 0 gives the base back bit-exactly, that the folder is peft's own format, merging, and the NF4 base."""

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from emuvideo.cli import main
from emuvideo.config import load_config
from emuvideo.models.presets import build_video_unet
from emuvideo.pipelines.loading import load_pipeline, random_pipeline
from emuvideo.schedules import make_train_scheduler
from emuvideo.training.config import LoraConfig, TrainConfig
from emuvideo.training.stages.video import prepare_unet
from emuvideo.training.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    add_lora,
    apply_lora,
    load_lora,
    merge_lora,
    resolve_targets,
    save_lora,
    set_lora_scale,
)
from emuvideo.training.quantize import is_nf4, quantize_linear_layers
from emuvideo.training.losses import video_training_loss
from emuvideo.training.trainer import make_optimizer


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


def tiny_unet(seed: int = 0):
    """A tiny video U-Net with non-identity temporal layers (as after training)."""
    torch.manual_seed(seed)
    unet = build_video_unet("tiny")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".temporal." in name:
                param.normal_(0, 0.05)
    return unet.eval()


def inputs(batch: int = 2, frames: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, 8, 8, generator=g)  # (B, C, T, h, w)
    cond = torch.zeros_like(latents)
    cond[:, :, :1] = latents[:, :, :1]
    mask = torch.zeros(batch, 1, frames, 8, 8)
    mask[:, :, 0] = 1
    return dict(sample=torch.randn(latents.shape, generator=g), timestep=torch.tensor([100, 700][:batch]),
                encoder_hidden_states=torch.randn(batch, 5, 32, generator=g), conditioning=cond, conditioning_mask=mask)


@torch.no_grad()
def predict(unet, x=None) -> torch.Tensor:
    return unet(**(x or inputs())).sample


def train_lora(unet, steps: int = 8, lr: float = 1e-2, optimizer: str = "adamw") -> list[float]:
    """A few optimizer steps on one fixed batch (same noise, timesteps and dropouts every step)."""
    cfg = TrainConfig(image_dropout=0.0, text_dropout=0.0)
    cfg.optim.optimizer, cfg.optim.lr = optimizer, lr
    opt = make_optimizer(unet.parameters(), cfg.optim)
    scheduler, x, losses = make_train_scheduler("v_prediction"), inputs(seed=1), []
    unet.train()
    for _ in range(steps):
        torch.manual_seed(0)
        loss = video_training_loss(unet, scheduler, x["sample"], x["encoder_hidden_states"], cfg)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    unet.eval()
    return losses


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    """(folder, outputs of the trained model): a rank-4 temporal LoRA after a few steps."""
    unet = tiny_unet()
    add_lora(unet, LoraConfig(rank=4, alpha=4))
    train_lora(unet)
    folder = tmp_path_factory.mktemp("lora") / "final"
    save_lora(unet, folder)
    return folder, predict(unet)


def test_temporal_targets_only_temporal_layers_and_all_adds_the_spatial_ones():
    unet = tiny_unet()
    temporal = resolve_targets(unet, LoraConfig(layers="temporal"))
    everything = resolve_targets(unet, LoraConfig(layers="all"))
    assert temporal and all(".temporal." in n for n in temporal)
    assert set(temporal) < set(everything) and any(".spatial." in n for n in everything)
    assert {n.rsplit(".", 1)[-1] for n in temporal} == {"to_q", "to_k", "to_v", "0", "proj_in", "proj_out"}
    convs = resolve_targets(unet, LoraConfig(target_modules=["conv"]))  # the temporal 1D convolutions
    assert convs and all(n.endswith(".temporal.conv") for n in convs)
    with pytest.raises(ValueError, match=r"\['to_qq'\] with lora.layers='temporal' match no layer"):
        resolve_targets(unet, LoraConfig(target_modules=["to_qq"]))


def test_new_lora_trains_only_adapters_and_starts_as_the_base():
    unet = tiny_unet()
    base = predict(unet)
    add_lora(unet, LoraConfig(rank=4, alpha=4, target_modules=["to_q", "to_v", "proj_out", "conv"]))
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert torch.equal(predict(unet), base)  # B starts at zero


def test_trained_lora_changes_the_output_and_scale_zero_restores_the_base_exactly(trained_lora):
    folder, trained = trained_lora
    base = predict(tiny_unet())
    loaded = tiny_unet()
    load_lora(loaded, folder)
    torch.testing.assert_close(predict(loaded), trained, rtol=0, atol=1e-6)  # the file holds what was trained
    assert (trained - base).abs().max() > 1e-3  # ... and it moved the model
    set_lora_scale(loaded, 0.0)
    assert torch.equal(predict(loaded), base)
    zero = tiny_unet()
    load_lora(zero, folder, scale=0.0)
    assert torch.equal(predict(zero), base)
    with pytest.raises(ValueError, match="already has a LoRA"):
        load_lora(zero, folder)


def test_lora_folder_is_peft_format_and_peft_alone_loads_it(trained_lora):
    folder, trained = trained_lora
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 4
    assert all(k.startswith("base_model.model.unet.") and ".lora_" in k for k in load_file(folder / ADAPTER_WEIGHTS))
    peft_model = PeftModel.from_pretrained(tiny_unet(), str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs()).sample, trained, rtol=0, atol=1e-6)


def test_lora_of_another_model_is_an_error_not_a_silent_no_op(trained_lora):
    folder, _ = trained_lora
    other = build_video_unet("tiny", block_out_channels=(16, 32))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_lora(other, folder)


def test_apply_lora_and_merged_model_folder_give_the_same_video_model(trained_lora, tiny_clip, tmp_path, capsys):
    folder, _ = trained_lora
    tokenizer, text_encoder = tiny_clip
    pipe = random_pipeline("tiny", text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.unet = tiny_unet()
    pipe.register_modules(unet=pipe.unet)
    pipe.save_pretrained(tmp_path / "model")

    applied = apply_lora(load_pipeline(tmp_path / "model"), folder, scale=0.5)
    assert main(["lora", "merge", "--model", str(tmp_path / "model"), "--lora", str(folder),
                 "--output", str(tmp_path / "merged"), "--lora-scale", "0.5"]) == 0
    merged = load_pipeline(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.unet.named_parameters())
    torch.testing.assert_close(predict(merged.unet), predict(applied.unet), rtol=0, atol=1e-5)
    assert (tmp_path / "merged/text_encoder").is_dir()  # the rest of the folder is a copy
    with pytest.raises(ValueError, match="already exists"):
        merge_lora(tmp_path / "model", folder, tmp_path / "merged")


# ---------------------------------------------------------------------------------------------- QLoRA
def test_nf4_base_replaces_every_linear_and_stays_close_to_fp32():
    unet = tiny_unet().requires_grad_(False)
    base = predict(unet)
    quantized = copy.deepcopy(unet)
    count = quantize_linear_layers(quantized, "cpu")
    linears = [m for m in quantized.modules() if isinstance(m, nn.Linear)]
    assert count == len(linears) > 0 and all(is_nf4(m) for m in linears)
    assert all(m.weight.quant_state.dtype == torch.float32 for m in linears)  # fp32 compute on a CPU
    out = predict(quantized)
    # 4 bits/weight on random (unforgiving) weights: close to the fp32 output, not equal to it.
    assert 0 < (out - base).norm() / base.norm() < 0.2
    assert torch.nn.functional.cosine_similarity(out.flatten(), base.flatten(), dim=0) > 0.98


def test_qlora_trains_only_adapters_on_an_nf4_base_and_the_saved_adapter_reloads(tmp_path):
    lora = {"rank": 4, "alpha": 4, "layers": "all", "quantize_base": True}
    cfg = load_config(TrainConfig, None, {"mode": "lora", "lora": lora,
                                          "gradient_checkpointing": True, "optim": {"optimizer": "paged_adamw8bit"}})
    unet = tiny_unet()
    prepare_unet(unet, cfg, torch.device("cpu"))
    plain = [n for n, m in unet.named_modules() if type(m) is nn.Linear and ".lora_" not in n]
    assert not plain  # every linear layer of the base is 4-bit
    adapted = [m for m in unet.modules() if hasattr(m, "base_layer")]
    on_linear = [m for m in adapted if isinstance(m.base_layer, nn.Linear)]
    assert on_linear and all(is_nf4(m.base_layer) for m in on_linear)
    assert all(type(m).__module__ == "peft.tuners.lora.bnb" for m in on_linear)  # peft's 4-bit-aware LoRA
    assert len(on_linear) < len(adapted)  # layers="all" also adapts the (full-precision) 1x1 conv proj_in/out
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    frozen_before = {n: p.clone() for n, p in unet.named_parameters() if not p.requires_grad}

    losses = train_lora(unet, steps=10, lr=3e-2, optimizer="paged_adamw8bit")
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0]
    assert all(torch.equal(p, frozen_before[n]) for n, p in unet.named_parameters() if not p.requires_grad)
    save_lora(unet, tmp_path / "qlora")

    reloaded = tiny_unet().requires_grad_(False)
    quantize_linear_layers(reloaded, "cpu")
    load_lora(reloaded, tmp_path / "qlora")
    torch.testing.assert_close(predict(reloaded), predict(unet), rtol=0, atol=1e-5)
