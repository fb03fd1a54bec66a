"""Loading the diffusers way: after only `import emuvideo` (which imports neither torch nor diffusers), plain
`DiffusionPipeline.from_pretrained` opens the shipped default, whose null text encoder is the packaged MiniLM;
and the shipped weights, like everything `scripts/install_default.py` copies, are readable by others."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "emuvideo" / "weights" / "default"

OPEN_DEFAULT = """
import json, sys
import emuvideo
imported = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
print(json.dumps({"imported_by_emuvideo": imported, "class": type(pipe).__name__,
                  "text_encoder": type(pipe.text_encoder).__name__, "hidden": pipe.text_encoder.config.hidden_size,
                  "max_length": pipe.tokenizer.model_max_length}))
"""


def _run(code: str, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (DEFAULT / "model_index.json").is_file(), reason="no shipped default model")
def test_plain_diffusers_opens_the_shipped_default_after_import_emuvideo():
    out = _run(OPEN_DEFAULT, str(DEFAULT))
    assert out["imported_by_emuvideo"] == []  # `import emuvideo` stays cheap
    assert out["class"] == "EmuVideoPipeline"
    assert out["text_encoder"] == "BertModel" and out["hidden"] == 384 and out["max_length"] == 32  # load_minilm's


def test_diffusers_imported_before_emuvideo_finds_the_pipelines_too():
    out = _run("import json, diffusers, emuvideo\n"
               "print(json.dumps({'class': diffusers.EmuInterpolationPipeline.__name__,"
               " 'sd': diffusers.StableDiffusionPipeline.__name__}))")
    assert out == {"class": "EmuInterpolationPipeline", "sd": "StableDiffusionPipeline"}


def test_a_null_text_encoder_is_only_filled_for_a_unet_that_fits_minilm(tiny_pipeline):
    from emuvideo.pipelines import EmuVideoPipeline

    parts = {k: v for k, v in tiny_pipeline.components.items() if k not in ("text_encoder", "tokenizer")}
    with pytest.raises(ValueError, match="cross_attention_dim is 32: pass text_encoder and tokenizer"):
        EmuVideoPipeline(text_encoder=None, tokenizer=None, **parts)


@pytest.mark.skipif(not (DEFAULT / "model_index.json").is_file(), reason="no shipped default model")
def test_install_default_makes_the_weights_readable_by_others(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("install_default", ROOT / "scripts" / "install_default.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = tmp_path / "trained"
    (source / "unet").mkdir(parents=True)
    (source / "model_index.json").write_text("{}")
    (source / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    os.chmod(source / "unet" / "diffusion_pytorch_model.safetensors", 0o600)  # as safetensors >= 0.8 writes
    target = tmp_path / "pkg" / "default"
    monkeypatch.setattr(script, "DEFAULT_MODEL_DIR", target)
    old = os.umask(0o022)
    try:
        script.main(str(source))
    finally:
        os.umask(old)
    assert oct((target / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777) == "0o644"
