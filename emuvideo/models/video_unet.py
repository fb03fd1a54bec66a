"""The Emu Video U-Net: a text-to-image `UNet2DConditionModel` inflated to video.

Emu Video (Girdhar et al., 2023, §3.1) copies every spatial weight of the T2I U-Net, adds a 1D temporal
convolution after every spatial convolution block and a 1D temporal attention after every spatial
attention, and initialises the new layers as identity so the network starts out as the image model.
The image condition (a latent zero-padded in time) and a binary mask are concatenated to the noisy latent
on channels; the C + 1 extra input channels of the first conv are zero-initialised.

Any diffusers `UNet2DConditionModel` (SD-1.x / 2.x style, conv or linear `proj_in`) can be inflated: the
spatial modules are kept as they are and wrapped, so their weights keep their meaning and the diffusers
blocks (gradient checkpointing, attention processors, xformers) work unchanged.

Layout: video tensors are `(batch, channels, frames, height, width)`, as in diffusers' `UNet3DConditionModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from ..loaders.peft import EmuVideoPeftAdapterMixin


@dataclass
class EmuVideoUNetOutput(BaseOutput):
    """sample: `(batch, channels, frames, height, width)` — the model's prediction (ε, v or x0)."""

    sample: torch.Tensor


class _FrameCount:
    """Shared, mutable holder of the current number of frames.

    The spatial blocks fold frames into the batch (`(B*T, C, H, W)`) and call their children with the 2D
    signature, so the temporal layers learn T from this holder, which `EmuVideoUNet.forward` sets. It is not
    re-entrant: one forward at a time per model. Gradient checkpointing recomputes blocks during backward,
    possibly after another forward changed the holder, so `EmuVideoUNet`'s checkpoint function records T at
    forward time and sets it again for the recompute (`_checkpoint_with_frames`).
    """

    def __init__(self) -> None:
        self.value = 1


