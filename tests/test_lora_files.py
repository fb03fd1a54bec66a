"""LoRA files the diffusers/peft way: weights readable by others (0o644 under umask 022, like their JSON), a
second adapter without a flood of other adapters' keys, a base model peft never looks up on the Hub, and a LoRA
file that is corrupt, truncated or contradicts its config refused in one line naming it (generate, lora merge)."""

import copy
import json
import logging
import os
import shutil

import pytest
import torch

from emuvideo.cli import main
from emuvideo.loaders import EmuVideoLoraLoaderMixin, load_lora
from emuvideo.training.config import LoraConfig
from emuvideo.training.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, add_lora, merge_lora, save_lora

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--steps", "1", "--num-frames", "2", "--device", "cpu", "-q"]


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder, pattern="*.safetensors") -> dict:
    return {p.relative_to(folder).as_posix(): oct(p.stat().st_mode & 0o777) for p in sorted(folder.rglob(pattern))}


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory, tiny_pipeline):
    """A rank-4 LoRA of the tiny pipeline's video U-Net, with non-zero B (it changes the output)."""
    unet = copy.deepcopy(tiny_pipeline.unet)
    add_lora(unet, LoraConfig(rank=4, alpha=4), base_model="emuvideo-default")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("lora") / "final"
    save_lora(unet, folder)
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_pipeline):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- permissions
def test_lora_folder_and_merged_model_weights_are_readable_by_others(umask_022, tiny_pipeline, lora_folder,
                                                                     model_folder, tmp_path):
    unet = copy.deepcopy(tiny_pipeline.unet)
    add_lora(unet, LoraConfig(rank=2, alpha=2))
    save_lora(unet, tmp_path / "lora")
    assert modes(tmp_path / "lora", "*") == {ADAPTER_CONFIG: "0o644", ADAPTER_WEIGHTS: "0o644"}

    merge_lora(model_folder, lora_folder, tmp_path / "merged")
    weights = modes(tmp_path / "merged")
    assert "unet/diffusion_pytorch_model.safetensors" in weights and set(weights.values()) == {"0o644"}


def test_diffusers_lora_file_and_saved_pipeline_are_readable_by_others(umask_022, tiny_pipeline, tmp_path):
    unet = copy.deepcopy(tiny_pipeline.unet)
    add_lora(unet, LoraConfig(rank=2, alpha=2))
    layers = {k: v for k, v in unet.state_dict().items() if ".lora_" in k}
    EmuVideoLoraLoaderMixin.save_lora_weights(tmp_path / "diffusers_lora", unet_lora_layers=layers)
    assert modes(tmp_path / "diffusers_lora") == {"pytorch_lora_weights.safetensors": "0o644"}

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    weights = modes(tmp_path / "pipe")
    assert len(weights) == 4 and set(weights.values()) == {"0o644"}, weights  # unet, image_unet, vae, text_encoder


def test_a_stricter_umask_is_respected(tiny_pipeline, tmp_path):
    old = os.umask(0o077)
    try:
        unet = copy.deepcopy(tiny_pipeline.unet)
        add_lora(unet, LoraConfig(rank=2, alpha=2))
        save_lora(unet, tmp_path / "lora")
    finally:
        os.umask(old)
    assert modes(tmp_path / "lora") == {ADAPTER_WEIGHTS: "0o600"}


# ---------------------------------------------------------------------------------------------- adapters
@pytest.fixture()
def diffusers_log(caplog):
    """caplog for diffusers' loggers (their root does not propagate to Python's)."""
    root = logging.getLogger("diffusers")
    root.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="diffusers"):
        yield caplog
    root.removeHandler(caplog.handler)


def test_a_second_adapter_named_b_logs_no_missing_keys_of_the_first(tiny_pipeline, lora_folder, diffusers_log):
    unet = copy.deepcopy(tiny_pipeline.unet)
    load_lora(unet, lora_folder)
    load_lora(unet, lora_folder, adapter_name="b")  # `down_blocks` holds a "b": diffusers took all keys as b's
    assert not [r for r in diffusers_log.records if "missing keys" in r.getMessage()]
    assert set(unet.peft_config) == {"default", "b"}


