"""`emuvideo finetune` on a tiny model and a folder of tiny clips the tests write themselves: the CLI end to
end (bad clips named and skipped, the LoRA used by `generate`), exact resume, loud failures, multi-process."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import emuvideo.training.finetune as finetune
import emuvideo.training.stages.video as video
from emuvideo.cli import main
from emuvideo.config import load_config
from emuvideo.training.config import TrainConfig
from emuvideo.training.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from emuvideo.utils.video import read_frames, write_video

REPO = Path(__file__).resolve().parent.parent
FRAMES = 4  # per training clip; the tiny model works at 16x16 pixels
FAST = [f"data.num_frames={FRAMES}", "batch_size=2", "log_every=1", "sample_prompts=[a red square]"]


def _sets(*pairs: str) -> list[str]:
    """`--set` arguments: the fast tiny settings plus `pairs`."""
    return [arg for pair in [*FAST, *pairs] for arg in ("--set", pair)]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models are latency-bound


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_clip):
    """A tiny `EmuVideoPipeline` folder whose temporal layers are not at identity (as after training)."""
    from emuvideo.pipelines.loading import random_pipeline

    tokenizer, text_encoder = tiny_clip
    pipe = random_pipeline("tiny", text_encoder=text_encoder, tokenizer=tokenizer)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if ".temporal." in name:
                param.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("tiny-emu")
    pipe.save_pretrained(folder)
    return folder


def write_clips(folder: Path, n: int = 5) -> Path:
    """n captioned clips (mp4 and gif, odd sizes, 1 s at 8 fps), one corrupt mp4, one clip without caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n + 1):
        frames = rng.integers(0, 256, (8, 17 + 2 * i, 23 + i, 3), dtype=np.uint8)  # (T, H, W, 3)
        write_video(folder / f"clip{i}.{'gif' if i % 2 else 'mp4'}", frames, fps=8)
        if i < n:  # the last one has no caption
            (folder / f"clip{i}.txt").write_text(f"a {['red', 'blue', 'green'][i % 3]} square number {i}")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    (folder / "broken.txt").write_text("a broken clip")
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


def test_cli_default_is_lora_yaml_and_the_shipped_configs_load():
    assert finetune.finetune_config(None) == load_config(TrainConfig, REPO / "configs/finetune/lora.yaml")
    qlora = finetune.finetune_config(REPO / "configs/finetune/qlora.yaml")
    assert qlora.mode == "lora" and qlora.lora.quantize_base and qlora.gradient_checkpointing
    assert qlora.optim.optimizer == "paged_adamw8bit"
    assert qlora.batch_size * qlora.gradient_accumulation_steps == finetune.finetune_config(None).batch_size
    assert finetune.finetune_config(REPO / "configs/finetune/full.yaml").mode == "full"


def test_cli_finetune_skips_bad_clips_by_name_then_generate_uses_the_lora(model_dir, clips, tmp_path, monkeypatch,
                                                                          recwarn):
    monkeypatch.chdir(tmp_path)  # the defaults write runs/finetune here
    monkeypatch.setenv("EMUVIDEO_CACHE", str(tmp_path / "user-cache"))  # the latent cache: the user cache dir
    sets = _sets("sample_every=10", "checkpoint_every=10")
    assert main(["finetune", "--data", str(clips), "--model", str(model_dir), "--max-steps", "20", *sets]) == 0

    skipped = " ".join(str(w.message) for w in recwarn if "skipping" in str(w.message))
    assert "broken.mp4: corrupt" in skipped and "clip5.gif: no caption" in skipped and "clip0" not in skipped
    run = tmp_path / "runs/finetune"
    assert (run / "final" / ADAPTER_WEIGHTS).is_file() and (run / "final" / ADAPTER_CONFIG).is_file()
    assert len(list((run / "samples").glob("*.gif"))) == 2  # steps 10 and 20
    assert len((run / "losses.csv").read_text().splitlines()) == 20
    assert any((tmp_path / "user-cache" / "latents").iterdir())  # the latent cache (data.cache_dir's default)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "user-cache"]  # nothing in the current folder
    saved = load_config(TrainConfig, run / "config.yaml")
    assert saved.mode == "lora" and saved.init == str(model_dir.resolve())
    assert saved.data.root == str(clips.resolve())
    # Checkpoints hold the adapters only, not the frozen base.
    assert all("lora_" in k for k in load_file(run / "checkpoints/checkpoint-20/model.safetensors"))

    out = tmp_path / "x.mp4"
    args = ["generate", "--model", str(model_dir), "--prompt", "a red square", "--num-frames", "3", "--steps", "2"]
    assert main([*args, "-q", "--lora", str(run / "final"), "--output", str(out)]) == 0
    frames, _ = read_frames(out)
    assert frames.shape[0] == 3


def test_qlora_yaml_runs_samples_from_a_prompt_file_and_image_and_resumes(model_dir, clips, tmp_path):
    from PIL import Image

    (tmp_path / "prompts.txt").write_text("a red square\n\na blue square\n")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "first.png")
    run = tmp_path / "run"
    sets = _sets("sample_every=2", "checkpoint_every=2", f"data.cache_dir={tmp_path}/cache",
                 f"sample_prompt_file={tmp_path}/prompts.txt", f"sample_image={tmp_path}/first.png")
    args = ["finetune", "--config", str(REPO / "configs/finetune/qlora.yaml"), "--data", str(clips),
            "--model", str(model_dir), "--output-dir", str(run), *sets]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "4", "--resume", "latest"]) == 0
    assert sorted(p.name for p in (run / "samples").glob("*.gif")) == [
        "step000002-0.gif", "step000002-1.gif", "step000004-0.gif", "step000004-1.gif"]
    assert all("lora_" in k for k in load_file(run / "checkpoints/checkpoint-4/model.safetensors"))
    assert (run / "final" / ADAPTER_WEIGHTS).is_file()
    # Resuming a QLoRA run as another run (here: a LoRA of another rank) is refused, not silently mixed.
    assert main([*args, "--max-steps", "6", "--resume", "latest", "--set", "lora.rank=8"]) == 2


