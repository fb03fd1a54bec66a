"""Shared tiny models, all built in code (no network, no Hub): a CLIP text encoder + tokenizer, a
Stable-Diffusion-style pipeline folder, and an `EmuVideoPipeline` inflated from that folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never touch the network

import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from emuvideo.models.presets import build_unet2d, build_vae

TEXT_DIM = 32  # the tiny preset's cross_attention_dim


def make_tiny_clip(seed: int = 0):
    """(tokenizer, text_encoder): a 2-layer, 32-d CLIP text model and a byte-level CLIP tokenizer whose
    vocabulary is the 256 byte symbols (with and without the end-of-word mark), so any text encodes."""
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for s in symbols:
            vocab[s + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    text_encoder = CLIPTextModel(config).eval().requires_grad_(False)
    return tokenizer, text_encoder


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models are
    latency-bound, and on a busy 2-core machine two threads are ~10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_clip():
    return make_tiny_clip()


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory, tiny_clip):
    """A Stable-Diffusion-style folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) of tiny models."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer, text_encoder = tiny_clip
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=build_vae("tiny"),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=build_unet2d("tiny"),
        scheduler=DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(sd_folder):
    """An `EmuVideoPipeline` (16x16 pixels, 8x8x4 latents) inflated from `sd_folder`. Shared: do not mutate
    it except through `monkeypatch`."""
    from emuvideo.pipelines.loading import inflate_image_pipeline

    pipe = inflate_image_pipeline(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe
