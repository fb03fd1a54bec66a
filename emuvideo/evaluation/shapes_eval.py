"""Score a pipeline on the shapes world with the project's judge.

Over the 120 canonical prompts (15 colour x shape pairs x 4 directions x 2 speeds, one seed each), the
factorized pipeline (text -> image -> video) is judged on colour, shape, direction and speed; results are
reported overall, and separately for the pairs seen in video training and the three held out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.shapes import VIDEO_HELD_OUT_PAIRS, canonical_prompts
from ..pipelines.common import numpy_to_uint8
from .judge import judge_video, score

ATTRIBUTES = ("colour", "shape", "direction", "speed", "all")


@dataclass
class ShapesReport:
    rows: list[dict] = field(default_factory=list)  # one per prompt: prompt, held_out, judged values, scores

    def accuracy(self, held_out: bool | None = None) -> dict[str, float]:
        rows = [r for r in self.rows if held_out is None or r["held_out"] == held_out]
        return {a: float(np.mean([r["score"][a] for r in rows])) if rows else float("nan") for a in ATTRIBUTES}

    def summary(self) -> dict:
        return {
            "n": len(self.rows),
            "all_pairs": self.accuracy(),
            "video_pairs": self.accuracy(held_out=False),
            "held_out_pairs": self.accuracy(held_out=True),
        }

    def table(self) -> str:
        lines = ["| prompts | n | colour | shape | direction | speed | all four |", "|---|---|---|---|---|---|---|"]
        for name, held in (("all 15 pairs", None), ("12 video-trained pairs", False), ("3 held-out pairs", True)):
            n = sum(1 for r in self.rows if held is None or r["held_out"] == held)
            acc = self.accuracy(held)
            lines.append(f"| {name} | {n} | " + " | ".join(f"{100 * acc[a]:.1f}%" for a in ATTRIBUTES) + " |")
        return "\n".join(lines)


def evaluate_shapes(pipe, seed: int = 0, batch_size: int = 8, limit: int | None = None, **call_kwargs) -> ShapesReport:
    """Run `pipe` (an `EmuVideoPipeline`) on the canonical prompts and judge every video.

    Each prompt gets its own generator seeded with `seed`, so a prompt's video does not depend on the batch.
    """
    prompts = canonical_prompts()[:limit]
    report = ShapesReport()
    for start in tqdm(range(0, len(prompts), batch_size), desc="shapes eval"):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _ in chunk]
        # A list of generators: diffusers draws one noise slice per prompt, so a prompt's video is its own.
        out = pipe([p["prompt"] for p in chunk], generator=generators, **call_kwargs)
        for target, frames in zip(chunk, numpy_to_uint8(out.frames)):  # "np" is float in [0, 1]
            judgement = judge_video(frames, fps=out.fps)
            report.rows.append(
                {
                    "prompt": target["prompt"],
                    "held_out": (target["colour"], target["shape"]) in VIDEO_HELD_OUT_PAIRS,
                    "judged": {k: getattr(judgement, k) for k in ("colour", "shape", "direction", "speed")},
                    "score": score(judgement, target),
                }
            )
    return report


def evaluate_animate(pipe, seed: int = 0, batch_size: int = 8, limit: int | None = None, **call_kwargs) -> dict:
    """`animate` on rendered first frames: does the object move as told, and does frame 0 stay the input?

    For every canonical prompt a first frame is rendered (random size and position that leave room for
    the motion), the image-to-video stage animates it, and the judge scores the video; frame 0 is
    compared with the input image by PSNR.
    """
    import random

    from ..data.shapes import render_clip, sample_spec

    prompts = canonical_prompts()[:limit]
    num_frames = pipe.config.default_num_frames
    rng, rows = random.Random(seed), []
    i2v = pipe.image_to_video
    for start in tqdm(range(0, len(prompts), batch_size), desc="animate eval"):
        chunk = prompts[start : start + batch_size]
        firsts = [
            render_clip(sample_spec(rng, num_frames, pipe.config.default_fps, **{k: p[k] for k in ("colour", "shape", "direction", "speed")}), 1, pipe.config.default_fps)[0]
            for p in chunk
        ]
        generators = [torch.Generator().manual_seed(seed) for _ in chunk]
        out = i2v(firsts, [p["prompt"] for p in chunk], generator=generators, **call_kwargs)
        for target, first, frames in zip(chunk, firsts, numpy_to_uint8(out.frames)):
            mse = np.mean((frames[0].astype(np.float64) - first.astype(np.float64)) ** 2)
            rows.append({
                "prompt": target["prompt"],
                "psnr_frame0": float(10 * np.log10(255**2 / max(mse, 1e-10))),
                "score": score(judge_video(frames, fps=out.fps), target),
            })
    return {
        "n": len(rows),
        "direction": float(np.mean([r["score"]["direction"] for r in rows])),
        "all": float(np.mean([r["score"]["all"] for r in rows])),
        "psnr_frame0_mean": float(np.mean([r["psnr_frame0"] for r in rows])),
        "psnr_frame0_min": float(np.min([r["psnr_frame0"] for r in rows])),
        "frame0_at_least_30db": float(np.mean([r["psnr_frame0"] >= 30 for r in rows])),
        "rows": rows,
    }


def report_json(report: ShapesReport, **meta) -> dict:
    return {"meta": meta, "summary": report.summary(), "rows": report.rows}


__all__ = ["ShapesReport", "evaluate_animate", "evaluate_shapes", "report_json"]
