"""The ablations (emuvideo.experiments.ablations, run by scripts/ablations.py) and their statistics: win rates,
their bootstrap interval, the arms' configs, and that the direct arm samples with the condition it was trained
with."""

import inspect
from pathlib import Path

import pytest
import torch

from emuvideo.config import load_config, parse_overrides, read_yaml
from emuvideo.evaluation.stats import bootstrap_win_rate, pairwise_wins, win_rate
from emuvideo.experiments import ablations
from emuvideo.schedules import make_train_scheduler
from emuvideo.training.config import TrainConfig
from emuvideo.training.losses import video_training_loss

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- win rates
def test_identical_scores_win_exactly_half():
    scores = [8, 3, 0, 5, 5, 7]
    assert win_rate(scores, scores) == 0.5
    assert bootstrap_win_rate(scores, scores) == (0.5, 0.5, 0.5)


def test_better_on_every_pair_wins_always_and_the_other_never():
    a, b = [8, 4, 1, 6], [7, 3, 0, 2]
    assert win_rate(a, b) == 1.0 and win_rate(b, a) == 0.0
    assert bootstrap_win_rate(a, b) == (1.0, 1.0, 1.0)


def test_ties_count_half_by_hand():
    a, b = [5, 5, 2, 8], [5, 3, 4, 8]  # tie, win, loss, tie
    assert pairwise_wins(a, b) == [0.5, 1.0, 0.0, 0.5]
    assert win_rate(a, b) == pytest.approx(2.0 / 4)
    assert win_rate(a, b) + win_rate(b, a) == 1.0


def test_unpaired_scores_are_refused():
    with pytest.raises(ValueError, match="paired"):
        win_rate([1, 2], [1])


def test_bootstrap_interval_holds_the_rate_and_narrows_with_more_pairs():
    a, b = [5, 3, 8, 2, 6], [4, 3, 6, 7, 1]  # win, tie, win, loss, win: 0.7
    rate, low, high = bootstrap_win_rate(a, b)
    assert rate == pytest.approx(0.7) and low <= rate <= high and high - low > 0
    rate10, low10, high10 = bootstrap_win_rate(a * 10, b * 10)
    assert rate10 == pytest.approx(0.7) and low10 <= rate10 <= high10
    assert high10 - low10 < (high - low) / 2  # ~1/sqrt(10) as wide
    assert bootstrap_win_rate(a * 10, b * 10) == (rate10, low10, high10)  # seeded: reproducible


def test_win_rates_pair_videos_by_prompt_and_seed():
    def arm(scores):
        return {"eval": {"rows": [{"prompt": p, "seed": s, "strict_score": v} for (p, s), v in scores.items()]}}

    arms = {"baseline": arm({("x", 0): 3, ("y", 0): 5}), "frozen": arm({("y", 0): 6, ("x", 0): 3})}
    wins = ablations.win_rates(arms)
    assert wins["baseline vs frozen"]["rate"] == 0.25  # tie on x, loss on y, whatever the row order
    assert ablations.vs_baseline("frozen", wins)["rate"] == 0.75


def test_strict_score_counts_the_eight_checks_not_all():
    row = {"strict": {c: True for c in ablations.STRICT_CHECKS} | {"all": True, "speed": False}}
    assert ablations.strict_score(row) == 7


# ---------------------------------------------------------------------------------------------- the arms
def _arm_config(name: str, stage: str = "train") -> TrainConfig:
    overrides = ablations.arm_overrides(name)
    if ablations.ARMS[name].finetune and stage == "head":
        overrides = {}
    return load_config(TrainConfig, ablations.BASE_CONFIG, parse_overrides([f"{k}={v!r}" for k, v in overrides.items()]))


def _differences(a, b) -> set[str]:
    from dataclasses import asdict

    flat_a, flat_b = ablations.flatten(asdict(a)), ablations.flatten(asdict(b))
    return {k for k in flat_a if flat_a[k] != flat_b[k]}


INTENDED = {
    "baseline": set(),
    "epsilon": {"objective"},
    "direct": {"image_dropout"},
    "frozen": {"freeze_spatial"},
    "high_motion": {"data.high_motion_fraction", "optim.lr", "optim.warmup_steps"},
}


