"""`emuvideo estimate-memory`: a training step counted on the meta device is the same step counted on real
tensors, for every training mode; the estimate sees what the modes change; the CLI answers in one line."""

import json

import pytest

from emuvideo.cli import main
from emuvideo.config import parse_overrides
from emuvideo.training.finetune import finetune_config
from emuvideo.training.memory import measure_step, parse_bytes

MODES = {
    "full": ["mode=full", "freeze_spatial=false"],
    "temporal-only": ["mode=full"],
    "NF4 spatial": ["mode=full", "spatial_quantization=nf4", "optim.optimizer=adamw8bit"],
    "NF4 spatial + spatial LoRA": ["mode=full", "spatial_quantization=nf4", "spatial_lora=true"],
    "LoRA": ["mode=lora"],
    "QLoRA": ["mode=lora", "lora.quantize_base=true", "optim.optimizer=paged_adamw8bit"],
}
SHAPES = {"tiny": dict(frames=4, size=32, batch=2), "default": dict(frames=8, size=64, batch=1)}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


def _cfg(*pairs):
    return finetune_config(None, parse_overrides(list(pairs)))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "ckpt"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("preset", list(SHAPES))
def test_meta_estimate_equals_the_same_step_on_real_cpu_tensors(preset, mode, checkpointing):
    cfg = _cfg(*MODES[mode], f"gradient_checkpointing={str(checkpointing).lower()}")
    meta = measure_step(cfg, preset=preset, device="meta", target="cpu", **SHAPES[preset])
    cpu = measure_step(cfg, preset=preset, device="cpu", target="cpu", **SHAPES[preset])
    assert cpu.peak_bytes > 0 and meta.trainable_params == cpu.trainable_params
    assert abs(meta.peak_bytes - cpu.peak_bytes) <= 0.02 * cpu.peak_bytes, (meta.breakdown, cpu.breakdown)
    assert abs(meta.breakdown.get("weights", 0) - cpu.breakdown.get("weights", 0)) <= 0.02 * cpu.peak_bytes


def test_the_estimate_sees_what_each_memory_saving_saves():
    shape = dict(preset="default", frames=16, size=64, batch=1)
    peak = {name: measure_step(_cfg(*sets), **shape).peak_bytes for name, sets in MODES.items()}
    ckpt = measure_step(_cfg(*MODES["temporal-only"], "gradient_checkpointing=true"), **shape).peak_bytes
    assert ckpt < 0.7 * peak["temporal-only"]  # checkpointing every block, temporal attention included
    assert peak["temporal-only"] < peak["full"]
    full = measure_step(_cfg(*MODES["full"]), **shape)
    eight_bit = measure_step(_cfg(*MODES["full"], "optim.optimizer=adamw8bit"), **shape)
    assert eight_bit.breakdown["optimizer"] < 0.4 * full.breakdown["optimizer"]  # 2 bytes/param vs 8
    lora = measure_step(_cfg(*MODES["LoRA"]), **shape)
    qlora = measure_step(_cfg(*MODES["QLoRA"]), **shape)
    assert qlora.breakdown["weights"] < lora.breakdown["weights"]  # NF4 linear layers


def test_estimate_memory_cli_prints_the_breakdown_and_writes_json(tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(["estimate-memory", "--preset", "tiny", "--frames", "4", "--size", "32", "--set", "mode=full",
                 "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "peak (max_memory_allocated)" in text and "whole card" in text
    [row] = json.loads(out.read_text())
    assert row["peak_bytes"] > 0 and row["card_bytes"] > row["peak_bytes"] and row["frames"] == 4


def test_budget_lists_the_configs_that_fit_smallest_first(tmp_path, capsys):
    for name, body in (("small.yaml", "mode: lora\nbatch_size: 1\n"), ("big.yaml", "mode: full\nfreeze_spatial: false\nbatch_size: 8\n"),
                       ("stage.yaml", "kind: image\n")):
        (tmp_path / name).write_text(body)
    big = measure_step(_cfg(*MODES["full"], "batch_size=8"), preset="tiny", frames=4, size=32)
    small = measure_step(_cfg("mode=lora", "batch_size=1"), preset="tiny", frames=4, size=32)
    budget = (small.card_bytes + big.card_bytes) // 2  # between the two
    out = tmp_path / "b.json"
    code = main(["estimate-memory", "--preset", "tiny", "--frames", "4", "--size", "32", "--budget", f"{budget / 2**20}MB",
                 "--configs-dir", str(tmp_path), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "small.yaml" in text.split("too large")[0] and "big.yaml" in text.split("too large")[1]
    rows = json.loads(out.read_text())
    assert [r["fits"] for r in rows] == [True, False] and rows[0]["card_bytes"] <= rows[1]["card_bytes"]
    assert not any("stage.yaml" in r["name"] for r in rows)  # an image stage trains no video U-Net


@pytest.mark.parametrize("args, message", [
    (["--set", "mixed_precision=bf16"], "mixed_precision: bf16 cannot be estimated"),
    (["--set", "attention=xformers"], "attention: xformers cannot be estimated"),
    (["--frames", "0"], "--frames must be >= 1, got 0"),
    (["--size", "30"], "size must be a multiple of 8"),
    (["--budget", "lots"], "--budget 'lots' is not a memory size"),
    (["--model", "/no/such/folder"], "no such model folder"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_what_cannot_be_estimated_is_refused_in_one_line(capsys, args, message):
    code = main(["estimate-memory", "--preset", "tiny", *args] if "--preset" not in args else ["estimate-memory", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_parse_bytes():
    assert parse_bytes("24GB") == parse_bytes("24 GiB") == 24 * 2**30 and parse_bytes("512MB") == 2**29


def test_a_model_folder_is_estimated_from_its_config_alone(sd_folder):
    cfg = _cfg("mode=lora")
    from_folder = measure_step(cfg, model=str(sd_folder), frames=4, size=32, batch=1)
    from_preset = measure_step(cfg, preset="tiny", frames=4, size=32, batch=1)
    assert from_folder.total_params == from_preset.total_params  # conftest's SD folder holds the tiny U-Net
    assert from_folder.trainable_params == from_preset.trainable_params  # fresh inflation: conv_in trains
