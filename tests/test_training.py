"""The multi-stage recipe at toy size: each stage trains, saves, and the next one builds on it."""

import os
import random
import subprocess
import sys

import numpy as np
from pathlib import Path

import pytest
import torch

from emuvideo.config import load_config, parse_overrides
from emuvideo.data.motion import motion_score
from emuvideo.data.shapes import render_clip, sample_spec
from emuvideo.models.video_unet import EmuVideoUNet
from emuvideo.pipelines.loading import load_pipeline
from emuvideo.schedules import make_train_scheduler
from emuvideo.training.config import TrainConfig
from emuvideo.data.motion import select_high_motion
from emuvideo.models.conditioning import KnownFrames, known_frames_conditioning
from emuvideo.training.stages import run_stage
from emuvideo.training.trainer import checkpoints

TOY = ["preset=tiny", "batch_size=4", "checkpoint_every=2", "sample_every=0", "log_every=1",
       "data.num_clips=8", "data.resolution=16"]


def _cfg(tmp_path, name, *pairs):
    overrides = parse_overrides(TOY + [f"output_dir={tmp_path / name}", f"data.cache_dir={tmp_path / 'cache'}", *pairs])
    return load_config(TrainConfig, None, overrides)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """autoencoder -> image -> video stage 1 (epsilon) -> video stage 2 (v, zero SNR), 2 steps each."""
    tmp = tmp_path_factory.mktemp("stages")
    run_stage(_cfg(tmp, "ae", "kind=autoencoder", "max_steps=2"))
    run_stage(_cfg(tmp, "img", "kind=image", "max_steps=2", f"init={tmp / 'ae' / 'final'}"))
    run_stage(_cfg(tmp, "v1", "kind=video", "max_steps=2", "objective=epsilon", "data.num_frames=4",
                   "data.fps=16", f"init={tmp / 'img' / 'final'}"))
    run_stage(_cfg(tmp, "v2", "kind=video", "max_steps=2", "data.num_frames=4", "data.fps=8",
                   f"init={tmp / 'v1' / 'final'}"))
    return tmp


