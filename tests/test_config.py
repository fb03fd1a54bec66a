"""The config loader: one source of truth, unknown keys and wrong types named."""

import pytest

from emuvideo.config import load_config, parse_overrides, save_config
from emuvideo.training.config import TrainConfig


def test_yaml_and_overrides_fill_the_dataclass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kind: image\nbatch_size: 4\ndata:\n  fps: 16\noptim:\n  lr: 1\n")
    cfg = load_config(TrainConfig, path, parse_overrides(["data.num_frames=8", "optim.betas=[0.8, 0.9]"]))
    assert (cfg.kind, cfg.batch_size, cfg.data.fps, cfg.data.num_frames) == ("image", 4, 16, 8)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # an int where a float is due is fine
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.split == TrainConfig().data.split  # untouched nested defaults survive a partial section


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_sise: 4\n", "unknown config key 'batch_sise'"),
        ("data:\n  fsp: 4\n", "unknown config key 'data.fsp'"),
        ("batch_size: four\n", "config key 'batch_size' must be int, got 'four'"),
        ("kind: music\n", "config key 'kind' must be one of"),
        ("freeze_spatial: 1\n", "config key 'freeze_spatial' must be bool"),
        ("max_steps: true\n", "config key 'max_steps' must be int"),
    ],
)
def test_bad_configs_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(TrainConfig, path)


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; a float field takes it as the number it means, text stays refused."""
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(TrainConfig, path).optim.lr == 1e-4
    assert load_config(TrainConfig, None, parse_overrides(["optim.lr=5e-5"])).optim.lr == 5e-5
    with pytest.raises(ValueError, match="config key 'optim.lr' must be float, got 'fast'"):
        load_config(TrainConfig, None, parse_overrides(["optim.lr=fast"]))


def test_override_typo_is_named():
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        load_config(TrainConfig, None, parse_overrides(["optim.learning_rate=1e-4"]))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["lr"])


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(TrainConfig, None, parse_overrides(["kind=autoencoder", "data.fps=4", "lora.rank=8"]))
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg
