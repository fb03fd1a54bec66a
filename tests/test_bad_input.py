"""Bad input, class by class: one line on stderr naming the value, a non-zero exit, no traceback and no file
left behind; what can be checked before loading a model (output, config, model folder) is checked first.

The CLI runs in process (`emuvideo.cli.main`) on the tiny pipeline of conftest.py."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import emuvideo.pipelines.loading as loading
import emuvideo.utils.video as video_io
from emuvideo.cli import main
from emuvideo.config import load_config, resolve_config, save_config
from emuvideo.pipelines.common import NonFiniteOutputError, check_finite
from emuvideo.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--steps", "1", "--num-frames", "2", "--device", "cpu", "-q"]


def _one_line_error(capsys, command, *expected):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"emuvideo {command}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture()
def loads(monkeypatch, tiny_pipeline):
    """The CLI loads the tiny pipeline; returns the list of loads (to prove a check came before the load)."""
    calls = []

    def load(model=None, **kwargs):
        calls.append(model)
        return tiny_pipeline

    monkeypatch.setattr(loading, "load_pipeline", load)
    return calls


# ---------------------------------------------------------------------------------------------- outputs
def _read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


OUTPUTS = {
    "parent is a file": (lambda d: ["--output", str(d / "file.txt" / "clip.mp4")], "file.txt"),
    "output-dir under a file": (lambda d: ["--output-dir", str(d / "file.txt" / "videos")], "file.txt"),
    "output-dir is a file": (lambda d: ["--output-dir", str(d / "file.txt")], "file.txt"),
    "gif format, mp4 output": (lambda d: ["--format", "gif", "--output", str(d / "x.mp4")], "--format gif"),
    "mp4 format, gif output": (lambda d: ["--format", "mp4", "--output", str(d / "x.gif")], "x.gif"),
    "unknown extension": (lambda d: ["--output", str(d / "x.avi")], "x.avi"),
    "no extension": (lambda d: ["--output", str(d / "clip")], "clip"),
    "output is a folder": (lambda d: (d / "clip.mp4").mkdir() or ["--output", str(d / "clip.mp4")], "is a directory"),
}


@pytest.mark.parametrize("case", list(OUTPUTS))
def test_bad_output_is_refused_before_the_model_loads(tmp_path, capsys, loads, case):
    (tmp_path / "file.txt").write_text("not a folder")
    make, expected = OUTPUTS[case]
    argv = make(tmp_path)
    assert main(["generate", "--prompt", "a cat", *argv, *FAST]) == 2
    _one_line_error(capsys, "generate", expected)
    assert loads == []  # refused before loading (let alone generating)
    assert set(_files(tmp_path)) <= {"file.txt"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("flag", ["--output", "--output-dir"])
def test_read_only_output_folder_is_refused_before_the_model_loads(tmp_path, capsys, loads, flag):
    folder = _read_only_folder(tmp_path)
    target = folder / "clip.mp4" if flag == "--output" else folder / "videos"
    assert main(["generate", "--prompt", "a cat", flag, str(target), *FAST]) == 2
    _one_line_error(capsys, "generate", str(folder), "not writable")
    assert loads == [] and _files(tmp_path) == []


@pytest.mark.parametrize("flag", ["--output", "--output-dir"])
def test_unwritable_output_folder_is_refused_before_the_model_loads_even_as_root(tmp_path, capsys, loads, monkeypatch,
                                                                                  flag):
    """As above, for any user: the folder's write permission as the OS reports it (root: a read-only mount)."""
    import emuvideo.utils.files as files

    folder = tmp_path / "mounted-read-only"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if str(p) == str(folder) else real_access(p, mode))
    target = folder / "clip.mp4" if flag == "--output" else folder / "videos"
    assert main(["generate", "--prompt", "a cat", flag, str(target), *FAST]) == 2
    _one_line_error(capsys, "generate", str(folder), "not writable")
    assert loads == [] and _files(tmp_path) == []


def test_format_agrees_with_the_output_extension(tmp_path, capsys, loads):
    out = tmp_path / "clip.gif"
    assert main(["generate", "--prompt", "a cat", "--format", "gif", "--output", str(out), *FAST]) == 0
    assert out.read_bytes()[:3] == b"GIF"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT], ids=["full disk", "file too large", "quota"])
def test_a_failed_write_is_one_line_and_leaves_no_file(tmp_path, capsys, loads, monkeypatch, err):
    def failing_mp4(path, frames, fps):
        path.write_bytes(b"\0" * 1000)  # half a video, then the disk says no
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(video_io, "_write_mp4", failing_mp4)
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a cat", "--output", str(out), *FAST]) == 1
    _one_line_error(capsys, "generate", str(out), os.strerror(err))
    assert _files(tmp_path) == []  # neither clip.mp4 nor the temporary file


WRITE_UNDER_LIMIT = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: writes fail with EFBIG
from emuvideo.utils.video import write_video
frames = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), np.uint8)  # noise: far beyond 4 KiB
try:
    write_video(sys.argv[1], frames, 8)
except OSError as err:
    print(type(err).__name__, err)
"""


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif"])
def test_a_real_file_size_limit_gives_one_error_naming_the_file_and_no_file(tmp_path, name):
    out = tmp_path / name
    result = subprocess.run([sys.executable, "-c", WRITE_UNDER_LIMIT, str(out)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"cannot write {str(out)!r}" in result.stdout and "File too large" in result.stdout
    assert _files(tmp_path) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_permissions_of_a_plain_write(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        video = video_io.write_video(tmp_path / "clip.gif", np.zeros((2, 8, 8, 3), np.uint8), 4)
        image = video_io.save_image(tmp_path / "frame.png", np.zeros((8, 8, 3), np.uint8))
        config = tmp_path / "config.yaml"
        save_config(TrainConfig(), config)
    finally:
        os.umask(old)
    for path in (video, image, config):
        assert path.stat().st_mode & 0o777 == mode, path


# ---------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--guidance-image", "nan"], "--guidance-image must be a finite number, got nan"),
        (["--guidance-text", "inf"], "--guidance-text must be a finite number, got inf"),
        (["--guidance-text=-inf"], "got -inf"),
        (["--lora", "{tmp}", "--lora-scale", "nan"], "--lora-scale must be a finite number, got nan"),
        (["--image-lora", "{tmp}", "--image-lora-scale", "inf"], "--image-lora-scale must be a finite number"),
    ],
    ids=["guidance image nan", "guidance text inf", "guidance text -inf", "lora scale nan", "image lora scale inf"],
)
def test_nan_and_inf_scales_are_refused(tmp_path, capsys, loads, argv, expected):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["generate", "--prompt", "a cat", "--output", str(tmp_path / "x.mp4"), *argv, *FAST]) == 2
    _one_line_error(capsys, "generate", expected)
    assert loads == [] and _files(tmp_path) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "7.5", None], ids=["nan", "inf", "str", "None"])
def test_python_guidance_scale_must_be_a_finite_number(tiny_pipeline, value):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        tiny_pipeline.text_to_image("a cat", guidance_scale=value, num_inference_steps=1)


@pytest.mark.parametrize("output_type", ["PIL", "numpy", "", "latents", None])
def test_unknown_output_type_is_refused(tiny_pipeline, output_type):
    with pytest.raises(ValueError, match=f"output_type must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}"):
        tiny_pipeline.text_to_image("a cat", num_inference_steps=1, output_type=output_type)


def test_each_output_type_gives_what_it_names(tiny_pipeline):
    def run(output_type):
        return tiny_pipeline.text_to_image(
            ["a cat", "a dog"], num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type=output_type
        ).images

    pt, np_, pil, latent = run("pt"), run("np"), run("pil"), run("latent")
    assert pt.shape == (2, 3, 16, 16) and pt.min() >= 0 and pt.max() <= 1  # diffusers' conventions: [0, 1]
    assert np_.shape == (2, 16, 16, 3) and np_.dtype == np.float32 and np.array_equal(np_, pt.permute(0, 2, 3, 1).numpy())
    assert len(pil) == 2 and pil[0].mode == "RGB" and pil[0].size == (16, 16)
    assert (np.stack([np.asarray(p) for p in pil]) == (np_ * 255).round()).all()  # the same pixels, each form
    assert latent.shape == (2, 4, 8, 8)


def test_sampling_away_from_the_trained_size_warns_once_naming_it(tiny_pipeline, caplog):
    tiny_pipeline.text_to_image("a cat", height=32, width=32, num_inference_steps=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "32x32" in warnings[0] and "trained at 16x16" in warnings[0]
    caplog.clear()
    tiny_pipeline.text_to_image("a cat", num_inference_steps=1)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_check_finite_names_what_holds_nan(value):
    x = torch.zeros(2, 4)
    check_finite(x, "the latents")
    x[1, 2] = value
    with pytest.raises(NonFiniteOutputError, match="the latents hold 1 NaN/inf value"):
        check_finite(x, "the latents")


# ---------------------------------------------------------------------------------------------- model folders
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_pipeline):
    """The tiny pipeline as `save_pretrained` writes it (plain and fp16-variant weights)."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture()
