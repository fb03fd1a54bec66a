"""Named model sizes, in one explicit registry.

Each preset gives the configs of the spatial `UNet2DConditionModel` (the text-to-image U-Net, which the
video U-Net is inflated from) and of the `AutoencoderKL`. Tests build ``tiny``; the shipped model is
``default``; ``sd15`` and ``sd21`` are Stable Diffusion 1.5's and 2.1's U-Nets, for memory estimates and
benchmarks at real scale (never materialised in tests: build them on the meta device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers import AutoencoderKL, UNet2DConditionModel

from .video_unet import EmuVideoUNet


@dataclass(frozen=True)
class Preset:
    unet: dict
    vae: dict
    temporal_head_dim: int = 64
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _unet(block_out, heads, cross_dim, sample_size, layers=1, groups=32, linear=False, down=None, up=None):
    n = len(block_out)
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(block_out),
        layers_per_block=layers,
        down_block_types=down or ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=up or ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_dim,
        attention_head_dim=heads,  # diffusers reads this as the number of heads (legacy name)
        norm_num_groups=groups,
        use_linear_projection=linear,
    )


def _vae(block_out, latent_channels=4, sample_size=64, groups=32, layers=1):
    n = len(block_out)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out),
        layers_per_block=layers,
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=sample_size,
    )


PRESETS: dict[str, Preset] = {
    # Milliseconds per forward; for tests. 32-d text states (a tiny CLIP from diffusers' own tests).
    "tiny": Preset(
        unet=_unet((8, 16), heads=4, cross_dim=32, sample_size=8, groups=4),
        vae=_vae((8, 16), sample_size=16, groups=4),
        temporal_head_dim=8,
    ),
    # The shipped model: 64x64 frames -> 8x8x4 latents, MiniLM (384-d) text states.
    "default": Preset(
        unet=_unet(
            (32, 64),
            heads=2,
            cross_dim=384,
            sample_size=8,
            down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        ),
        vae=_vae((8, 16, 32, 32), sample_size=64, groups=8),
        temporal_head_dim=32,
    ),
    # Autoencoder variants of the second model (issue 17; docs/evaluation.md): the paper's 8 latent channels at
    # 8x downsampling (8x8x8 latents; the U-Net is the default's but for its input/output channels) ...
    "default_c8": Preset(
        unet={**_unet((32, 64), heads=2, cross_dim=384, sample_size=8,
                      down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")), "in_channels": 8, "out_channels": 8},
        vae=_vae((8, 16, 32, 32), latent_channels=8, sample_size=64, groups=8),
        temporal_head_dim=32,
    ),
    # ... and 4x downsampling (16x16x4 latents), with a conv-only first U-Net level at 16x16 so the attention
    # levels stay at 8x8 and 4x4 (1.7x the default's forward time on a CPU, vs 3.5x without it).
    "default_f4": Preset(
        unet=_unet(
            (32, 64, 64),
            heads=2,
            cross_dim=384,
            sample_size=16,
            down=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        vae=_vae((8, 16, 32), sample_size=64, groups=8),
        temporal_head_dim=32,
    ),
    # Stable Diffusion 1.5's U-Net (860M parameters), conv proj_in/out, 768-d CLIP text states, 64x64 latents.
    "sd15": Preset(
        unet=_unet((320, 640, 1280, 1280), heads=8, cross_dim=768, sample_size=64, layers=2),
        vae=_vae((128, 256, 512, 512), sample_size=512, layers=2),
        temporal_head_dim=64,
    ),
    # Stable Diffusion 2.1's U-Net (865M parameters), linear proj_in/out, 1024-d OpenCLIP text states.
    "sd21": Preset(
        unet=_unet(
            (320, 640, 1280, 1280),
            heads=(5, 10, 20, 20),
            cross_dim=1024,
            sample_size=96,
            layers=2,
            linear=True,
        ),
        vae=_vae((128, 256, 512, 512), sample_size=768, layers=2),
        temporal_head_dim=64,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def build_unet2d(name: str, **overrides) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{**get_preset(name).unet, **overrides})


def build_video_unet(name: str, **overrides) -> EmuVideoUNet:
    preset = get_preset(name)
    return EmuVideoUNet(unet_config={**preset.unet, **overrides}, temporal_head_dim=preset.temporal_head_dim)


def build_vae(name: str, **overrides) -> AutoencoderKL:
    return AutoencoderKL(**{**get_preset(name).vae, **overrides})
