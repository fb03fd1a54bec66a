"""The multi-stage recipe that trains the default model on the shapes world (paper §4, at small scale).

`emuvideo train --config configs/stages/NAME.yaml` runs one stage; each stage reads the previous one's
`final/` folder (`init`) and writes its own:

- ``autoencoder``: a diffusers `AutoencoderKL` on single frames -> `final/vae`;
- ``image``: the text-to-image `UNet2DConditionModel` on single frames (all 15 colour x shape pairs)
  -> `final/` = vae + image_unet + image_scheduler (its sampling schedule, hence its objective);
- ``video``: the `EmuVideoUNet` inflated from the image U-Net (or continued from a video stage), trained on
  clips with the first frame as the image condition -> `final/` = a complete `EmuVideoPipeline` folder.

Data comes from the one seam (`emuvideo.data.sources`: `data.source: shapes | folder`), cached once in
`data.cache_dir`, keyed by everything that produced it. The video stages are `emuvideo.training.video`,
the path `emuvideo finetune` runs too.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..config import load_config, parse_overrides
from ..data.shapes import FRAME_SIZE
from ..data.sources import InMemory, collate, training_data
from ..models.conditioning import KnownFrames, known_frames_conditioning
from ..models.presets import build_unet2d, build_vae
from ..models.text_encoder import load_minilm
from ..pipelines.common import encode_frames, encode_prompt, to_uint8
from ..schedules import make_sample_scheduler, make_train_scheduler, training_target
from .config import TrainConfig
from .trainer import Trainer, TrainResult, resolve_resume, run_lock

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- losses
def diffusion_loss(model_fn, scheduler, latents: torch.Tensor, text: torch.Tensor, **model_kwargs) -> torch.Tensor:
    """MSE between the model's prediction and the objective's target at a uniformly drawn timestep.

    latents: `(B, C, ...)` clean latents; text: `(B, L, D)` token states.
    """
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = model_fn(noisy, t, text, **model_kwargs).sample
    return F.mse_loss(pred.float(), training_target(scheduler, latents, noise, t).float())


def drop_captions(captions: list[str], text_dropout: float) -> list[str]:
    """Empty some captions (probability `text_dropout`): trains the unconditional-text branch."""
    return ["" if random.random() < text_dropout else c for c in captions]


class CaptionEncoder:
    """Frozen-text-encoder states `(B, L, D)` for captions, memoised per caption string.

    The shapes world's captions come from a finite set of phrasings, so the text encoder (over half of a step's
    time on CPU) runs less and less often. The memo holds at most `max_items` captions (about 50 KB each): the
    rich grammar has ~10^6 phrasings, and a long run must not grow without bound.
    """

    def __init__(self, tokenizer, text_encoder, max_items: int = 20_000):
        self.tokenizer, self.text_encoder, self.memo, self.max_items = tokenizer, text_encoder, {}, max_items

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.memo})
        if missing:
            if len(self.memo) + len(missing) > self.max_items:
                self.memo.clear()
                missing = sorted(set(captions))
            states = encode_prompt(self.tokenizer, self.text_encoder, missing, device)
            self.memo.update(zip(missing, states))
        return torch.stack([self.memo[c] for c in captions]).to(device)


# ---------------------------------------------------------------------------------------------- data
def caption_for(spec: dict, style: str) -> str:
    """A random phrasing of a clip's spec in `style` (`data.captions`), drawn with python `random`, whose state the
    checkpoints restore."""
    from ..data.shapes import ShapeSpec, random_caption

    return random_caption(ShapeSpec(**spec), random, style=style)


# ---------------------------------------------------------------------------------------------- stages
def _load_vae(cfg: TrainConfig) -> AutoencoderKL:
    vae_dir = Path(cfg.init) / "vae"
    if not (vae_dir / "config.json").is_file():
        raise ValueError(f"init {cfg.init!r} has no vae/ folder (run the autoencoder stage first)")
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).requires_grad_(False).eval()
    return vae


def _pixels(batch: dict) -> torch.Tensor:
    return torch.stack([it["pixel_values"][:, 0] for it in batch])  # (B, 3, H, W)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class AutoencoderLoss(torch.nn.Module):
    """The autoencoder's training loss as a module `forward`, so DDP sees (and syncs) the whole pass."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float, decoder_only: bool):
        super().__init__()
        self.vae, self.kl_weight, self.decoder_only = vae, kl_weight, decoder_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `(B, 3, H, W)` in [-1, 1] -> scalar loss."""
        if self.decoder_only:
            with torch.no_grad():
                z = self.vae.encode(x).latent_dist.mode()
            recon, kl = self.vae.decode(z).sample, x.new_zeros(())
        else:
            posterior = self.vae.encode(x).latent_dist
            recon, kl = self.vae.decode(posterior.sample()).sample, posterior.kl().mean()
        # Pixel MSE + L1 keeps the thin object edges sharp; a tiny KL keeps the latent smooth.
        return F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + self.kl_weight * kl


def build_autoencoder_stage(cfg: TrainConfig) -> dict:
    from ..data.shapes import ShapesDataset

    vae = AutoencoderKL.from_pretrained(str(Path(cfg.init) / "vae")) if cfg.init else build_vae(cfg.preset)
    dataset = ShapesDataset("image", 1, cfg.data.fps, cfg.data.num_clips, seed=cfg.seed,
                            resolution=cfg.data.resolution or FRAME_SIZE)
    if cfg.data.in_memory:
        dataset = InMemory(dataset)
    if cfg.decoder_only:
        # Sharpen reconstructions after the diffusion models were trained on this latent space (as SD's
        # ft-MSE VAE did): the encoder is frozen, so every latent keeps its meaning.
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)

    def loss_fn(model, batch):
        return model(batch.to(model_device(model)))

    def sample_fn(model, step):
        vae = model.vae
        x = _pixels([dataset[i] for i in range(4)]).to(model_device(vae))
        with torch.no_grad():
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        pair = torch.stack([x, recon], dim=2)  # (B, 3, 2, H, W): original, reconstruction
        return {f"recon{i}": to_uint8(pair[i : i + 1])[0] for i in range(len(x))}

    def save_fn(model, folder):
        vae = model.vae
        # Scale latents to unit variance, as SD's scaling_factor does (measured on this stage's data).
        if not cfg.decoder_only:  # a decoder fine-tune keeps the encoder and so the scale
            x = _pixels([dataset[i] for i in range(min(256, len(dataset)))]).to(model_device(vae))
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
            vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        vae.save_pretrained(Path(folder) / "vae")

    model = AutoencoderLoss(vae, cfg.kl_weight, cfg.decoder_only)
    return dict(model=model, loss_fn=loss_fn, dataset=dataset, collate_fn=_pixels, sample_fn=sample_fn, save_fn=save_fn)


def build_image_stage(cfg: TrainConfig) -> dict:
    vae = _load_vae(cfg)
    tokenizer, text_encoder = load_minilm()
    image_unet_dir = Path(cfg.init) / "image_unet"
    if image_unet_dir.is_dir():
        unet = UNet2DConditionModel.from_pretrained(str(image_unet_dir))
    else:  # cross-attention takes the text encoder's states, whatever the preset's default width
        unet = build_unet2d(cfg.preset, cross_attention_dim=text_encoder.config.hidden_size)
    # The image stage sees the first frame of each `data.num_frames` clip: where an object starts depends on
    # where the caption says it is going (a fast clip moving down starts near the top).
    size = cfg.data.resolution or FRAME_SIZE
    dataset = _FirstFrames(training_data(cfg, vae, tokenizer, text_encoder, size, num_frames=1))
    train_scheduler = make_train_scheduler(cfg.objective)
    encode_text = CaptionEncoder(tokenizer, text_encoder)

    def loss_fn(model, batch):
        if "latents" in batch:
            x = batch["latents"]  # (B, C, h, w)
        else:  # no cache: the frozen VAE encodes the first frames, (B, 3, 1, H, W)
            with torch.no_grad():
                x = encode_frames(vae, batch["pixel_values"])[:, :, 0]
        captions = [caption_for(s, cfg.data.captions) for s in batch["spec"]] if "spec" in batch else list(batch["caption"])
        captions = drop_captions(captions, cfg.text_dropout)
        return diffusion_loss(model, train_scheduler, x, encode_text(captions, x.device))

    def sample_fn(model, step):
        from ..pipelines.text_to_image import EmuTextToImagePipeline

        pipe = EmuTextToImagePipeline(vae, text_encoder, tokenizer, model, make_sample_scheduler(cfg.objective))
        pipe.set_progress_bar_config(disable=True)
        images = pipe(cfg.sample_prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
        return {p: images[i][None] for i, p in enumerate(cfg.sample_prompts)}

    def save_fn(model, folder):
        vae.save_pretrained(Path(folder) / "vae")
        model.save_pretrained(Path(folder) / "image_unet")
        # the same sub-folder a pipeline folder has, so later stages read the objective one way
        make_sample_scheduler(cfg.objective).save_pretrained(Path(folder) / "image_scheduler")

    frozen = [vae, text_encoder]
    return dict(model=unet, loss_fn=loss_fn, dataset=dataset, collate_fn=collate, sample_fn=sample_fn,
                save_fn=save_fn, frozen=frozen)


class _FirstFrames(torch.utils.data.Dataset):
    """Items of a 1-frame training set as images: latents `(C, h, w)`, or without a cache pixel_values `(3, 1, H, W)`
    that the step encodes."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        if "latents" in item:
            item["latents"] = item["latents"][:, 0]
        return item


