"""LoRAs loaded where diffusers users load them: `pipe.load_lora_weights`, `unet.load_lora_adapter`,
`set_adapters`, `fuse_lora` on the video U-Net, and Stable Diffusion LoRAs (diffusers and kohya format) on the
image stage. Every LoRA here is written in the test by peft/diffusers themselves (or by hand, for kohya), and
each test proves a property against a reference computed without emuvideo's loaders."""

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

from emuvideo.cli import main
from emuvideo.loaders import lora_specs
from emuvideo.models.presets import build_video_unet
from emuvideo.pipelines import EmuVideoPipeline
from emuvideo.pipelines.loading import inflate_image_pipeline
from emuvideo.training.config import LoraConfig
from emuvideo.training.lora import add_lora, save_lora

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


@pytest.fixture
def pipe(sd_folder):
    """A fresh pipeline (LoRAs mutate it) whose temporal layers are not the identity (as after training)."""
    pipe = inflate_image_pipeline(sd_folder)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".temporal." in name:
                param.normal_(0, 0.05)
    pipe.unet.eval()
    return pipe


def video_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 3, 8, 8, generator=g)  # (B, C, T, h, w)
    cond, mask = torch.zeros_like(sample), torch.zeros(2, 1, 3, 8, 8)
    cond[:, :, :1], mask[:, :, 0] = sample[:, :, :1], 1
    return dict(sample=torch.randn(sample.shape, generator=g), timestep=torch.tensor([100, 700]),
                encoder_hidden_states=torch.randn(2, 5, 32, generator=g), conditioning=cond, conditioning_mask=mask)


@torch.no_grad()
def video(unet) -> torch.Tensor:
    return unet(**video_inputs()).sample