class TimeConv3d(nn.Conv3d):
    """An `nn.Conv3d` over time alone (kernel `(k, 1, 1)`) that runs as a `(k, 1)` conv2d over `(T, H*W)` on a
    CPU in bf16/fp16: PyTorch's CPU conv3d gives a non-finite weight gradient in bf16 for some shapes (2 frames,
    64 channels), which turned a bf16 CPU run's loss NaN after one step. Same parameters, state dict and
    convolution as `nn.Conv3d`; CUDA, meta (which estimates it) and fp32 run conv3d. Being a Conv3d, it is what
    peft wraps (its `base_layer`, and peft builds the LoRA convs of the wrapper with this class too), and the
    workaround holds there, at the convolution itself."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if (self.kernel_size[1:] != (1, 1) or self.stride[1:] != (1, 1) or self.dilation[1:] != (1, 1)
                or isinstance(self.padding, str) or self.padding[1:] != (0, 0) or self.padding_mode != "zeros"):
            raise ValueError(f"TimeConv3d convolves over time alone: kernel (k, 1, 1), no spatial stride, dilation "
                             f"or padding, zero padding; got {self!r}")

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if input.device.type == "cpu" and input.dtype in (torch.bfloat16, torch.float16):
            h = input.shape[-2]
            out = F.conv2d(rearrange(input, "b c t h w -> b c t (h w)"), weight.squeeze(-1), bias,
                           self.stride[:2], self.padding[:2], self.dilation[:2], self.groups)
            return rearrange(out, "b c t (h w) -> b c t h w", h=h)
        return super()._conv_forward(input, weight, bias)


class TemporalConv(nn.Module):
    """1D convolution over time, kernel 3, initialised to the identity kernel (paper §3.1)."""

    def __init__(self, channels: int, frames: _FrameCount, kernel_size: int = 3) -> None:
        super().__init__()
        self.frames = frames
        self.conv = TimeConv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0))
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        with torch.no_grad():
            self.conv.weight.zero_()
            centre = self.conv.kernel_size[0] // 2
            self.conv.weight[:, :, centre, 0, 0] = torch.eye(self.conv.out_channels)
            self.conv.bias.zero_()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (B*T, C, H, W) -> (B, C, T, H, W) -> conv over T -> back
        t = self.frames.value
        x = self.conv(rearrange(hidden_states, "(b t) c h w -> b c t h w", t=t))
        return rearrange(x, "b c t h w -> (b t) c h w")


class ResnetWithTemporalConv(nn.Module):
    """A spatial resnet block followed by a temporal convolution."""

    def __init__(self, spatial: ResnetBlock2D, frames: _FrameCount) -> None:
        super().__init__()
        self.spatial = spatial
        self.temporal = TemporalConv(spatial.out_channels, frames)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs):
        return self.temporal(self.spatial(input_tensor, temb, *args, **kwargs))


class TransformerWithTemporalAttention(nn.Module):
    """A spatial transformer (self + cross attention) followed by a temporal attention.

    The temporal attention is diffusers' `TransformerTemporalModel` (self-attention over frames at each
    spatial position, sinusoidal frame positions); it is residual, and its `proj_out` is zeroed so it
    starts as the identity (paper §3.1).
    """

    def __init__(
        self,
        spatial: Transformer2DModel,
        frames: _FrameCount,
        head_dim: int,
        norm_num_groups: int,
        max_frames: int,
    ) -> None:
        super().__init__()
        self.spatial = spatial
        self.frames = frames
        # diffusers' `enable_gradient_checkpointing` sets this (and `_gradient_checkpointing_func`) on every
        # module that has the attribute. `TransformerTemporalModel` has no checkpointing of its own, and the
        # diffusers blocks call attentions outside their checkpoint, so this wrapper checkpoints it.
        self.gradient_checkpointing = False
        channels = spatial.config.in_channels
        heads = max(1, channels // head_dim)
        self.temporal = TransformerTemporalModel(
            num_attention_heads=heads,
            attention_head_dim=channels // heads,
            in_channels=channels,
            norm_num_groups=norm_num_groups,
            positional_embeddings="sinusoidal",
            num_positional_embeddings=max_frames,
        )
        nn.init.zeros_(self.temporal.proj_out.weight)
        nn.init.zeros_(self.temporal.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, *args, return_dict: bool = True, **kwargs):
        out = self.spatial(hidden_states, *args, return_dict=False, **kwargs)[0]
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            out = self._gradient_checkpointing_func(self._temporal, out)
        else:
            out = self._temporal(out)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)

    def _temporal(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.temporal(hidden_states, num_frames=self.frames.value, return_dict=False)[0]


def _spatial_blocks(unet: UNet2DConditionModel):
    yield from unet.down_blocks
    if unet.mid_block is not None:
        yield unet.mid_block
    yield from unet.up_blocks


class EmuVideoUNet(ModelMixin, ConfigMixin, EmuVideoPeftAdapterMixin):
    r"""Video U-Net of Emu Video: a 2D text-to-image U-Net with temporal layers and image conditioning.

    Args:
        unet_config (`dict`): config of the spatial `UNet2DConditionModel` (its `in_channels` is the
            latent channel count C; the video model takes 2C + 1 input channels).
        temporal_head_dim (`int`): channels per head of the temporal attentions.
        max_frames (`int`): the longest clip the frame position embedding covers.

    LoRA as on diffusers' models (`load_lora_adapter`, `set_adapters`, `fuse_lora`; see `emuvideo.loaders.peft`).
    """

    _supports_gradient_checkpointing = True
    # diffusers' regional compilation (`compile_repeated_blocks`): each spatial resnet with its temporal conv and
    # each spatial transformer with its temporal attention is compiled once per distinct shape
    _repeated_blocks = ("ResnetWithTemporalConv", "TransformerWithTemporalAttention")

    @register_to_config
    def __init__(self, unet_config: dict, temporal_head_dim: int = 64, max_frames: int = 64) -> None:
        super().__init__()
        unet_config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
        self.unet = UNet2DConditionModel.from_config(unet_config)
        self.latent_channels = unet_config["in_channels"]
        self._frames = _FrameCount()

        # Noisy latent ‖ zero-padded image latent ‖ mask: C + C + 1 input channels (paper §3.2).
        old = self.unet.conv_in
        self.unet.conv_in = nn.Conv2d(
            2 * self.latent_channels + 1, old.out_channels, old.kernel_size, padding=old.padding
        )
        with torch.no_grad():
            self.unet.conv_in.weight[:, self.latent_channels :].zero_()

        groups = self.unet.config.norm_num_groups
        for block in _spatial_blocks(self.unet):
            block.resnets = nn.ModuleList(ResnetWithTemporalConv(r, self._frames) for r in block.resnets)
            if hasattr(block, "attentions"):
                block.attentions = nn.ModuleList(
                    TransformerWithTemporalAttention(a, self._frames, temporal_head_dim, groups, max_frames)
                    for a in block.attentions
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet2d(cls, unet2d: UNet2DConditionModel, **kwargs) -> EmuVideoUNet:
        """Inflate a text-to-image U-Net: copy every spatial weight, new layers start as identity."""
        model = cls(unet_config=dict(unet2d.config), **kwargs)
        model.load_spatial_state_dict(unet2d.state_dict())
        model.to(device=unet2d.device)
        return model if unet2d.dtype == torch.float32 else model.to(dtype=unet2d.dtype)

    def load_spatial_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a `UNet2DConditionModel` state dict into the spatial layers (the first C conv_in channels)."""
        own = self.state_dict()
        mapped = {}
        for key, value in state_dict.items():
            if key == "conv_in.weight":
                weight = own["unet.conv_in.weight"].clone()
                weight[:, : self.latent_channels] = value
                weight[:, self.latent_channels :] = 0
                mapped["unet.conv_in.weight"] = weight
                continue
            new_key = "unet." + _wrapped_key(key)
            if new_key not in own:
                raise ValueError(f"spatial weight {key!r} has no place in the video U-Net (looked for {new_key!r})")
            mapped[new_key] = value
        missing = [k for k in own if k not in mapped and not _is_temporal(k)]
        if missing:
            raise ValueError(f"the 2D state dict lacks spatial weights: {missing[:5]}")
        self.load_state_dict(mapped, strict=False)

    def spatial_state_dict(self) -> dict[str, torch.Tensor]:
        """The inverse of `load_spatial_state_dict`: a state dict a `UNet2DConditionModel` loads."""
        out = {}
        for key, value in self.state_dict().items():
            if _is_temporal(key):
                continue
            key = key.removeprefix("unet.").replace(".spatial.", ".")
            if key == "conv_in.weight":
                value = value[:, : self.latent_channels]
            out[key] = value
        return out

    # ------------------------------------------------------------------ gradient checkpointing
    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """Recompute every block in backward: spatial resnets with their temporal convs (diffusers' blocks
        checkpoint the resnet wrappers), spatial transformer blocks, and the temporal attentions.

        The default checkpoint function is recompute-safe for the frame-count holder (see `_FrameCount`).
        """
        super().enable_gradient_checkpointing(gradient_checkpointing_func or self._checkpoint_with_frames)

    def _checkpoint_with_frames(self, module, *args):
        frames = self._frames
        t = frames.value  # T of this forward; the recompute runs in backward, maybe after another forward

        def run(*inputs):
            current, frames.value = frames.value, t
            try:
                return module(*inputs)
            finally:
                frames.value = current

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    # ------------------------------------------------------------------ parameter groups
    def temporal_parameters(self):
        return (p for n, p in self.named_parameters() if _is_temporal(n))

    def freeze_spatial(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the spatial layers; temporal layers and `conv_in` stay trainable.

        `conv_in` is kept trainable because its new channels carry the image condition and mask.
        """
        for name, param in self.named_parameters():
            if not _is_temporal(name) and not name.startswith("unet.conv_in."):
                param.requires_grad_(not freeze)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        conditioning: torch.Tensor | None = None,
        conditioning_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> EmuVideoUNetOutput | tuple:
        r"""
        Args:
            sample: `(B, C, T, H, W)` noisy latents.
            timestep: scalar or `(B,)`.
            encoder_hidden_states: `(B, L, D)` text token states.
            conditioning: `(B, C, T, H, W)` known-frame latents, zero where unknown (None: all zero).
            conditioning_mask: `(B, 1, T, H, W)`, 1 at known frames (None: all zero).
        Returns:
            `(B, C, T, H, W)` prediction.
        """
        b, c, t, h, w = sample.shape
        if c != self.latent_channels:
            raise ValueError(f"sample has {c} channels, the model takes {self.latent_channels}")
        if conditioning is None:
            conditioning = torch.zeros_like(sample)
        if conditioning_mask is None:
            conditioning_mask = sample.new_zeros(b, 1, t, h, w)
        x = torch.cat([sample, conditioning.to(sample.dtype), conditioning_mask.to(sample.dtype)], dim=1)
        x = rearrange(x, "b c t h w -> (b t) c h w")

        timestep = torch.as_tensor(timestep, device=sample.device)
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep
        timestep = timestep.repeat_interleave(t)  # (B*T,)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(t, dim=0)  # (B*T, L, D)

        self._frames.value = t
        out = self.unet(x, timestep, encoder_hidden_states, return_dict=False)[0]
        out = rearrange(out, "(b t) c h w -> b c t h w", t=t)
        return EmuVideoUNetOutput(sample=out) if return_dict else (out,)


def _is_temporal(key: str) -> bool:
    return ".temporal." in key


def _wrapped_key(key: str) -> str:
    """Map a `UNet2DConditionModel` key to its place inside the wrappers, e.g.
    `down_blocks.0.resnets.1.conv1.weight` -> `down_blocks.0.resnets.1.spatial.conv1.weight`."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("resnets", "attentions") and i + 1 < len(parts) and parts[i + 1].isdigit():
            if i >= 1 and (parts[i - 1].isdigit() or parts[i - 1] == "mid_block"):
                return ".".join(parts[: i + 2] + ["spatial"] + parts[i + 2 :])
    return key
