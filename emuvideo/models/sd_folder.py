"""A Stable-Diffusion-style model folder with random weights, built from configs alone (no download).

`save_random_sd_folder(folder, preset="sd21")` writes what `StableDiffusionPipeline.save_pretrained` writes
(`unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json`, safetensors weights): the U-Net and VAE of
a named preset (`emuvideo.models.presets`) and a `CLIPTextModel` of the width the U-Net attends to. At `sd15`
and `sd21` the text model has the real text tower's shape (CLIP ViT-L/14, 123M parameters; OpenCLIP ViT-H/14,
340M), so a run from this folder has the real parameter count, the real 77-token text and the real memory.
What it is for: running the commands at real size without the real weights (scripts/gpu_smoke.py); what it
generates is noise.

The tokenizer: transformers builds a `CLIPTokenizer` from an in-memory vocabulary and merge list, no files.
Its vocabulary here is the 256 byte symbols (with and without CLIP's end-of-word mark) and no merges, so any
text encodes, one token a byte, padded to CLIP's 77 tokens; the text model keeps CLIP's 49,408-row embedding
table (the tokenizer uses its first 514 rows), so sizes and shapes are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..schedules import scheduler_config
from .presets import build_unet2d, build_vae, build_video_unet, get_preset

TEXT_TOKENS = 77  # CLIP and OpenCLIP pad every prompt to 77 tokens
# The real text towers: Stable Diffusion 1.x's CLIP ViT-L/14 and 2.x's OpenCLIP ViT-H/14 (its last layer dropped).
CLIP_TEXT = {
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", projection_dim=768, vocab_size=49408),
    "sd21": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512, vocab_size=49408),
}
# SD 2.1 (768 px) predicts v; SD 1.5 and the small presets predict the noise.
PREDICTION_TYPES = {"sd21": "v_prediction"}


def clip_text_config(preset: str) -> CLIPTextConfig:
    """The text encoder's config for `preset`: the real tower for sd15/sd21, else a 2-layer CLIP as wide as the
    U-Net's cross-attention (the tiny preset's 32, the default's 384)."""
    width = get_preset(preset).unet["cross_attention_dim"]
    shape = CLIP_TEXT.get(preset, dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                                       num_attention_heads=4, vocab_size=1000))
    if shape["hidden_size"] != width:
        raise ValueError(f"preset {preset!r}: text width {shape['hidden_size']} != cross_attention_dim {width}")
    return CLIPTextConfig(**shape, max_position_embeddings=TEXT_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def byte_clip_tokenizer() -> CLIPTokenizer:
    """A `CLIPTokenizer` made without files: the byte symbols as its vocabulary, no merges (see the module doc)."""
    from tokenizers import pre_tokenizers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in [s + end for end in ("", "</w>") for s in sorted(pre_tokenizers.ByteLevel.alphabet())]:
        vocab[symbol] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_TOKENS)


def sd_scheduler(preset: str) -> DDIMScheduler:
    """Stable Diffusion's training schedule (scaled linear betas) as its folders store it: emuvideo's schedule
    (`emuvideo.schedules.scheduler_config`) without zero terminal SNR, predicting what `preset`'s model predicts."""
    # the epsilon objective's config is SD's own (no rescale to zero terminal SNR, "leading" timesteps)
    schedule = dict(scheduler_config("epsilon"), prediction_type=PREDICTION_TYPES.get(preset, "epsilon"))
    return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def save_random_sd_folder(folder: str | Path, preset: str = "sd21", seed: int = 0) -> Path:
    """Write a Stable-Diffusion-style folder of `preset` with random weights (seeded) into `folder`; returns it.

    The weights are fp32 safetensors, as Stable Diffusion's own folders ship. `folder` must not hold a model yet.
    """
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        raise ValueError(f"folder {str(folder)!r} already holds a model (model_index.json)")
    text_config = clip_text_config(preset)  # an unknown preset fails here, before any weight is made
    with torch.random.fork_rng():  # seeded weights, without reseeding the caller's global RNG
        torch.manual_seed(seed)
        pipe = StableDiffusionPipeline(
            vae=build_vae(preset),
            text_encoder=CLIPTextModel(text_config).eval(),
            tokenizer=byte_clip_tokenizer(),
            unet=build_unet2d(preset),
            scheduler=sd_scheduler(preset),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(folder)
    return folder


def parameter_counts(preset: str) -> dict[str, int]:
    """Parameters of each model a run from `preset`'s folder holds: the SD folder's unet, vae and text_encoder, and
    the video U-Net inflated from its unet. Counted on the meta device (no memory)."""
    with torch.device("meta"):
        models = {"unet": build_unet2d(preset), "vae": build_vae(preset),
                  "text_encoder": CLIPTextModel(clip_text_config(preset)), "video_unet": build_video_unet(preset)}
    return {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}