def load_image_stage(init: Path):
    """(vae, image_unet, image_scheduler) of an image stage's final/ folder."""
    from diffusers import DDIMScheduler

    _image_objective(init)  # a folder without image_scheduler/ is refused with the stage to run
    vae = AutoencoderKL.from_pretrained(str(init / "vae"))
    image_unet = UNet2DConditionModel.from_pretrained(str(init / "image_unet"))
    return vae, image_unet, DDIMScheduler.from_pretrained(str(init / "image_scheduler"))


def _image_objective(init: Path) -> str:
    """The text-to-image U-Net's objective, from the `image_scheduler/` that image and video stages both save."""
    config = init / "image_scheduler" / "scheduler_config.json"
    if not config.is_file():
        raise ValueError(f"init {str(init)!r} has no image_scheduler/ (run the image stage first)")
    return json.loads(config.read_text())["prediction_type"]


def video_training_loss(model, scheduler, latents, text, cfg: TrainConfig) -> torch.Tensor:
    """Known-frame-conditioned video diffusion loss (paper §3.2), shared by the stages and `finetune`.

    latents: `(B, C, T, h, w)`. Each sample knows the frames `cfg.known_frames` draws (the first, by
    default); the whole condition is dropped (zeros, mask 0) with probability `cfg.image_dropout`, which
    trains the X(∅) term of the two-condition guidance. The interpolation model has its own loss.
    """
    if cfg.interpolation.enabled:
        return interpolation_training_loss(model, scheduler, latents, text, cfg)
    b, _, t, _, _ = latents.shape
    known = known_frames_sampler(cfg).draw(b, t, latents.device)
    known &= (torch.rand(b, device=latents.device) >= cfg.image_dropout).view(b, 1)
    conditioning, mask = known_frames_conditioning(latents, known)
    return diffusion_loss(model, scheduler, latents, text, conditioning=conditioning, conditioning_mask=mask)


