"""The typed stages: one `Stage` per kind, each reading its data through the one seam and owning its config section."""

from dataclasses import fields

import numpy as np
import PIL.Image
import pytest
import torch

from emuvideo.config import load_config, parse_overrides
from emuvideo.data.shapes import ShapesDataset
from emuvideo.training.config import TrainConfig
from emuvideo.training.losses import AutoencoderLoss
from emuvideo.training.stages import STAGES, Stage
from emuvideo.training.stages.autoencoder import AutoencoderStage

TOY = ["kind=autoencoder", "preset=tiny", "data.num_clips=6", "data.resolution=16", "data.cache_dir=null"]


def _cfg(tmp_path, *pairs):
    return load_config(TrainConfig, None, parse_overrides([*TOY, f"output_dir={tmp_path / 'run'}", *pairs]))


def test_every_kind_a_config_names_is_a_stage():
    kinds = next(f for f in fields(TrainConfig) if f.name == "kind").type
    assert set(STAGES) == {"autoencoder", "image", "video"} and all(k in kinds for k in STAGES)
    for stage in STAGES.values():
        assert issubclass(stage, Stage)
        for method in ("loss", "save"):  # every stage defines what one step and the result are
            assert getattr(stage, method) is not getattr(Stage, method), (stage, method)


def test_the_autoencoder_reads_the_shapes_world_through_the_data_seam_as_before(tmp_path):
    stage = AutoencoderStage(_cfg(tmp_path))
    # what the stage built by hand before it read data.source: 1-frame stills of every colour x shape pair
    before = ShapesDataset("image", 1, 8, 6, seed=0, resolution=16)
    assert len(stage.dataset) == len(before) == 6
    for i in range(len(before)):
        assert torch.equal(stage.dataset[i]["pixel_values"], before[i]["pixel_values"])
    batch = stage.collate_fn([stage.dataset[i] for i in range(4)])
    assert batch.shape == (4, 3, 16, 16)
    assert stage.loss(stage.model, batch).ndim == 0


def test_the_autoencoder_trains_on_your_frames_with_data_source_folder(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    for i, colour in enumerate(colours):
        PIL.Image.new("RGB", (16, 16), colour).save(clips / f"{i}.png")
        (clips / f"{i}.txt").write_text("a still")
    stage = AutoencoderStage(_cfg(tmp_path, "data.source=folder", f"data.root={clips}"))
    got = sorted(tuple(np.round(stage.dataset[i]["pixel_values"][:, 0, 8, 8].numpy(), 3)) for i in range(3))
    assert len(stage.dataset) == 3
    assert got == sorted(tuple(np.round(np.array(c) / 127.5 - 1, 3)) for c in colours)


def test_the_autoencoder_owns_its_config_section(tmp_path):
    stage = AutoencoderStage(_cfg(tmp_path, "autoencoder.kl_weight=0.5", "autoencoder.decoder_only=true"))
    assert isinstance(stage.model, AutoencoderLoss)
    assert stage.model.kl_weight == 0.5 and stage.model.decoder_only
    assert not any(p.requires_grad for p in stage.model.vae.encoder.parameters())
    with pytest.raises(ValueError, match="kl_weight"):  # the old top-level key names itself
        _cfg(tmp_path, "kl_weight=0.5")
    with pytest.raises(ValueError, match="autoencoder.kl_weight must be >= 0"):
        _cfg(tmp_path, "autoencoder.kl_weight=-1")
