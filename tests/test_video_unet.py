"""The inflated video U-Net: starts as the image model, keeps spatial weights, saves and reloads exactly."""

import copy
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from emuvideo.models.presets import build_unet2d, build_video_unet
from emuvideo.models.video_unet import EmuVideoUNet, TemporalConv, TransformerWithTemporalAttention, _FrameCount

B, C, T, H, W = 2, 4, 3, 8, 8
TEXT_LEN, TEXT_DIM = 5, 32


def randomise_(module: torch.nn.Module, seed: int, scale: float = 0.1, only=lambda name: True) -> None:
    """Add noise to every (selected) parameter, so no zero-initialised weight or bias can hide a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only(name):
                p.add_(torch.randn(p.shape, generator=generator) * scale)


def random_unet2d(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = build_unet2d("tiny", **overrides).eval()
    randomise_(unet, seed + 1)
    return unet


def inputs(seed: int = 0, frames: int = T):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(B, C, frames, H, W, generator=g)
    timestep = torch.tensor([17, 503])
    text = torch.randn(B, TEXT_LEN, TEXT_DIM, generator=g)
    return sample, timestep, text


@pytest.fixture(scope="module")
def unet2d():
    return random_unet2d(0)


@pytest.fixture(scope="module")
def fresh_video_unet(unet2d):
    """Inflated from `unet2d`; never modified by tests."""
    return EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8).eval()


@torch.no_grad()
@pytest.mark.parametrize("linear", [False, True], ids=["conv_proj_in", "linear_proj_in"])
def test_fresh_inflation_is_the_image_model_on_every_frame(linear):
    unet2d = random_unet2d(3, use_linear_projection=linear)
    video = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8).eval()
    _, timestep, text = inputs(1)
    latent = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2))
    expected = unet2d(latent, timestep, text).sample  # (B, C, H, W)
    assert expected.abs().mean() > 0.1  # a real signal, not a near-zero output that matches anything

    # The test: a static video (T copies of one latent), zero conditioning.
    static = latent[:, :, None].expand(B, C, T, H, W).contiguous()
    out = video(static, timestep, text).sample
    assert out.shape == (B, C, T, H, W)
    for f in range(T):
        assert (out[:, :, f] - expected).abs().max() <= 1e-4

    # Stronger: with identity temporal layers no frame sees another, so a moving video is T image calls.
    moving, _, _ = inputs(4)
    out = video(moving, timestep, text).sample
    per_frame = unet2d(
        moving.permute(0, 2, 1, 3, 4).flatten(0, 1),  # (B*T, C, H, W), frames of one video together
        timestep.repeat_interleave(T),
        text.repeat_interleave(T, dim=0),
    ).sample.unflatten(0, (B, T))  # (B, T, C, H, W)
    assert (out - per_frame.permute(0, 2, 1, 3, 4)).abs().max() <= 1e-4


def test_every_spatial_block_gets_a_temporal_layer(unet2d, fresh_video_unet):
    count = lambda model, kind: sum(isinstance(m, kind) for m in model.modules())
    assert count(fresh_video_unet, TemporalConv) == count(unet2d, ResnetBlock2D) > 0
    assert count(fresh_video_unet, TransformerWithTemporalAttention) == count(unet2d, Transformer2DModel) > 0
    temporal = {id(p) for p in fresh_video_unet.temporal_parameters()}
    named = {id(p) for n, p in fresh_video_unet.named_parameters() if ".temporal." in n}
    assert temporal == named and temporal


@torch.no_grad()
def test_conditioning_channels_start_at_zero(fresh_video_unet):
    sample, timestep, text = inputs(5)
    g = torch.Generator().manual_seed(6)
    reference = fresh_video_unet(sample, timestep, text).sample
    conditioning = torch.randn(B, C, T, H, W, generator=g) * 3
    mask = (torch.rand(B, 1, T, H, W, generator=g) > 0.5).float()
    out = fresh_video_unet(sample, timestep, text, conditioning=conditioning, conditioning_mask=mask).sample
    assert torch.equal(out, reference)
    # Also for a video U-Net built from a preset (not inflated from an existing 2D U-Net).
    built = build_video_unet("tiny").eval()
    assert built.unet.conv_in.weight.shape[1] == 2 * C + 1
    assert torch.equal(built.unet.conv_in.weight[:, C:], torch.zeros_like(built.unet.conv_in.weight[:, C:]))


@torch.no_grad()
def test_save_and_load_give_identical_outputs(tmp_path, unet2d):
    model = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8, max_frames=12).eval()
    randomise_(model, 7)  # temporal and conditioning weights too: a reload that re-initialises them fails
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "EmuVideoUNet" and config["max_frames"] == 12 and config["temporal_head_dim"] == 8

    loaded = EmuVideoUNet.from_pretrained(tmp_path).eval()
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    sample, timestep, text = inputs(8)
    g = torch.Generator().manual_seed(9)
    conditioning, mask = torch.randn(B, C, T, H, W, generator=g), torch.ones(B, 1, T, H, W)
    assert torch.equal(
        loaded(sample, timestep, text, conditioning, mask).sample, model(sample, timestep, text, conditioning, mask).sample
    )


def test_freeze_spatial_trains_only_temporal_layers_and_conv_in(unet2d):
    model = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8)
    model.freeze_spatial()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if ".temporal." in n or n.startswith("unet.conv_in.")}
    assert trainable == expected
    assert "unet.conv_in.weight" in trainable and any(".temporal." in n for n in trainable)

    sample, timestep, text = inputs(10)
    conditioning, mask = torch.randn(B, C, T, H, W), torch.ones(B, 1, T, H, W)
    model(sample, timestep, text, conditioning, mask).sample.square().mean().backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # The image channels of conv_in and the temporal convolutions do learn (non-zero gradient).
    assert model.unet.conv_in.weight.grad[:, C:].abs().sum() > 0
    assert all(m.conv.weight.grad.abs().sum() > 0 for m in model.modules() if isinstance(m, TemporalConv))

    model.freeze_spatial(False)
    assert all(p.requires_grad for p in model.parameters())


@torch.no_grad()
def test_spatial_state_dict_is_the_image_unet(unet2d):
    model = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8)
    # Training-like changes to temporal layers and the conditioning channels must not leak into the 2D weights.
    randomise_(model, 11, only=lambda n: ".temporal." in n)
    model.unet.conv_in.weight[:, C:] += 1.0

    state = model.spatial_state_dict()
    original = unet2d.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)
    rebuilt = UNet2DConditionModel.from_config(unet2d.config)
    assert not rebuilt.load_state_dict(state, strict=True).missing_keys  # every 2D weight, nothing more


@torch.no_grad()
@pytest.mark.parametrize("layer", ["conv", "attention"])
def test_trained_temporal_layers_mix_frames(unet2d, layer):
    model = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8).eval()
    sample, timestep, text = inputs(12)
    changed = sample.clone()
    changed[:, :, -1] += 1.0  # change only the last frame

    # Fresh, frames are independent (see the inflation test); after training-like changes to one kind of
    # temporal layer, frame 0's output depends on frame T-1.
    part = ".temporal.conv." if layer == "conv" else ".temporal.proj_out."
    randomise_(model, 13, only=lambda n: part in n)
    both = model(torch.cat([sample, changed]), timestep.repeat(2), text.repeat(2, 1, 1)).sample[:, :, 0]
    assert (both[:B] - both[B:]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- checkpointing
def _saved_activation_bytes(model, frames: int = T) -> int:
    """Bytes of the distinct tensors autograd keeps from forward to backward (what checkpointing frees),
    parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    sample, timestep, text = inputs(14, frames)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(sample, timestep, text).sample.square().mean()
    loss.backward()
    return sum(storages.values())


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_covers_temporal_layers_and_keeps_gradients(unet2d):
    model = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8).train()
    randomise_(model, 15, only=lambda n: ".temporal." in n)  # temporal layers that really mix frames
    plain = _saved_activation_bytes(model)
    reference = _grads(model)
    model.zero_grad(set_to_none=True)

    model.enable_gradient_checkpointing()
    temporal = [m for m in model.modules() if isinstance(m, TransformerWithTemporalAttention)]
    assert temporal and all(m.gradient_checkpointing for m in temporal)
    checkpointed = _saved_activation_bytes(model)
    grads = _grads(model)
    assert grads.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)

    # What diffusers alone gives: the temporal attentions outside any checkpoint.
    model.zero_grad(set_to_none=True)
    for m in temporal:
        m.gradient_checkpointing = False
    spatial_only = _saved_activation_bytes(model)
    assert checkpointed < 0.5 * plain
    assert checkpointed < 0.8 * spatial_only  # the temporal attentions held a real share of the activations


