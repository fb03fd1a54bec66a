"""Loading the diffusers way: after only `import emuvideo` (which imports neither torch nor diffusers), plain
`DiffusionPipeline.from_pretrained` opens the shipped default, whose null text encoder is the packaged MiniLM;
and the shipped weights, like everything `scripts/install_default.py` copies (through
`emuvideo.utils.files.atomic_dir`), are readable by others."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emuvideo.utils.files import atomic_dir

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


def _trained_folder(folder: Path, index: str = "{}") -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(index)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    os.chmod(folder / "unet" / "diffusion_pytorch_model.safetensors", 0o600)  # as safetensors >= 0.8 writes
    return folder


def test_atomic_dir_makes_the_weights_readable_by_others_and_swaps_the_folder_whole(tmp_path):
    # What scripts/install_default.py copies (and a LoRA / model folder / ablation snapshot saved) goes through it.
    source = _trained_folder(tmp_path / "trained")
    target = tmp_path / "pkg" / "default"
    old, before = os.umask(0o022), None
    try:
        for index in ('{"first": 1}', '{"second": 2}'):  # the second replaces the first
            with atomic_dir(target) as tmp:
                assert tmp.parent == target.parent and tmp.is_dir() and not any(tmp.iterdir())
                shutil.copytree(source, tmp, dirs_exist_ok=True)
                (tmp / "model_index.json").write_text(index)
                # until the swap a reader sees the previous folder, whole (or none)
                assert (target / "model_index.json").read_text() == before if before else not target.exists()
            before = index
    finally:
        os.umask(old)
    assert oct((target / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777) == "0o644"
    assert (target / "model_index.json").read_text() == '{"second": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["default"]  # no temporary or old copy left beside
    with pytest.raises(RuntimeError, match="stopped"):
        with atomic_dir(target) as tmp:
            (tmp / "model_index.json").write_text("half")
            raise RuntimeError("stopped")
    assert (target / "model_index.json").read_text() == '{"second": 2}'  # a failed write leaves the old folder
    assert [p.name for p in target.parent.iterdir()] == ["default"]


def test_install_default_copies_the_pipeline_files_and_swaps_in_a_vae(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("install_default", ROOT / "scripts" / "install_default.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = _trained_folder(tmp_path / "trained")
    (source / ".done").write_text("")
    (source / "log.txt").write_text("training log")
    (source / "vae").mkdir()
    (source / "vae" / "config.json").write_text('{"from": "run"}')
    vae = tmp_path / "decoder" / "vae"
    vae.mkdir(parents=True)
    (vae / "config.json").write_text('{"from": "decoder"}')
    target = tmp_path / "pkg" / "default"
    _trained_folder(target, '{"older": 1}')
    monkeypatch.setattr(script, "DEFAULT_MODEL_DIR", target)
    old = os.umask(0o022)
    try:
        script.main(str(source), vae=str(vae))
    finally:
        os.umask(old)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "model_index.json", "unet", "unet/diffusion_pytorch_model.safetensors", "vae", "vae/config.json"]
    assert (target / "model_index.json").read_text() == "{}" and json.loads((target / "vae" / "config.json")
                                                                            .read_text()) == {"from": "decoder"}
    assert oct((target / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["default"]