def known_frames_sampler(cfg: TrainConfig) -> KnownFrames:
    k = cfg.known_frames
    return KnownFrames({"first": k.first, "first_last": k.first_last, "keyframes": k.keyframes}, k.max_keyframes)


def interpolation_windows(latents: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one `window`-frame training sample per clip for the interpolation model (paper §3.2).

    latents: `(B, C, N, h, w)` of clips at `data.fps`. Each sample draws a factor f; its window plays at
    `key_fps * f` (every `data.fps / (key_fps * f)`-th clip frame, from a random start) and knows every
    f-th frame. Returns the windows `(B, C, window, h, w)` and `known` `(B, window)`.
    """
    ip = cfg.interpolation
    b, n = latents.shape[0], latents.shape[2]
    factors = torch.tensor(ip.factors)[torch.randint(len(ip.factors), (b,))]
    stride = cfg.data.fps // (ip.key_fps * factors)  # (B,)
    span = (ip.window - 1) * stride + 1
    start = (torch.rand(b) * (n - span + 1)).long()
    index = start[:, None] + stride[:, None] * torch.arange(ip.window)  # (B, window)
    windows = torch.stack([latents[i, :, index[i].to(latents.device)] for i in range(b)])
    known = (torch.arange(ip.window)[None] % factors[:, None]) == 0
    return windows, known.to(latents.device)


def interpolation_training_loss(model, scheduler, latents, text, cfg: TrainConfig) -> torch.Tensor:
    """Interpolation model loss: key-frame latents zero-interleaved in time plus the mask, the key frames
    noise-augmented to t ~ U[0, noise_aug_max] (paper §3.2), the whole window denoised."""
    windows, known = interpolation_windows(latents, cfg)
    conditioning, mask = known_frames_conditioning(windows, known)
    t_aug = torch.randint(0, cfg.interpolation.noise_aug_max + 1, (windows.shape[0],), device=windows.device)
    conditioning = scheduler.add_noise(conditioning, torch.randn_like(conditioning), t_aug) * mask
    keep = (torch.rand(windows.shape[0], device=windows.device) >= cfg.image_dropout).to(windows.dtype)
    keep = keep.view(-1, 1, 1, 1, 1)
    return diffusion_loss(model, scheduler, windows, text, conditioning=conditioning * keep,
                          conditioning_mask=mask * keep)


def _build_video_stage(cfg: TrainConfig) -> dict:
    from .video import build_video_stage

    return build_video_stage(cfg)


BUILDERS = {"autoencoder": build_autoencoder_stage, "image": build_image_stage, "video": _build_video_stage}


def run_stage(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Build the stage `cfg.kind` and train it (see `Trainer.train` for what it raises)."""
    from ..pipelines.loading import check_no_pickle

    # Checked before any model loads: the output folder is free, the checkpoint to resume from can be read, the
    # model to start from holds no pickle weights (unless allow_pickle).
    with run_lock(cfg.output_dir):
        if resume not in (None, "latest"):
            resolve_resume(Path(cfg.output_dir), resume)
        if cfg.init is not None and Path(cfg.init).is_dir():
            check_no_pickle(cfg.init, cfg.allow_pickle)
        set_seed(cfg.seed)  # a model built fresh (the image U-Net, the autoencoder) starts from the same weights
        parts = BUILDERS[cfg.kind](cfg)
        trainer = Trainer(
            cfg, parts["model"], parts["loss_fn"], parts["dataset"], collate_fn=parts["collate_fn"],
            sample_fn=parts["sample_fn"], save_fn=parts["save_fn"],
        )
        if parts.get("trainable_only"):  # checkpoints hold what trains; the frozen base is re-read from init
            from .video import checkpoint_trainable_only

            checkpoint_trainable_only(trainer.accelerator, cfg, trainer.accelerator.device)
        for module in parts.get("frozen", []):
            module.to(trainer.accelerator.device)
        return trainer.train(resume=resume)


def run_stage_from_cli(args) -> None:
    overrides = parse_overrides(args.set)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if getattr(args, "allow_pickle", False):
        overrides["allow_pickle"] = True
    if args.model is not None:
        local = Path(args.model).expanduser()
        overrides["init"] = str(local.resolve()) if local.is_dir() else args.model
    if args.data is not None:
        if not Path(args.data).is_dir():
            raise ValueError(f"--data {args.data!r}: no such folder")
        overrides.setdefault("data", {}).update(source="folder", root=str(Path(args.data).resolve()))
    cfg = load_config(TrainConfig, args.config, overrides)
    if cfg.kind != "video" and args.model is not None:
        raise ValueError(f"--model is for video stages; {args.config} trains kind: {cfg.kind} (set init instead)")
    result = run_stage(cfg, resume=args.resume)
    print(f"{result.output_dir} (step {result.step}, loss {result.last_loss:.4f})")