@torch.no_grad()
def image(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    return unet(x, torch.tensor([100, 700]), text).sample


def peft_lora(model, seed: int, rank: int = 4, alpha: int = 8):
    """(adapted copy of `model`, peft config): peft injects a LoRA on every attention projection, B random."""
    adapted = copy.deepcopy(model)
    config = PeftLoraConfig(r=rank, lora_alpha=alpha, target_modules=ATTENTION)
    inject_adapter_in_model(config, adapted)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return adapted.eval(), config


def merged_by_hand(model, adapted_and_weights):
    """`model` with W + Σ_i w_i · (alpha/r) · B_i A_i written into each adapted Linear (the weighted-sum meaning)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for adapted, weight in adapted_and_weights:
            for name, layer in adapted.named_modules():
                if hasattr(layer, "lora_A") and "default" in layer.lora_A:
                    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
                    modules[name].weight += weight * layer.scaling["default"] * delta
    return out


@pytest.fixture
def two_video_loras(pipe, tmp_path):
    """Two diffusers-format LoRA files for the video U-Net, written by `EmuVideoPipeline.save_lora_weights`."""
    loras = []
    for i, seed in enumerate((1, 2)):
        adapted, config = peft_lora(pipe.unet, seed)
        folder = tmp_path / f"lora{i}"
        EmuVideoPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(adapted),
                                           unet_lora_adapter_metadata=config.to_dict())
        loras.append((folder / "pytorch_lora_weights.safetensors", adapted))
    return loras


# ---------------------------------------------------------------------------------------------- video U-Net
def test_diffusers_lora_on_the_video_unet_gives_peft_output_and_scale_zero_the_base(pipe, two_video_loras):
    base = video(pipe.unet)
    (file, adapted), _ = two_video_loras
    pipe.load_lora_weights(str(file), adapter_name="a")  # a single .safetensors file
    torch.testing.assert_close(video(pipe.unet), video(adapted), rtol=0, atol=1e-6)
    assert (video(pipe.unet) - base).abs().max() > 1e-2  # the LoRA moved the model
    pipe.set_adapters("a", adapter_weights=0.0)
    assert torch.equal(video(pipe.unet), base)


def test_two_adapters_with_weights_are_the_weighted_sum_and_fuse_lora_matches(pipe, two_video_loras):
    (file_a, adapted_a), (file_b, adapted_b) = two_video_loras
    expected = video(merged_by_hand(pipe.unet, [(adapted_a, 0.7), (adapted_b, -0.4)]))
    pipe.load_lora_weights(str(file_a.parent), weight_name=file_a.name, adapter_name="a")  # folder + file name
    pipe.unet.load_lora_adapter(str(file_b), adapter_name="b")  # the model-level diffusers call
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    mixed = video(pipe.unet)
    torch.testing.assert_close(mixed, expected, rtol=0, atol=1e-5)
    pipe.fuse_lora()
    torch.testing.assert_close(video(pipe.unet), mixed, rtol=0, atol=1e-5)
    pipe.unfuse_lora()
    torch.testing.assert_close(video(pipe.unet), mixed, rtol=0, atol=1e-5)


def test_emuvideo_folder_with_trained_conv_in_loads_through_diffusers_and_scales(pipe, tmp_path):
    """A finetune LoRA of a freshly inflated model: temporal LoRA + a fully trained conv_in (peft modules_to_save)."""
    base = video(pipe.unet)
    trained = copy.deepcopy(pipe.unet)
    add_lora(trained, LoraConfig(rank=4, alpha=4), train_conv_in=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.1)
    save_lora(trained, tmp_path / "final")
    reference = video(trained.eval())

    pipe.load_lora_weights(str(tmp_path / "final"), adapter_name="ft")
    torch.testing.assert_close(video(pipe.unet), reference, rtol=0, atol=1e-5)
    pipe.set_adapters("ft", adapter_weights=0.0)  # conv_in too: it is a full-rank LoRA now
    assert torch.equal(video(pipe.unet), base)
    pipe.set_adapters("ft", adapter_weights=1.0)
    pipe.fuse_lora()
    torch.testing.assert_close(video(pipe.unet), reference, rtol=0, atol=1e-5)


def test_a_lora_for_another_model_is_a_one_line_error(pipe, two_video_loras, tmp_path):
    (file, _), _ = two_video_loras
    other = build_video_unet("tiny", block_out_channels=(16, 32))
    with pytest.raises(ValueError, match=r"does not fit this model .*has 16 input features in the model, 8 in"):
        other.load_lora_adapter(str(file))
    assert not getattr(other, "peft_config", None)  # nothing half-loaded
    sd_lora = tmp_path / "sd" / "pytorch_lora_weights.safetensors"
    adapted, _ = peft_lora(pipe.image_unet, seed=4)
    StableDiffusionPipeline.save_lora_weights(sd_lora.parent, unet_lora_layers=get_peft_model_state_dict(adapted))
    with pytest.raises(ValueError, match=r"does not fit this model .*adapts 'down_blocks.0.attentions.0.transformer"):
        pipe.load_lora_weights(str(sd_lora))  # an image-model LoRA on the video stage


# ---------------------------------------------------------------------------------------------- image U-Net
def test_stable_diffusion_lora_in_diffusers_format_on_the_image_stage(pipe, tmp_path):
    base = image(pipe.image_unet)
    adapted, config = peft_lora(pipe.image_unet, seed=5)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "sd", unet_lora_layers=get_peft_model_state_dict(adapted),
                                              unet_lora_adapter_metadata=config.to_dict())  # alpha 8, rank 4
    pipe.load_image_lora_weights(str(tmp_path / "sd"), adapter_name="style")
    torch.testing.assert_close(image(pipe.image_unet), image(adapted), rtol=0, atol=1e-6)
    assert (image(pipe.image_unet) - base).abs().max() > 1e-2
    assert not getattr(pipe.unet, "peft_config", None)  # the video stage is untouched
    pipe.image_unet.set_adapters("style", 0.0)
    assert torch.equal(image(pipe.image_unet), base)


def kohya_file(unet, path, seed: int, rank: int = 2, alpha: float = 1.0, wrong_width: bool = False) -> dict:
    """A kohya-style LoRA file (`lora_unet_<module with _>.lora_down/.lora_up/.alpha`) on the attentions of
    the first down block, written by hand; returns {module name: (down, up, alpha / rank)}."""
    g = torch.Generator().manual_seed(seed)
    tensors, factors = {}, {}
    for name, layer in unet.named_modules():
        if name.startswith("down_blocks.0.attentions.0.transformer_blocks.0.attn") and name.endswith(("to_q", "to_k")):
            width = layer.in_features * (2 if wrong_width else 1)
            down = torch.randn(rank, width, generator=g) * 0.3  # (r, in)
            up = torch.randn(layer.out_features, rank, generator=g) * 0.3  # (out, r)
            key = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha)}
            factors[name] = (down, up, alpha / rank)
    tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(rank, 32)
    tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(32, rank)
    tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return factors


def test_kohya_lora_on_the_image_stage_is_w_plus_alpha_over_rank_up_down(pipe, tmp_path):
    base = image(pipe.image_unet)
    factors = kohya_file(pipe.image_unet, tmp_path / "kohya.safetensors", seed=6)
    expected = copy.deepcopy(pipe.image_unet)
    modules = dict(expected.named_modules())
    with torch.no_grad():
        for name, (down, up, scale) in factors.items():
            modules[name].weight += 0.5 * scale * up @ down
    with pytest.warns(UserWarning, match="text encoder is shared"):
        pipe.load_image_lora_weights(str(tmp_path / "kohya.safetensors"), adapter_name="k")
    pipe.image_unet.set_adapters("k", 0.5)
    torch.testing.assert_close(image(pipe.image_unet), image(expected), rtol=0, atol=1e-5)
    assert len(factors) == 4 and (image(expected) - base).abs().max() > 1e-3


def test_kohya_lora_for_another_model_is_a_one_line_error(pipe, tmp_path):
    kohya_file(pipe.image_unet, tmp_path / "big.safetensors", seed=7, wrong_width=True)
    fit = r"\(image stage\) does not fit this model .*'down_blocks.0.attentions.0.*' has 8 input features in the model"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=fit):
        pipe.load_image_lora_weights(str(tmp_path / "big.safetensors"))


# ---------------------------------------------------------------------------------------------- CLI
def test_lora_specs_pairs_paths_and_scales_and_refuses_the_rest(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b.safetensors"
    a.mkdir()
    b.write_bytes(b"")
    assert lora_specs([str(a), str(b)], [0.5]) == [(str(a), 0.5), (str(b), 0.5)]
    assert lora_specs([str(a), str(b)], [0.5, 2.0]) == [(str(a), 0.5), (str(b), 2.0)]
    assert lora_specs(str(a), 1.0) == [(str(a), 1.0)]  # eval's single --lora
    assert lora_specs(None, 1.0) == []
    with pytest.raises(ValueError, match="given 3 times for 2 --lora"):
        lora_specs([str(a), str(b)], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        lora_specs([str(a)], [float("nan")])
    with pytest.raises(ValueError, match="no such LoRA folder or .safetensors file"):
        lora_specs([str(tmp_path / "x.bin")], None)
    with pytest.raises(ValueError, match="--image-lora-scale is given but no --image-lora"):
        lora_specs(None, [0.5], "--image-lora")


def test_generate_takes_several_loras_and_an_image_lora(pipe, two_video_loras, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "model")
    (file_a, _), (file_b, _) = two_video_loras
    adapted, _ = peft_lora(pipe.image_unet, seed=8)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "sd", unet_lora_layers=get_peft_model_state_dict(adapted))
    args = ["generate", "--model", str(tmp_path / "model"), "--prompt", "a red square", "--num-frames", "2",
            "--steps", "1", "-q", "--lora", str(file_a), "--lora", str(file_b.parent)]
    out = tmp_path / "x.mp4"
    assert main([*args, "--lora-scale", "0.5", "--lora-scale", "1", "--image-lora", str(tmp_path / "sd"),
                 "--output", str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main([*args, "--lora-scale", "1", "--lora-scale", "1", "--lora-scale", "1", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("emuvideo generate: error: --lora-scale is given 3 times for 2 --lora: give one for all, "
                   "or one for each, in order")