def test_full_finetune_of_the_temporal_layers_writes_a_model_folder(model_dir, clips, tmp_path):
    from emuvideo.pipelines.loading import load_pipeline

    cfg = finetune.finetune_config(REPO / "configs/finetune/full.yaml", {
        "data": {"num_frames": FRAMES, "cache_dir": str(tmp_path / "cache")}, "batch_size": 2, "sample_every": 0,
        "output_dir": str(tmp_path / "run"), "max_steps": 3, "optim": {"lr": 1e-2, "warmup_steps": 1}})
    final = _run(cfg, clips, model_dir).output_dir / "final"
    base, tuned = load_pipeline(model_dir).unet.state_dict(), load_pipeline(final).unet.state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".temporal." in k or k.startswith("unet.conv_in.") for k in changed)
    assert (final / "text_encoder").is_dir()  # a copy of the base folder with a new unet/


def _run(cfg, clips, model_dir, resume=None):
    return finetune.run_finetune(cfg, clips, model=str(model_dir), resume=resume)


def _lora(run: Path) -> dict:
    return load_file(run / "final" / ADAPTER_WEIGHTS)


def test_resume_is_exact_for_weights_optimizer_schedule_rng_and_data_position(model_dir, clips, tmp_path):
    # Sensitive by construction: 5 clips in shuffled batches of 2 (2 batches an epoch, so the stop falls
    # mid-epoch), an lr still warming up, LoRA dropout, caption and image dropout all drawing randomness.
    n = 3
    cfg = finetune.finetune_config(None, {"data": {"num_frames": FRAMES, "cache_dir": str(tmp_path / "cache")},
                                          "batch_size": 2, "sample_every": 0, "checkpoint_every": n, "log_every": 1,
                                          "lora": {"rank": 4, "dropout": 0.2}, "optim": {"lr": 3e-3, "warmup_steps": 4},
                                          "text_dropout": 0.3, "image_dropout": 0.3})
    straight = _run(replace(cfg, output_dir=str(tmp_path / "straight"), max_steps=2 * n), clips, model_dir).output_dir
    halves = tmp_path / "halves"
    _run(replace(cfg, output_dir=str(halves), max_steps=n), clips, model_dir)  # "killed" after n steps
    _run(replace(cfg, output_dir=str(halves), max_steps=2 * n), clips, model_dir, resume="latest")

    a, b = _lora(straight), _lora(halves)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert (halves / "losses.csv").read_text() == (straight / "losses.csv").read_text()
    # The tolerance means something: another seed moves the weights far more than it allows.
    other = _run(replace(cfg, output_dir=str(tmp_path / "other"), max_steps=2 * n, seed=1), clips, model_dir).output_dir
    assert max((_lora(other)[k] - a[k]).abs().max().item() for k in a) > 1e-3


def test_no_usable_clip_exits_2_with_one_line_naming_the_folder(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad_clips"
    write_clips(bad, n=0)  # only the corrupt clip and the uncaptioned one
    code = main(["finetune", "--data", str(bad), "--model", str(model_dir), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"emuvideo finetune: error: no usable clips in {bad}: 2 skipped")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(model_dir, clips, tmp_path, monkeypatch,
                                                                           capsys):
    real, calls = video.video_training_loss, []

    def loss_turning_nan(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(video, "video_training_loss", loss_turning_nan)
    run = tmp_path / "run"
    sets = _sets("checkpoint_every=2", "sample_every=0", f"data.cache_dir={tmp_path}/cache")
    args = ["finetune", "--data", str(clips), "--model", str(model_dir), "--output-dir", str(run)]
    code = main([*args, "--max-steps", "10", *sets])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("emuvideo finetune: error: loss is nan at step 4") and "checkpoint-4" in last
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (run / "final").exists()
    # The last good checkpoint resumes.
    monkeypatch.setattr(video, "video_training_loss", real)
    cfg = load_config(TrainConfig, run / "config.yaml")
    assert finetune.run_finetune(replace(cfg, max_steps=6), clips, model=str(model_dir), resume="latest").step == 6


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(model_dir, clips, tmp_path):
    run = tmp_path / "run"
    sets = _sets("sample_every=0", "checkpoint_every=2", f"data.cache_dir={tmp_path}/cache")
    # `accelerate launch --cpu` starts one process (several CPU processes need mpirun); the torchrun launcher
    # that --multi_gpu uses starts two, and ACCELERATE_USE_CPU makes them a gloo (CPU) process group: the
    # same DDP code path as on GPUs.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [*launch, "-m", "emuvideo.cli", "finetune", "--data", str(clips), "--model", str(model_dir),
           "--output-dir", str(run), "--max-steps", "4", *sets]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final (step 4") == 1  # the result is reported by the main process only
    assert (run / "final" / ADAPTER_WEIGHTS).is_file()
    ranks = sorted(p.name for p in (run / "checkpoints/checkpoint-4").glob("random_states_*.pkl"))
    assert ranks == ["random_states_0.pkl", "random_states_1.pkl"]  # really two processes, each checkpointed
    assert len((run / "losses.csv").read_text().splitlines()) == 4  # one line a step: logged by one process
