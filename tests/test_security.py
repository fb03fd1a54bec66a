"""Nothing unsafe is loaded or run: pickle weights only on request and then only as plain tensors, data paths
kept inside the data folder, no remote code, no shell."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import emuvideo
from emuvideo.cli import main
from emuvideo.data.clips import scan_clips
from emuvideo.pipelines.loading import ModelFolderError, load_pipeline
from emuvideo.utils.video import write_video

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


class RunsCode:
    """A pickle that, when unpickled without restriction, creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_clip):
    from emuvideo.pipelines.loading import random_pipeline

    tokenizer, text_encoder = tiny_clip
    folder = tmp_path_factory.mktemp("tiny-emu")
    random_pipeline("tiny", text_encoder=text_encoder, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture()
def pickle_model_dir(model_dir, tmp_path):
    """The tiny model with its video U-Net's weights as a pickle `.bin` (as older diffusers saved them)."""
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(model_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
    weights.unlink()
    return folder


# ---------------------------------------------------------------------------------------------- pickle
def test_a_model_folder_with_pickle_weights_is_refused_in_one_line(pickle_model_dir, capsys, tmp_path):
    with pytest.raises(ModelFolderError, match=r"unet/diffusion_pytorch_model\.bin' holds pickle weights.*--allow-pickle"):
        load_pipeline(pickle_model_dir)
    out = tmp_path / "x.gif"
    assert main(["generate", "--model", str(pickle_model_dir), "--prompt", "a cat", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds pickle weights" in err and not out.exists()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "first.png")
    assert main(["animate", "--model", str(pickle_model_dir), "--image", str(tmp_path / "first.png"), "--prompt",
                 "a cat", "--output", str(out)]) == 2
    assert "holds pickle weights" in capsys.readouterr().err
    assert main(["lora", "merge", "--model", str(pickle_model_dir), "--lora", str(tmp_path),
                 "--output", str(tmp_path / "merged")]) == 2
    assert "holds pickle weights" in capsys.readouterr().err


def test_allow_pickle_loads_through_weights_only(pickle_model_dir, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    pipe = load_pipeline(pickle_model_dir, allow_pickle=True)
    assert calls and all(w is True for w in calls)  # diffusers' own torch.load(weights_only=True)
    saved = real_load(pickle_model_dir / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_a_pickle_that_would_run_code_does_not_even_with_allow_pickle(pickle_model_dir, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv_in.weight": RunsCode(marker)}, pickle_model_dir / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises((OSError, ValueError)):
        load_pipeline(pickle_model_dir, allow_pickle=True)
    assert not marker.exists()


def test_train_refuses_a_pickle_init_unless_allow_pickle(tmp_path, capsys):
    from emuvideo.models.presets import build_vae

    init = tmp_path / "init"
    build_vae("tiny").save_pretrained(init / "vae", safe_serialization=False)  # vae/diffusion_pytorch_model.bin
    config = tmp_path / "ae.yaml"
    config.write_text(f"kind: autoencoder\npreset: tiny\nbatch_size: 2\nmax_steps: 1\nsample_every: 0\ninit: {init}\n"
                      f"output_dir: {tmp_path / 'run'}\ndata:\n  num_clips: 4\n  resolution: 16\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vae/diffusion_pytorch_model.bin' holds pickle weights" in err
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "checkpoints").exists()
    assert main(["train", "--config", str(config), "--allow-pickle"]) == 0
    assert (tmp_path / "run" / "final" / "vae" / "diffusion_pytorch_model.safetensors").is_file()  # written safe


def test_lora_pickles_are_refused_by_name(tmp_path):
    from emuvideo.loaders import lora_specs, read_lora

    (tmp_path / "lora.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="lora.bin' is a pickle file"):
        lora_specs(str(tmp_path / "lora.bin"), None)
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="adapter_model.bin is a pickle file"):
        read_lora(folder, None, None)


def test_a_checkpoint_pickle_that_would_run_code_is_refused_on_resume(tmp_path):
    from test_runs import _cfg, _train

    from emuvideo.training.trainer import checkpoints

    _train(_cfg(tmp_path))
    ckpt = checkpoints(tmp_path / "run")[-1]
    marker = tmp_path / "code-ran"
    torch.save({"state": RunsCode(marker)}, ckpt / "optimizer.bin")
    state = json.loads((ckpt / "trainer_state.json").read_text())  # as a crafted checkpoint would: sizes agree
    state["files"]["optimizer.bin"] = (ckpt / "optimizer.bin").stat().st_size
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="holds a pickle that is not plain tensors"):
        _train(_cfg(tmp_path, "max_steps=6"), resume=str(ckpt))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- data paths
def test_data_paths_that_leave_the_folder_are_skipped_by_name_and_never_opened(tmp_path, monkeypatch):
    import av

    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    outside, data = tmp_path / "outside", tmp_path / "data"
    write_video(outside / "secret.mp4", frames, fps=8)
    write_video(data / "ok.mp4", frames, fps=8)
    (data / "link.mp4").symlink_to(outside / "secret.mp4")
    (data / "sub").mkdir()
    rows = [("ok.mp4", "inside"), ("sub/../ok.mp4", "inside too"), ("../outside/secret.mp4", "parent"),
            (str(outside / "secret.mp4"), "absolute"), ("link.mp4", "a symlink out")]
    (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows))
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda path, *a, **k: opened.append(Path(path).resolve()) or real_open(path, *a, **k))

    with pytest.warns(UserWarning) as warned:
        report = scan_clips(data, min_frames=4, fps=8)
    assert [r.caption for r in report.kept] == ["inside", "inside too"]
    skipped = {str(p): reason for p, reason in report.skipped}
    assert len(skipped) == 3 and all(r.startswith("outside folder: ") for r in skipped.values())
    assert f"leads to {outside / 'secret.mp4'}" in skipped[str(data / "link.mp4")]
    assert report.counts() == {"outside folder": 3}
    assert sum("outside folder" in str(w.message) for w in warned) == 3  # each named, as any unusable clip
    assert opened and all(not p.is_relative_to(outside) for p in opened)  # never opened


def test_a_caption_linking_out_of_the_folder_is_not_read(tmp_path):
    frames = np.zeros((8, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("the contents of a private file")
    data = tmp_path / "data"
    write_video(data / "a.mp4", frames, fps=8)
    (data / "a.txt").write_text("a clip")
    write_video(data / "b.mp4", frames, fps=8)
    (data / "b.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.warns(UserWarning, match="b.mp4: outside folder: b.txt leads to"):
        report = scan_clips(data, min_frames=4, fps=8)
    assert [r.caption for r in report.kept] == ["a clip"]


# ---------------------------------------------------------------------------------------------- code, shells
def test_the_package_runs_no_remote_code_and_no_shell():
    patterns = {"trust_remote_code": r"\btrust_remote_code\b", "shell=True": r"shell\s*=\s*True",
                "os.system/popen/exec/spawn": r"\bos\.(system|popen|exec\w*|spawn\w*)\b",
                "subprocess": r"\bsubprocess\b", "eval/exec": r"(?<![\w.])(eval|exec)\("}
    found = []
    for path in Path(emuvideo.__file__).parent.rglob("*.py"):
        text = path.read_text()
        found += [f"{path.name}: {name}" for name, pattern in patterns.items() if re.search(pattern, text)]
    assert found == []


def test_a_hostile_prompt_and_file_name_write_exactly_that_file_and_run_nothing(model_dir, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "canary").write_text("still here")
    name = "$(touch pwned1); rm -rf canary `touch pwned2`.gif"
    prompt = "$(touch pwned3) ; rm -rf canary && touch pwned4 | `touch pwned5` '\"; exit 1"
    assert main(["generate", "--model", str(model_dir), "--prompt", prompt, "--output", name, "--steps", "1",
                 "--num-frames", "2", "-q"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["canary", name])
    assert (tmp_path / "canary").read_text() == "still here" and (tmp_path / name).stat().st_size > 0
    assert capsys.readouterr().out.strip() == name
