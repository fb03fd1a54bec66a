"""The training losses, in one place: each stage's `loss(model, batch)` ends in one of these.

- `diffusion_loss`: the denoising objective at a uniformly drawn timestep (image and video U-Nets);
- `video_training_loss`: known-frame-conditioned video diffusion (paper §3.2), or the interpolation model's
  (`interpolation_training_loss`);
- `AutoencoderLoss`: pixel MSE + L1 + a small KL, as a module so DDP sees the whole pass.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..models.conditioning import KnownFrames, known_frames_conditioning
from ..schedules import training_target


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


def video_training_loss(model, scheduler, latents, text, cfg) -> torch.Tensor:
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


def known_frames_sampler(cfg) -> KnownFrames:
    k = cfg.known_frames
    return KnownFrames({"first": k.first, "first_last": k.first_last, "keyframes": k.keyframes}, k.max_keyframes)


def interpolation_windows(latents: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
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


def interpolation_training_loss(model, scheduler, latents, text, cfg) -> torch.Tensor:
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


class AutoencoderLoss(torch.nn.Module):
    """The autoencoder's training loss as a module `forward`, so DDP sees (and syncs) the whole pass."""

    def __init__(self, vae, kl_weight: float, decoder_only: bool):
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