def test_each_stage_leaves_a_loadable_result_and_logs(chain):
    assert (chain / "ae" / "final" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (chain / "img" / "final" / "image_unet" / "config.json").is_file()
    assert (chain / "img" / "final" / "image_scheduler" / "scheduler_config.json").is_file()
    for stage in ("ae", "img", "v1", "v2"):
        assert (chain / stage / "loss.png").is_file() and (chain / stage / "config.yaml").is_file()
        assert list((chain / stage / "logs").rglob("events.out.tfevents*")), "TensorBoard logs missing"
        assert [c.name for c in checkpoints(chain / stage)] == ["checkpoint-2"]
    pipe = load_pipeline(chain / "v2" / "final")
    out = pipe("a red circle moving left slowly", num_inference_steps=2, num_frames=4,
               generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 4, 16, 16, 3) and out.fps == 8
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.alphas_cumprod[-1] == 0  # stage 2 samples with zero terminal SNR
    # stage 2 continued from the epsilon stage 1; text -> image keeps the image U-Net's own objective
    assert pipe.image_scheduler.config.prediction_type == "v_prediction"


def test_interpolation_stage_trains_a_second_model_beside_the_video_model(chain):
    """interpolation.enabled: a copy of the video U-Net trains (temporal layers); final/ is the whole model
    folder with it as interpolation_unet and the video model unchanged; generate --interpolate uses it."""
    cfg = _cfg(chain, "ip", "kind=video", "max_steps=2", "data.num_frames=5", "data.fps=16",
               "interpolation.enabled=true", "interpolation.factors=[2]", "interpolation.window=5",
               f"init={chain / 'v2' / 'final'}")
    run_stage(cfg)
    video = EmuVideoUNet.from_pretrained(str(chain / "v2" / "final" / "unet"))
    pipe = load_pipeline(str(chain / "ip" / "final"))
    assert all(torch.equal(p, video.state_dict()[n]) for n, p in pipe.unet.state_dict().items())
    interp = pipe.interpolation_unet.state_dict()
    moved = [n for n, p in video.state_dict().items() if not torch.equal(p, interp[n])]
    assert moved and all(".temporal." in n or n.startswith("unet.conv_in.") for n in moved), moved
    assert pipe.config.interpolation == {"window": 5, "factors": [2], "noise_aug_t": 100}
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle moving right", num_frames=4, num_inference_steps=1, interpolate=2, height=16, width=16)
    assert out.frames.shape[1] == 7 and out.fps == 2 * pipe.config.default_fps


def test_video_stages_train_only_temporal_layers(chain):
    """Spatial layers stay frozen (paper §3.1): the video U-Net's spatial weights are the image U-Net's."""
    image_unet_dir = chain / "img" / "final" / "image_unet"
    from diffusers import UNet2DConditionModel

    image = UNet2DConditionModel.from_pretrained(str(image_unet_dir)).state_dict()
    video = EmuVideoUNet.from_pretrained(str(chain / "v2" / "final" / "unet"))
    spatial = video.spatial_state_dict()
    # conv_in stays trainable by design: its new channels carry the image condition and the mask
    changed = [k for k, v in image.items() if not k.startswith("conv_in.") and not torch.equal(v, spatial[k])]
    assert changed == []
    fresh = EmuVideoUNet.from_unet2d(UNet2DConditionModel.from_pretrained(str(image_unet_dir)), temporal_head_dim=8)
    trained = dict(video.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in fresh.named_parameters() if ".temporal." in n)


def test_resume_latest_continues_from_the_checkpoint(tmp_path):
    run_stage(_cfg(tmp_path, "ae", "kind=autoencoder", "max_steps=2"))
    result = run_stage(_cfg(tmp_path, "ae", "kind=autoencoder", "max_steps=4"), resume="latest")
    assert result.step == 4
    steps = [int(line.split(",")[0]) for line in (tmp_path / "ae" / "losses.csv").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 resumed; none repeated


def test_resume_after_a_kill_between_checkpoints_logs_each_step_once(tmp_path):
    run_stage(_cfg(tmp_path, "ae", "kind=autoencoder", "max_steps=2"))
    with open(tmp_path / "ae" / "losses.csv", "a") as f:  # steps 3-4 logged, then killed before a checkpoint
        f.write("3,0.5\n4,0.5\n")
    run_stage(_cfg(tmp_path, "ae", "kind=autoencoder", "max_steps=4"), resume="latest")
    lines = (tmp_path / "ae" / "losses.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in lines] == [1, 2, 3, 4]
    assert "3,0.5" not in lines  # the redone steps' own losses replace the lost run's


def test_max_minutes_stops_early_with_a_checkpoint_and_final(tmp_path):
    result = run_stage(_cfg(tmp_path, "ae", "kind=autoencoder", "max_steps=50", "max_minutes=0"))
    assert result.step == 1  # out of time after the first step, long before max_steps
    assert [c.name for c in checkpoints(tmp_path / "ae")] == ["checkpoint-1"]
    assert (tmp_path / "ae" / "final" / "vae" / "config.json").is_file()


def test_image_conditioning_is_frame_zero_and_dropout_clears_both():
    from emuvideo.training.losses import video_training_loss

    latents = torch.randn(64, 4, 5, 2, 2)
    seen = {}

    class Out:
        sample = torch.zeros(64, 4, 5, 2, 2)

    def model(noisy, t, text, conditioning, conditioning_mask):
        seen["cond"], seen["mask"] = conditioning, conditioning_mask
        return Out()

    torch.manual_seed(0)
    cfg = _cfg(Path("/nonexistent"), "x", "image_dropout=0.25")  # known_frames default: the first frame only
    video_training_loss(model, make_train_scheduler("v_prediction"), latents, torch.randn(64, 3, 8), cfg)
    cond, mask = seen["cond"], seen["mask"]
    kept = mask[:, 0, 0, 0, 0] == 1
    assert torch.equal(cond[kept][:, :, 0], latents[kept][:, :, 0])
    assert cond[:, :, 1:].abs().sum() == 0 and mask[:, :, 1:].abs().sum() == 0
    assert cond[~kept].abs().sum() == 0  # a dropped condition is all zeros, mask included
    assert 0 < (~kept).sum() < 64


def test_high_motion_subset_is_chosen_from_the_frames():
    """Stage 3's subset comes from the motion score of the pixels; here it recovers the quick clips."""
    rng = random.Random(0)
    specs = [sample_spec(rng, 16, 8, speed=("quickly" if i % 3 == 0 else "slowly")) for i in range(30)]
    scores = np.array([motion_score(render_clip(s, 16, 8)) for s in specs])
    chosen = select_high_motion(list(scores), fraction=1 / 3)  # the one selector, for every data source
    assert {specs[i].speed for i in chosen} == {"quickly"} and len(chosen) == 10
    with pytest.raises(ValueError):
        select_high_motion(list(scores), 0)


@pytest.mark.slow
def test_stage_runs_under_accelerate_launch_with_two_processes(tmp_path):
    config = tmp_path / "ae.yaml"
    config.write_text("kind: autoencoder\npreset: tiny\nbatch_size: 2\nmax_steps: 3\ncheckpoint_every: 3\n"
                      f"sample_every: 0\noutput_dir: {tmp_path / 'run'}\ndata:\n  num_clips: 16\n  resolution: 16\n")
    # `accelerate launch --cpu` starts one process (several need mpirun); --multi_gpu's torchrun launcher
    # starts two, and ACCELERATE_USE_CPU makes them a gloo process group: DDP as on GPUs, on CPU.
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "emuvideo.cli", "train", "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "vae" / "config.json").is_file()
    [ckpt] = checkpoints(tmp_path / "run")
    assert ckpt.name == "checkpoint-3"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]


def test_trainer_tells_the_dataset_each_epoch(tmp_path):
    from emuvideo.training.trainer import Trainer

    class Recorder(torch.utils.data.Dataset):
        def __init__(self):
            self.epochs = []

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.ones(3)

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    data = Recorder()
    cfg = load_config(TrainConfig, None, parse_overrides([f"output_dir={tmp_path}", "batch_size=2", "max_steps=3",
                                                          "checkpoint_every=100", "sample_every=0"]))
    Trainer(cfg, torch.nn.Linear(3, 1), lambda model, x: model(x).pow(2).mean(), data).train()
    # accelerate's prepared loader passes `set_epoch` on (ClipDataset's random crops rely on it)
    assert sorted(set(data.epochs)) == [0, 1, 2]  # one batch per epoch, three steps


def _losses(folder: Path) -> list[str]:
    return (folder / "losses.csv").read_text().splitlines()


def test_in_memory_data_changes_where_items_live_not_what_a_step_sees(chain, tmp_path):
    """`data.in_memory` reads the latent cache once: the same steps, the same losses as reading it every step. The
    image stage without a cache encodes each batch of held frames: the latents the cache would have held."""
    init = f"init={chain / 'v1' / 'final'}"
    video = ["kind=video", "max_steps=3", "data.num_frames=4", "data.fps=8", init]
    run_stage(_cfg(tmp_path, "disk", *video))
    run_stage(_cfg(tmp_path, "memory", *video, "data.in_memory=true"))
    assert _losses(tmp_path / "disk") == _losses(tmp_path / "memory")

    from diffusers import AutoencoderKL

    from emuvideo.data.sources import training_data
    from emuvideo.models.text_encoder import load_minilm
    from emuvideo.pipelines.common import encode_frames
    from emuvideo.training.stages.image import FirstFrames

    vae = AutoencoderKL.from_pretrained(chain / "ae" / "final" / "vae").eval()
    tokenizer, text_encoder = load_minilm()
    image = ["kind=image", f"init={chain / 'ae' / 'final'}"]
    cached = FirstFrames(training_data(_cfg(tmp_path, "i1", *image), vae, tokenizer, text_encoder, 16, 1))
    held = FirstFrames(training_data(_cfg(tmp_path, "i2", *image, "data.in_memory=true", "data.cache_dir=null"),
                                      vae, tokenizer, text_encoder, 16, 1))
    assert "latents" not in held[0] and len(held) == len(cached) == 8
    for i in range(len(held)):
        with torch.no_grad():
            encoded = encode_frames(vae, held[i]["pixel_values"][None])[0, :, 0]
        assert torch.allclose(encoded, cached[i]["latents"], atol=1e-6) and held[i]["spec"] == cached[i]["spec"]


def test_in_memory_holds_the_items_of_the_dataset():
    from emuvideo.data.shapes import ShapesDataset
    from emuvideo.data.sources import InMemory

    clips = ShapesDataset("video", 4, 8, 6, seed=3, resolution=16)
    for workers in (0, 2):
        held = InMemory(clips, num_workers=workers, progress=False)
        assert len(held) == 6 and held.source is clips
        for i in range(6):
            assert torch.equal(held[i]["pixel_values"], clips[i]["pixel_values"])
            assert held[i]["spec"] == clips[i]["spec"]