def model(tmp_path, saved_model):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    return folder


def _poison(folder, component, key_part):
    """Set one tensor of a component's weights to NaN (a model that diverged, or a bad conversion)."""
    path = folder / component / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    key = next(k for k in weights if key_part in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _only_fp16(folder, component):
    plain = folder / component / "diffusion_pytorch_model.safetensors"
    plain.rename(plain.with_name("diffusion_pytorch_model.fp16.safetensors"))


MODEL_FOLDERS = {
    "missing component": (lambda m: shutil.rmtree(m / "vae"), "lacks vae/"),
    "model_index.json not JSON": (lambda m: (m / "model_index.json").write_text("{oops"), "model_index.json"),
    "config.json not JSON": (lambda m: (m / "unet" / "config.json").write_text("unet: 1"), "unet/config.json"),
    "config.json a list": (lambda m: (m / "vae" / "config.json").write_text("[1, 2]"), "vae/config.json"),
    "scheduler config not JSON": (
        lambda m: (m / "scheduler" / "scheduler_config.json").write_text(""), "scheduler_config.json"),
    "no config at all": (lambda m: (m / "scheduler" / "scheduler_config.json").unlink(), "scheduler"),
    "missing weights": (lambda m: (m / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "no weights file"),
    "truncated safetensors": (lambda m: _truncate(m / "unet" / "diffusion_pytorch_model.safetensors"), "truncated"),
    "corrupted safetensors": (
        lambda m: (m / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(4096)), "vae/diffusion"),
    "safetensors header not JSON": (
        lambda m: (m / "image_unet" / "diffusion_pytorch_model.safetensors").write_bytes(
            (20).to_bytes(8, "little") + b"not json at all!!!!!" + b"\0" * 64), "image_unet/diffusion"),
    "only fp16 weights": (lambda m: _only_fp16(m, "unet"), "--variant fp16"),
    "text encoder truncated": (lambda m: _truncate(m / "text_encoder" / "model.safetensors"), "text_encoder/model"),
}


@pytest.mark.parametrize("case", list(MODEL_FOLDERS))
def test_broken_model_folder_is_one_line_naming_the_file(tmp_path, capsys, model, case):
    breakage, expected = MODEL_FOLDERS[case]
    breakage(model)
    out = tmp_path / "out" / "clip.mp4"
    assert main(["generate", "--prompt", "a cat", "--model", str(model), "--output", str(out), *FAST]) == 2
    _one_line_error(capsys, "generate", expected)
    assert not (tmp_path / "out").exists()


def test_variant_loads_a_folder_that_holds_only_fp16_files(tmp_path, tiny_pipeline):
    folder = tmp_path / "fp16"
    tiny_pipeline.save_pretrained(folder, variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    with pytest.raises(ValueError, match="pass variant='fp16'"):
        loading.load_pipeline(folder)
    pipe = loading.load_pipeline(folder, variant="fp16")
    assert torch.equal(pipe.vae.decoder.conv_out.weight, tiny_pipeline.vae.decoder.conv_out.weight)
    with pytest.raises(ValueError, match="no diffusion_pytorch_model.bf16.safetensors"):
        loading.load_pipeline(folder, variant="bf16")


@pytest.mark.parametrize(
    "component, key, expected",
    [("image_unet", "conv_out", "the image latents"), ("unet", "conv_out", "the video latents"),
     ("vae", "decoder.conv_out", "the decoded frames")],
)
def test_nan_weights_are_reported_not_written_as_black_frames(tmp_path, capsys, model, component, key, expected):
    _poison(model, component, key)
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a cat", "--model", str(model), "--output", str(out), *FAST]) == 2
    _one_line_error(capsys, "generate", expected, "NaN/inf")
    assert not out.exists()


def test_diffusion_pipeline_from_pretrained_loads_a_saved_emuvideo_folder(saved_model, tiny_pipeline):
    """The diffusers way: `DiffusionPipeline.from_pretrained` on what `save_pretrained` wrote, no remote code."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(saved_model)
    assert type(pipe) is type(tiny_pipeline)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=1, num_frames=2)
    ours = pipe("a cat", generator=torch.Generator().manual_seed(0), **kwargs).frames
    theirs = tiny_pipeline("a cat", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert np.array_equal(ours, theirs)


# ---------------------------------------------------------------------------------------------- configs
CONFIGS = {
    "does not parse": ("optim:\n  lr: [1e-4\n", ["not valid YAML", "line 3"]),
    "tab indentation": ("optim:\n\tlr: 1e-4\n", ["not valid YAML", "line 2"]),
    "unknown key": ("max_step: 10\n", ["unknown config key 'max_step'"]),
    "unknown nested key": ("optim:\n  learning_rate: 1e-4\n", ["'optim.learning_rate'"]),
    "wrong type": ("max_steps: ten\n", ["'max_steps' must be int, got 'ten'"]),
    "wrong nested type": ("data:\n  num_frames: [16]\n", ["'data.num_frames' must be int"]),
    "bad choice": ("mode: qlora\n", ["'mode' must be one of"]),
    "a list, not a mapping": ("- max_steps: 10\n", ["must hold a mapping", "list"]),
    "not text": (b"\xff\xfe\x00max_steps", ["cannot be read"]),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_yaml_config_names_the_file_and_the_key(tmp_path, capsys, case):
    content, expected = CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["train", "--config", str(path)]) == 2
    _one_line_error(capsys, "train", str(path), *expected)
    assert _files(tmp_path) == ["bad.yaml"]


@pytest.mark.parametrize("name", ["nope", "finetune/nope", "/no/such/file.yaml"])
def test_unknown_config_name_lists_the_packaged_ones(capsys, name):
    assert main(["train", "--config", name]) == 2
    line = _one_line_error(capsys, "train", repr(name))
    if not name.startswith("/"):
        assert "finetune/qlora" in line


@pytest.mark.parametrize("name", ["qlora", "finetune/qlora", "qlora.yaml", "configs/finetune/qlora.yaml"])
def test_packaged_configs_resolve_by_name(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the checkout: the name, not the working folder, finds it
    path = resolve_config(name)
    assert path.parts[-2:] == ("finetune", "qlora.yaml")
    assert load_config(TrainConfig, name).lora.quantize_base is True


# ---------------------------------------------------------------------------------------------- animate
def test_animate_refuses_a_decompression_bomb_before_loading(tmp_path, capsys, loads):
    from test_images import _png_claiming

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(50_000, 50_000))
    out = tmp_path / "clip.mp4"
    assert main(["animate", "--image", str(bomb), "--prompt", "it moves", "--output", str(out), *FAST]) == 2
    _one_line_error(capsys, "animate", str(bomb), "decompression bomb")
    assert loads == [] and _files(tmp_path) == ["bomb.png"]


def test_json_in_model_index_is_checked_before_weights(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "EmuVideoPipeline", "unet": ["x", "Y"]}))
    with pytest.raises(ValueError, match="lacks unet/"):
        loading.check_model_folder(tmp_path)



def test_eval_videos_with_a_corrupt_file_is_one_line_naming_it(tmp_path, capsys):
    """`eval --videos` over a folder holding a file that is not a video: one line naming it, exit 2."""
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle moves left slowly\n")
    assert main(["eval", "--videos", str(folder), "--captions", str(captions), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4" in err[0] and err[0].startswith("emuvideo eval: error: could not decode")