def test_each_arm_differs_from_the_baseline_in_exactly_its_keys():
    assert set(ablations.ARMS) == set(INTENDED)
    base = _arm_config("baseline")
    for name, keys in INTENDED.items():
        assert _differences(_arm_config(name), base) == keys, name
        assert set(ablations.arm_overrides(name)) == keys, name  # nothing overridden to the baseline's own value
    assert _arm_config("epsilon").objective == "epsilon" and base.objective == "v_prediction"
    assert _arm_config("direct").image_dropout == 1.0
    assert _arm_config("frozen").freeze_spatial is True and base.freeze_spatial is False
    assert _differences(_arm_config("high_motion", "head"), base) == set()  # the first N - k steps: the baseline


def test_the_baseline_is_the_recipe_video_stage_and_high_motion_uses_stage_3s_lr_ratio():
    base, stage2, stage3 = (_arm_config("baseline"), load_config(TrainConfig, "03_video_stage2"),
                            load_config(TrainConfig, "04_video_stage3"))
    for key in ("objective", "freeze_spatial", "image_dropout", "text_dropout", "data.num_frames", "data.fps",
                "data.split", "optim.lr"):
        section, _, leaf = key.rpartition(".")
        get = (lambda c: getattr(getattr(c, section), leaf)) if section else (lambda c: getattr(c, key))
        assert get(base) == get(stage2), key
    assert base.data.high_motion_fraction is None
    hm = _arm_config("high_motion")
    assert hm.optim.lr / base.optim.lr == pytest.approx(stage3.optim.lr / stage2.optim.lr)
    assert hm.data.high_motion_fraction == stage3.data.high_motion_fraction
    assert hm.optim.warmup_steps == stage3.optim.warmup_steps


def test_overrides_survive_the_command_line_round_trip():
    for name in ablations.ARMS:
        overrides = ablations.arm_overrides(name)
        args = ablations.set_args(overrides)
        pairs = [a for a in args if a != "--set"]
        assert ablations.flatten(parse_overrides(pairs)) == overrides


def test_arm_yamls_hold_only_training_keys():
    for name, arm in ablations.ARMS.items():
        if arm.config is not None:
            load_config(TrainConfig, None, read_yaml(ablations.CONFIG_DIR / arm.config))  # unknown keys raise


# ---------------------------------------------------------------------------------------------- direct sampling
def test_direct_arm_samples_with_the_condition_image_dropout_trains_with(tiny_pipeline, monkeypatch):
    """Training under image_dropout 1.0 and the direct arm's sampling both hand the video U-Net an all-zero
    conditioning video and an all-zero mask, of the same shape and dtype."""
    seen = []
    forward = tiny_pipeline.unet.forward

    def spy(*args, **kwargs):
        bound = inspect.signature(forward).bind(*args, **kwargs).arguments  # however the caller names them
        seen.append((bound["conditioning"].clone(), bound["conditioning_mask"].clone()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline.unet, "forward", spy)
    direct = tiny_pipeline.image_to_video  # no image: sampled from the text alone (the direct arm)
    out = direct(None, ["a red circle moving right", "a blue square moving up"], num_inference_steps=2,
                 generator=[torch.Generator().manual_seed(i) for i in range(2)])
    frames = tiny_pipeline.image_to_video.config.default_num_frames
    assert out.frames.shape[:2] == (2, frames) and out.images is None
    assert len(seen) == 2  # one U-Net call per step: X(∅) and X(p) in one batch
    sample_cond, sample_mask = seen[0]

    cfg = _arm_config("direct")
    latents = torch.randn(4, *sample_cond.shape[1:])  # (B, C, T, h, w) as the cache holds them
    text = torch.randn(4, 3, 32)
    seen.clear()
    torch.manual_seed(0)
    video_training_loss(tiny_pipeline.unet, make_train_scheduler(cfg.objective), latents, text, cfg)
    train_cond, train_mask = seen[0]
    for sample, train in ((sample_cond, train_cond), (sample_mask, train_mask)):
        assert sample.shape[1:] == train.shape[1:] and sample.dtype == train.dtype
        assert torch.count_nonzero(sample) == 0 and torch.count_nonzero(train) == 0
    assert train_mask.shape[1] == 1


def test_direct_videos_depend_on_the_prompt_seed_only(tiny_pipeline):
    direct = tiny_pipeline.image_to_video  # no image: sampled from the text alone (the direct arm)
    one = direct(None, ["a red circle moving right"], num_inference_steps=2, generator=[torch.Generator().manual_seed(7)])
    two = direct(None, ["a blue square moving up", "a red circle moving right"], num_inference_steps=2,
                 generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(7)])
    assert (one.frames[0] == two.frames[1]).all()
