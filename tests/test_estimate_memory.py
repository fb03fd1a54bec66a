"""`emuvideo estimate-memory`: a training step counted on the meta device is the same step counted on real
tensors, for every training mode; the estimate sees what the modes change; the CLI answers in one line;
`--budget` finds the packaged configs; the whole-card rule reproduces the H200 cards; FLOPs on meta = on CPU."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from emuvideo import config
from emuvideo.cli import main
from emuvideo.config import CONFIGS_DIR, parse_overrides
from emuvideo.training.finetune import finetune_config
from emuvideo.training.memory import (CUDA_CONTEXT_BYTES, FRAGMENTATION, QUANTIZED_CACHE, MemoryEstimate,
                                      card_rule_table, fitting_changes, measure_step, measurement_row, parse_bytes,
                                      preset_of_model)
from emuvideo.training.throughput import forward_flops, load_throughput, project

ROOT = Path(__file__).resolve().parent.parent

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
    assert "FLOPs per step" in text and "not measured for this mode on NVIDIA H200" in text  # fp32: no H200 row
    [row] = json.loads(out.read_text())
    assert row["peak_bytes"] > 0 and row["card_bytes"] > row["reserved_bytes"] > row["peak_bytes"] and row["frames"] == 4
    assert row["speed"]["flops_per_step"] > 0 and row["speed"]["seconds_per_step"] is None


def test_budget_lists_the_configs_that_fit_smallest_first(tmp_path, capsys):
    for name, body in (("small.yaml", "preset: tiny\nmode: lora\nbatch_size: 1\n"),
                       ("big.yaml", "preset: tiny\nmode: full\nfreeze_spatial: false\nbatch_size: 8\n"),
                       ("stage.yaml", "kind: image\n"), ("shipped_size.yaml", "mode: lora\n")):
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
    # written for the shipped model's size (no `preset:` key): skipped at the tiny size, and said so
    assert not any("shipped_size" in r["name"] for r in rows)
    assert f"skipped 1 config(s) written for another model size (preset: default): {tmp_path / 'shipped_size.yaml'}" in text


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


def test_a_model_folder_is_matched_to_its_preset(sd_folder):
    assert preset_of_model(str(sd_folder)) == "tiny"


# ---------------------------------------------------------------------------------------------- --budget (issue 19)
def test_budget_finds_the_packaged_configs_outside_a_checkout(tmp_path, monkeypatch, capsys):
    # An installed package: its configs inside emuvideo/configs/, no repository around, run from elsewhere.
    packaged = tmp_path / "site" / "emuvideo" / "configs"
    shutil.copytree(CONFIGS_DIR, packaged)
    (packaged / "video" / "tiny_probe.yaml").write_text("preset: tiny\nmode: lora\nbatch_size: 1\n")
    monkeypatch.setattr(config, "CONFIGS_DIR", packaged)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code = main(["estimate-memory", "--preset", "tiny", "--frames", "4", "--size", "32", "--budget", "1GB"])
    text = capsys.readouterr().out
    assert code == 0 and "configs/video/tiny_probe.yaml  (tiny, 4x32², batch 1)" in text.split("too large")[0]
    assert "../" not in text and "(preset: sd21): configs/video/sd_stage1.yaml" in text  # skipped, named as in docs
    assert "(preset: default): configs/experiments/ablations/baseline.yaml" in text


def test_the_nearest_miss_gets_each_change_estimated():
    cfg = _cfg("mode=full", "freeze_spatial=false", "batch_size=4")
    shape = dict(preset="tiny", frames=4, size=32)
    e = measure_step(cfg, **shape)
    budget = e.card_bytes - 1
    changes = dict(fitting_changes(cfg, e, budget, "tiny", None))
    assert {"--frames 2", "--batch 1 --set gradient_accumulation_steps=4", "--set weight_dtype=bf16",
            "--set gradient_checkpointing=true", "--set optim.optimizer=adamw8bit", "--set mode=lora"} <= set(changes)
    assert changes["--frames 2"].card_bytes == measure_step(cfg, preset="tiny", frames=2, size=32).card_bytes
    bf16 = measure_step(_cfg("mode=full", "freeze_spatial=false", "batch_size=4", "weight_dtype=bf16"), **shape)
    assert changes["--set weight_dtype=bf16"].card_bytes == bf16.card_bytes < e.card_bytes
    cards = [c.card_bytes for c in changes.values()]
    assert cards == sorted(cards)


# ------------------------------------------------------------------------------------- the whole card (issue 18)
@pytest.mark.slow
def test_the_card_rule_reproduces_each_measured_h200_card_within_6_percent():
    """docs/memory.md: each card read on the H200 within 6% (-4.4% ... +3.7%). A row whose card was not read has
    only its reserved to check (its "derived" card is that reserved + the fitted context, so it would check the
    context against itself): the reserved rule within 7% there (+6.6% at most, NF4 spatial)."""
    measurements = json.loads((ROOT / "docs" / "perf" / "h200_memory.json").read_text())
    fit, rows = card_rule_table(measurements)
    assert (round(fit[0], 3), round(fit[1], 3)) == (FRAGMENTATION, QUANTIZED_CACHE)  # the constants are this fit
    assert abs(fit[2] - CUDA_CONTEXT_BYTES) <= 1
    assert sum(row["card_read"] for row in rows) == 3 and len(rows) == 6
    for row in rows:  # each card as MemoryEstimate.card_bytes computes it from the estimate alone
        e = MemoryEstimate("", "", 16, 512, 1, peak_bytes=row["peak_bytes"], quantized_bytes=row["quantized_bytes"])
        if row["card_read"]:
            assert abs(e.card_bytes / row["card_bytes"] - 1) < 0.061, row["mode"]
        else:
            assert abs(e.reserved_bytes / row["reserved_bytes"] - 1) < 0.07, row["mode"]
        assert abs(e.peak_bytes / row["allocated_bytes"] - 1) < 0.02, row["mode"]  # the peak estimate, unchanged


# ---------------------------------------------------------------------------------------------- FLOPs and seconds
def test_flops_counted_on_meta_equal_the_count_on_real_cpu_tensors():
    cfg = _cfg("mode=full")
    meta = forward_flops(cfg, "tiny", None, frames=4, size=32, batch=2, device="meta")
    cpu = forward_flops(cfg, "tiny", None, frames=4, size=32, batch=2, device="cpu")
    assert meta == cpu > 0
    assert forward_flops(cfg, "tiny", None, frames=4, size=32, batch=4) == 2 * meta  # linear in the batch


def test_the_sd21_forward_counted_on_meta_is_the_one_counted_on_the_h200():
    table = load_throughput()
    cfg = _cfg("weight_dtype=bf16")
    flops = forward_flops(cfg, table["shape"]["preset"], None, table["shape"]["frames"], table["shape"]["size"], 1)
    assert abs(flops / table["forward_flops_batch1"] - 1) < 0.01  # 18.07 vs 18.1 TFLOP (FlopCounterMode on CUDA)


def test_seconds_are_projected_only_from_a_measured_row_of_the_same_mode():
    table = load_throughput()
    paper = _cfg(*table["rows"][0]["sets"])
    at_measured = project(paper, table["forward_flops_batch1"], 1, table)
    assert at_measured.seconds == pytest.approx(0.458)
    assert "estimate (from NVIDIA H200 measurements" in at_measured.describe()
    assert project(paper, 4 * table["forward_flops_batch1"], 4, table).seconds == pytest.approx(0.953)
    assert project(paper, 2 * table["forward_flops_batch1"], 2, table).row["batch"] == 1  # not the faster batch 4
    lora = project(_cfg("mode=lora", "weight_dtype=bf16"), table["forward_flops_batch1"], 1, table)
    assert lora.seconds is None and "not measured for this mode" in lora.describe()


def test_the_card_rule_reads_what_check_memory_estimate_writes():
    """scripts/check_memory_estimate.py writes its GPU runs in docs/perf/h200_memory.json's format
    (`measurement_row`), with a size per row and out-of-memory rows: `--card-rule FILE` fits to it as written. A
    synthetic file whose runs follow a known rule (reserved = 1.2 x peak + 0.5 x replaced, card = reserved + 0.75 GiB)
    gives that rule back. (The script rounds to 0.001 GiB; the tiny model's peaks are about that, so 12 digits here.)"""
    GiB = 2**30
    shape = {"preset": "tiny", "frames": 4, "size": 32, "batch": 1}
    rows = []
    for mode, sets, size in (("full", ["mode=full", "freeze_spatial=false"], 32), ("temporal", ["mode=full"], 64),
                             ("QLoRA", ["mode=lora", "lora.quantize_base=true"], 32)):
        sets = [*sets, "weight_dtype=bf16"]
        e = measure_step(_cfg(*sets), preset="tiny", frames=4, size=size, batch=1)
        reserved = round(1.2 * e.peak_bytes + 0.5 * e.quantized_bytes)
        measured = replace(e, measured_bytes=e.peak_bytes, measured_reserved_bytes=reserved,  # stands for a CUDA run
                           measured_card_bytes=reserved + round(0.75 * GiB))
        rows.append(measurement_row(mode, sets, size, e, measured, digits=12))
    too_big = measure_step(_cfg("mode=full"), preset="tiny", frames=4, size=512, batch=1)
    rows.append(measurement_row("too big", ["mode=full"], 512, too_big, None))  # out of memory: nothing measured
    assert rows[-1]["allocated_gib"] is rows[-1]["reserved_gib"] is rows[-1]["card_gib"] is None
    assert rows[0]["estimate_gib"] == rows[0]["allocated_gib"] and rows[0]["estimate_card_gib"] > 0
    (fragmentation, cache, context), table = card_rule_table({"shape": shape, "sets": [], "rows": rows})
    assert [r["mode"] for r in table] == ["full", "temporal", "QLoRA"]  # the out-of-memory row is skipped
    assert abs(fragmentation - 0.2) < 1e-4 and abs(cache - 0.5) < 1e-4 and abs(context - 0.75 * GiB) <= 2
    assert all(abs(r["card_error"]) < 1e-4 for r in table)