def test_missing_keys_of_the_adapter_itself_are_still_reported(tiny_pipeline, lora_folder, tmp_path, diffusers_log):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(lora_folder, folder)
    state = load_file(folder / ADAPTER_WEIGHTS)
    dropped = sorted(k for k in state if ".lora_B." in k)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, folder / ADAPTER_WEIGHTS)
    unet = copy.deepcopy(tiny_pipeline.unet)
    load_lora(unet, lora_folder)
    load_lora(unet, folder, adapter_name="b")
    [record] = [r for r in diffusers_log.records if "missing keys" in r.getMessage()]
    layer = dropped.removeprefix("base_model.model.").removesuffix(".weight")
    assert record.getMessage().count(".lora_") == 1 and f"{layer}.b.weight" in record.getMessage()


def test_the_lora_names_no_base_model_that_peft_would_look_up_on_the_hub(lora_folder, tiny_pipeline, tmp_path):
    assert json.loads((lora_folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] is None
    unet = copy.deepcopy(tiny_pipeline.unet)
    add_lora(unet, LoraConfig(rank=2, alpha=2), base_model=str(tmp_path))  # a local folder: kept, absolute
    assert unet.peft_config["default"].base_model_name_or_path == str(tmp_path.absolute())
    old = tmp_path / "old"  # a LoRA written before: its "emuvideo-default" is dropped when it loads
    shutil.copytree(lora_folder, old)
    config = json.loads((old / ADAPTER_CONFIG).read_text())
    (old / ADAPTER_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": "emuvideo-default"}))
    loaded = copy.deepcopy(tiny_pipeline.unet)
    load_lora(loaded, old)
    assert loaded.peft_config["default"].base_model_name_or_path is None


# ---------------------------------------------------------------------------------------------- bad LoRAs
def _corrupt(folder):
    data = bytearray((folder / ADAPTER_WEIGHTS).read_bytes())
    data[:8] = b"\xff" * 8  # a header length past the file's end
    (folder / ADAPTER_WEIGHTS).write_bytes(bytes(data))
    return [repr(str(folder / ADAPTER_WEIGHTS)), "not a readable safetensors file"]


def _truncate(folder):
    data = (folder / ADAPTER_WEIGHTS).read_bytes()
    (folder / ADAPTER_WEIGHTS).write_bytes(data[: len(data) * 2 // 3])
    return [repr(str(folder / ADAPTER_WEIGHTS)), "not a readable safetensors file"]


def _claim_rank_8(folder):
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "r": 8}))
    return [repr(str(folder)), "has rank 4 in its weights, the config says 8"]


BAD_LORAS = {"corrupt": _corrupt, "truncated": _truncate, "rank mismatch": _claim_rank_8}


@pytest.fixture(params=list(BAD_LORAS))
def bad_lora(request, lora_folder, tmp_path):
    folder = tmp_path / "bad-lora"
    shutil.copytree(lora_folder, folder)
    return folder, BAD_LORAS[request.param](folder)


def _one_line(capsys, command, expected):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"emuvideo {command}: error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def test_generate_refuses_a_bad_lora_in_one_line_naming_it(bad_lora, monkeypatch, tiny_pipeline, tmp_path, capsys):
    import emuvideo.pipelines.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda model=None, **kwargs: tiny_pipeline)
    folder, expected = bad_lora
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a cat", "--lora", str(folder), "--output", str(out), *FAST]) == 2
    _one_line(capsys, "generate", expected)
    assert not out.exists() and not getattr(tiny_pipeline.unet, "peft_config", None)  # nothing half-loaded


def test_lora_merge_refuses_a_bad_lora_in_one_line_naming_it(bad_lora, model_folder, tmp_path, capsys):
    folder, expected = bad_lora
    out = tmp_path / "merged"
    assert main(["lora", "merge", "--model", str(model_folder), "--lora", str(folder), "--output", str(out)]) == 2
    _one_line(capsys, "lora", expected)
    assert not out.exists()
