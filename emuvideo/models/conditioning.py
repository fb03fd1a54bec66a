"""Known frames: the video U-Net's conditioning, shared by training and every pipeline (paper §3.2).

The video U-Net sees, beside the noisy latents, a conditioning video that holds the latents of the frames
that are known and zeros elsewhere, and a mask that is 1 at the known frames. Image-to-video knows frame 0;
first→last and keyframe videos know a few frames; the interpolation model (paper §3.2, "frame
interpolation") knows every `factor`-th frame of its window — one function builds the conditioning for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# How a training clip's known frames are drawn (`KnownFrames.draw`): the first frame only (image-to-video),
# the first and the last (first→last videos), or the first plus a few keyframes at random indices.
KNOWN_FRAME_MODES = ("first", "first_last", "keyframes")


def known_frames_conditioning(latents: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning video and mask for the frames marked known.

    Args:
        latents: `(B, C, T, h, w)`; only the known frames' values are read.
        known: `(B, T)` bool (or `(T,)`, the same for every sample), True at known frames.
    Returns:
        conditioning `(B, C, T, h, w)` (the known frames' latents, zeros elsewhere) and mask `(B, 1, T, h, w)`.
    """
    b, _, t, h, w = latents.shape
    known = known.expand(b, t) if known.ndim == 1 else known
    if known.shape != (b, t):
        raise ValueError(f"known must be (B, T) = {(b, t)}, got {tuple(known.shape)}")
    mask = known.to(latents.dtype).view(b, 1, t, 1, 1).expand(b, 1, t, h, w).contiguous()
    return latents * mask, mask


def keyframe_indices(num_keyframes: int, factor: int) -> list[int]:
    """Where `num_keyframes` frames land when the frame rate is multiplied by `factor` (key frames kept):
    every `factor`-th frame of `(num_keyframes - 1) * factor + 1`."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return list(range(0, (num_keyframes - 1) * factor + 1, factor))


@dataclass
class KnownFrames:
    """Which frames of a training clip the model is shown, drawn per sample.

    `probs` gives each mode of `KNOWN_FRAME_MODES` its probability (they need not sum to 1; they are
    normalised); "keyframes" knows the first frame and 1 to `max_keyframes` others at random indices.
    """

    probs: dict[str, float]
    max_keyframes: int = 3

    def __post_init__(self) -> None:
        unknown = set(self.probs) - set(KNOWN_FRAME_MODES)
        if unknown:
            raise ValueError(f"known_frames modes must be among {KNOWN_FRAME_MODES}, got {sorted(unknown)}")
        if any(not p >= 0 for p in self.probs.values()) or sum(self.probs.values()) <= 0:
            raise ValueError(f"known_frames probabilities must be >= 0 and not all 0, got {self.probs}")
        if self.max_keyframes < 1:
            raise ValueError(f"known_frames.max_keyframes must be >= 1, got {self.max_keyframes}")

    def draw(self, batch: int, num_frames: int, device=None) -> torch.Tensor:
        """`(batch, num_frames)` bool: True at the frames each sample knows."""
        modes = list(self.probs)
        weights = torch.tensor([self.probs[m] for m in modes], dtype=torch.float)
        picks = torch.multinomial(weights, batch, replacement=True)
        known = torch.zeros(batch, num_frames, dtype=torch.bool)
        known[:, 0] = True
        for i, pick in enumerate(picks.tolist()):
            mode = modes[pick]
            if mode == "first_last":
                known[i, -1] = True
            elif mode == "keyframes" and num_frames > 1:
                count = int(torch.randint(1, min(self.max_keyframes, num_frames - 1) + 1, ()))
                known[i, 1 + torch.randperm(num_frames - 1)[:count]] = True
        return known.to(device)