def test_checkpoint_recompute_uses_the_frame_count_of_its_own_forward(unet2d):
    model = EmuVideoUNet.from_unet2d(unet2d, temporal_head_dim=8).train()
    randomise_(model, 16, only=lambda n: ".temporal." in n)
    sample, timestep, text = inputs(17)
    model(sample, timestep, text).sample.square().mean().backward()
    reference = _grads(model)
    model.zero_grad(set_to_none=True)

    model.enable_gradient_checkpointing()
    loss = model(sample, timestep, text).sample.square().mean()
    other, _, _ = inputs(18, frames=T + 2)
    model(other, timestep, text)  # another forward with another T before the first one's backward
    loss.backward()
    grads = _grads(model)
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("frames", [2, 3])
def test_temporal_conv_trains_in_bf16_on_a_cpu(frames):
    """PyTorch's CPU conv3d gives a non-finite bf16 weight gradient for 2 frames x 64 channels (a bf16 CPU run's
    loss went NaN after one step); the temporal conv computes the same convolution without it: finite gradients
    that agree with fp32, and the same output."""
    torch.manual_seed(0)
    count = _FrameCount()
    count.value = frames
    conv = TemporalConv(64, count)
    with torch.no_grad():
        conv.conv.weight.add_(0.05 * torch.randn_like(conv.conv.weight))  # a trained kernel, not the identity
    x = torch.randn(frames, 64, 4, 4)  # (B*T, C, H, W)
    reference = copy.deepcopy(conv)
    reference(x).pow(2).mean().backward()  # fp32: conv3d
    half = copy.deepcopy(conv).to(torch.bfloat16)
    out = half(x.to(torch.bfloat16))
    out.float().pow(2).mean().backward()
    grad = half.conv.weight.grad.float()
    assert torch.isfinite(grad).all()
    assert (grad - reference.conv.weight.grad).abs().max() <= 0.02 * reference.conv.weight.grad.abs().max()
    torch.testing.assert_close(out.float(), reference(x).detach(), atol=0.05, rtol=0.02)
