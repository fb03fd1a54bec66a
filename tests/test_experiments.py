"""The QLoRA-claim experiment (emuvideo.experiments.qlora_claim, run by scripts/qlora_claim.py): its four methods
differ only where they say they do, and its data and prompts are the new concept it claims to teach."""

import dataclasses

import pytest

from emuvideo.data.shapes import DIAGONALS, DIRECTIONS, parse_caption
from emuvideo.evaluation.strict_judge import judge_video_strict, score_strict
from emuvideo.experiments import qlora_claim as qc
from emuvideo.training.finetune import finetune_config
from emuvideo.utils.video import read_frames


def _flat(config) -> dict:
    out = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _differences(a: str, b: str) -> set[str]:
    fa, fb = (_flat(finetune_config(qc.config_path(name))) for name in (a, b))
    return {k for k in fa if fa[k] != fb[k]}


@pytest.mark.parametrize("a, b, expected", [
    ("lora", "qlora", {"lora.quantize_base"}),                  # only the NF4 base
    ("qlora", "qlora_paged", {"optim.optimizer"}),              # only the paged 8-bit optimizer
    ("full", "lora", {"mode"}),                                 # full weights vs adapters; nothing else
])
def test_methods_differ_only_in_what_they_compare(a, b, expected):
    assert _differences(a, b) == expected


def test_every_method_trains_the_same_data_for_the_same_steps():
    configs = [finetune_config(qc.config_path(m)) for m in qc.METHODS]
    for c in configs:
        assert c.data == configs[0].data and c.gradient_checkpointing is False
        assert c.optim.warmup_steps == configs[0].optim.warmup_steps and c.seed == configs[0].seed


def test_rendered_data_is_diagonal_motion_its_captions_say_so_and_the_judge_agrees(tmp_path):
    qc.render_data(tmp_path, clips=12, seed=3)
    clips = sorted(tmp_path.glob("*.gif"))
    assert len(clips) == 12
    seen = set()
    for clip in clips:
        target = parse_caption(clip.with_suffix(".txt").read_text())
        assert target["direction"] in DIAGONALS
        seen.add(target["direction"])
        frames, fps = read_frames(clip)
        assert frames.shape == (qc.NUM_FRAMES, 64, 64, 3) and fps == pytest.approx(qc.FPS, rel=0.05)  # GIF: 12 cs a frame
        assert score_strict(judge_video_strict(frames, fps), target)["all"]
    assert len(seen) >= 3
    qc.render_data(tmp_path, clips=12, seed=3)  # a second call with the same settings writes nothing
    assert len(list(tmp_path.glob("*.gif"))) == 12


def test_concept_prompts_are_all_diagonal_and_none_is_in_the_training_prompts():
    prompts = qc.concept_prompts()
    assert len(prompts) == 48 and {p["direction"] for p in prompts} == set(DIAGONALS)
    assert all(parse_caption(p["prompt"])["direction"] == p["direction"] not in DIRECTIONS for p in prompts)
