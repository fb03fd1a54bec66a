"""Measuring frame interpolation and keyframes (issue 9): the model against real baselines, on held-back clips.

`evaluate_interpolation` runs four parts (scripts/eval_interpolation.py is its command line; a part with 0
clips / prompts is skipped):

a. In-between quality (`evaluate_in_between`). Held-back clips of the shapes world, clip i drawn by
   `random.Random(10_000 + i)` (training's `ShapesDataset` seeds item i with `SeedSequence([config seed, i])`,
   another stream; all 15 colour x shape pairs, the 3 held out of video training included). Each clip is rendered
   at 8·factor fps, (keys-1)·factor + 1 frames, so the true in-between frames exist; its key frames are every
   factor-th frame (8 fps). Methods: the interpolation model (prompted with the clip's canonical caption), the
   autoencoder ceiling, and the baselines of `emuvideo.evaluation.interpolation`. PSNR and SSIM over the
   in-between frames only (mean per clip, then over clips with a 95% bootstrap interval over clips).
b. Keyframes (`evaluate_keyframes`). Clips drawn by `random.Random(20_000 + i)`, 16 frames at 8 fps:
   `image_to_video(first, caption, last_image=last)`; PSNR of the output's first and last frames against the given
   images. For comparison the same with the first frame only.
c. Judge verdicts under `--interpolate 2` (`evaluate_verdicts`). The canonical prompts, one seed: text -> image ->
   video at 8 fps, judged strictly (direction, speed); then the same video interpolated x2 by the model and judged
   at 16 fps: the share of prompts whose verdicts are unchanged, with a Wilson 95% interval, and the strict
   all-correct rate before and after.
d. A GIF strip of one held-back clip and a PNG filmstrip beside it (`emuvideo.evaluation.interpolation_strip`).

Noise is drawn per clip / prompt from its own seeded CPU generator, so it does not depend on the batch size or on
order (on a CPU the whole run is deterministic).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.shapes import (
    REFERENCE_FPS, SPEEDS, ShapeSpec, canonical_caption, canonical_prompts, render_clip, sample_spec,
)
from ..pipelines.common import numpy_to_uint8
from .autoencoder import reconstruct
from .evaluate import prompt_seed
from .interpolation import BASELINES, bootstrap_interval, in_between_scores, psnr
from .stats import rate_record
from .strict_judge import judge_video_strict, score_strict

IN_BETWEEN_SEED = 10_000  # clip i: random.Random(10_000 + i)
KEYFRAME_SEED = 20_000  # clip i: random.Random(20_000 + i)
MODEL = "model"
CEILING = "autoencoder ceiling"  # the true frames through the VAE: the best any latent model can score
METHODS = (MODEL, CEILING, *BASELINES)  # model, ceiling, linear blend, minterpolate, repetition
KEYFRAME_FRAMES = 16
GOOD_PSNR_DB = 30.0


# ---------------------------------------------------------------------------------------------- seeds and clips
def clip_seed(seed: int, index: int) -> int:
    """The noise seed of clip `index` under run seed `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def held_back_spec(offset: int, index: int, num_frames: int) -> ShapeSpec:
    """Clip `index` of the shapes world, drawn by `random.Random(offset + index)` from all colour x shape pairs,
    fitting the frame for `num_frames` frames at 8 fps (and so at 8·f fps over (num_frames-1)·f + 1 frames)."""
    return sample_spec(random.Random(offset + index), num_frames, REFERENCE_FPS)


def held_back_specs(n: int, offset: int, num_frames: int) -> list[ShapeSpec]:
    return [held_back_spec(offset, i, num_frames) for i in range(n)]


def caption_of(spec: ShapeSpec) -> str:
    return canonical_caption(spec.colour, spec.shape, spec.direction, spec.speed)


def render_dense(spec: ShapeSpec, num_keys: int, factor: int, size: int) -> np.ndarray:
    """The clip at 8·factor fps: `((num_keys-1)·factor + 1, size, size, 3)` uint8; every factor-th frame a key."""
    return render_clip(spec, (num_keys - 1) * factor + 1, REFERENCE_FPS * factor, size=size)


def interpolation_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per clip (the pipeline draws all of a clip's windows from it), so that a clip's noise
    depends on its seed alone, not on the batch it is in."""
    return [torch.Generator().manual_seed(clip_seed(s, 0)) for s in seeds]


def interpolate(interp, keys: list[np.ndarray], prompts: list[str], factor: int, steps: int,
                seeds: list[int]) -> np.ndarray:
    """The model on B key-frame clips `(K, H, W, 3)` uint8 at 8 fps -> `(B, (K-1)·factor + 1, H, W, 3)` uint8."""
    gens = interpolation_generators(seeds)
    out = interp(np.stack(keys), prompts, factor=factor, num_inference_steps=steps, generator=gens,
                 fps=REFERENCE_FPS, output_type="np")
    return numpy_to_uint8(out.frames)  # "np" is float in [0, 1]; the metrics compare the bytes a file holds


def _batches(items: list, size: int, desc: str, progress: bool):
    for start in tqdm(range(0, len(items), size), desc=desc, disable=not progress):
        yield start, items[start : start + size]


def _mean_interval(values: list[float]) -> dict:
    low, high = bootstrap_interval(values)
    return {"mean": float(np.mean(values)), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------- a. in-betweens
def evaluate_in_between(interp, specs: list[ShapeSpec], factors: list[int], num_keys: int, steps: int, seed: int,
                        batch_size: int = 8, methods=METHODS, progress: bool = True) -> dict:
    """PSNR / SSIM of every method's in-between frames against the truth, per clip and factor.

    Returns {"rows": [{"clip", "factor", "prompt", "method": {"psnr", "ssim"}...}], "summary": [{"factor",
    "method", "n", "psnr": {"mean", "low", "high"}, "ssim": {...}}]} (intervals: 95% bootstrap over clips).
    """
    size = interp.size
    rows = []
    for factor in factors:
        for start, chunk in _batches(specs, batch_size, f"in-betweens x{factor}", progress):
            truths = [render_dense(spec, num_keys, factor, size) for spec in chunk]
            keys = [t[::factor] for t in truths]
            prompts = [caption_of(spec) for spec in chunk]
            outputs = {m: [BASELINES[m](k, factor, REFERENCE_FPS) for k in keys] for m in methods if m in BASELINES}
            if MODEL in methods:
                seeds = [clip_seed(seed, start + j) for j in range(len(chunk))]
                outputs[MODEL] = list(interpolate(interp, keys, prompts, factor, steps, seeds))
            if CEILING in methods:
                outputs[CEILING] = [autoencoder_round_trip(interp.vae, t, factor) for t in truths]
            for j, (truth, prompt) in enumerate(zip(truths, prompts)):
                row = {"clip": start + j, "factor": factor, "prompt": prompt, "speed": chunk[j].speed}
                rows.append(row | {m: in_between_scores(outputs[m][j], truth, factor) for m in methods})
    summary = []
    for factor in factors:
        mine = [r for r in rows if r["factor"] == factor]
        for m in methods:
            by_speed = {speed: [r[m]["psnr"] for r in mine if r["speed"] == speed] for speed in SPEEDS}
            summary.append({"factor": factor, "method": m, "n": len(mine),
                            **{k: _mean_interval([r[m][k] for r in mine]) for k in ("psnr", "ssim")},
                            "psnr_by_speed": {k: float(np.mean(v)) if v else None for k, v in by_speed.items()}})
    return {"rows": rows, "summary": summary}


def autoencoder_round_trip(vae, truth: np.ndarray, factor: int) -> np.ndarray:
    """The true frames encoded and decoded by the model's VAE, the key frames kept as given (as the model's
    output keeps them): what a perfect latent interpolator would score."""
    out = reconstruct(vae, truth)
    out[::factor] = truth[::factor]
    return out


def in_between_table(summary: list[dict]) -> str:
    """One row per (factor, method): PSNR and SSIM with their intervals, and PSNR on slow and on quick clips
    (keys 1 px apart are nearly a blend; 2.5 px apart is where motion matters)."""
    lines = ["| factor | method | clips | in-between PSNR (dB) | SSIM | PSNR slowly | PSNR quickly |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        p, q = s["psnr"], s["ssim"]
        speeds = " | ".join("-" if v is None else f"{v:.2f}" for v in s["psnr_by_speed"].values())
        lines.append(f"| x{s['factor']} | {s['method']} | {s['n']} | {p['mean']:.2f} ({p['low']:.2f}-{p['high']:.2f}) "
                     f"| {q['mean']:.4f} ({q['low']:.4f}-{q['high']:.4f}) | {speeds} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- b. keyframes
def evaluate_keyframes(pipe, specs: list[ShapeSpec], steps: int, seed: int, batch_size: int = 8,
                       num_frames: int = KEYFRAME_FRAMES, progress: bool = True) -> dict:
    """PSNR of the output's first and last frames against the given images, with `last_image` ("first + last") and
    without ("first only"; the same noise seeds)."""
    i2v = pipe.image_to_video
    size = i2v.default_size
    rows = []
    for start, chunk in _batches(specs, batch_size, "keyframes", progress):
        clips = [render_clip(spec, num_frames, REFERENCE_FPS, size=size) for spec in chunk]
        firsts, lasts = [c[0] for c in clips], [c[-1] for c in clips]
        prompts = [caption_of(spec) for spec in chunk]
        outs = {}
        for setting, extra in (("first + last", {"last_image": lasts}), ("first only", {})):
            gens = [torch.Generator().manual_seed(clip_seed(seed, start + j)) for j in range(len(chunk))]
            outs[setting] = numpy_to_uint8(i2v(firsts, prompts, num_frames=num_frames, num_inference_steps=steps,
                                               generator=gens, fps=REFERENCE_FPS, output_type="np", **extra).frames)
        for j, (first, last, prompt) in enumerate(zip(firsts, lasts, prompts)):
            scores = {setting: {"first": psnr(out[j][0], first), "last": psnr(out[j][-1], last)}
                      for setting, out in outs.items()}
            rows.append({"clip": start + j, "prompt": prompt, **scores})
    summary = {}
    for setting in ("first + last", "first only"):
        summary[setting] = {}
        for frame in ("first", "last"):
            values = [r[setting][frame] for r in rows]
            good = rate_record(sum(v >= GOOD_PSNR_DB for v in values), len(values))
            summary[setting][frame] = {"mean": float(np.mean(values)), "min": float(np.min(values)),
                                       f"at_least_{GOOD_PSNR_DB:.0f}db": good}
    return {"num_frames": num_frames, "rows": rows, "summary": summary}


def keyframe_table(summary: dict) -> str:
    key = f"at_least_{GOOD_PSNR_DB:.0f}db"
    lines = [f"| given | frame | PSNR mean (dB) | min | >= {GOOD_PSNR_DB:.0f} dB |", "|---|---|---|---|---|"]
    for setting, frames in summary.items():
        for frame, s in frames.items():
            r = s[key]
            lines.append(f"| {setting} | {frame} | {s['mean']:.2f} | {s['min']:.2f} | "
                         f"{100 * r['rate']:.1f}% ({100 * r['low']:.0f}-{100 * r['high']:.0f}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- c. verdicts
VERDICT_FIELDS = ("direction", "speed")


def _verdict(frames: np.ndarray, fps: float, target: dict) -> dict:
    j = judge_video_strict(frames, fps)
    return {"direction": j.direction, "speed": j.speed, "speed_at_8fps": None if np.isnan(j.speed_at_reference_fps)
            else float(j.speed_at_reference_fps), "all_correct": score_strict(j, target)["all"]}


def evaluate_verdicts(pipe, prompts: list[dict], steps: int, seed: int, batch_size: int = 8, factor: int = 2,
                      progress: bool = True) -> dict:
    """The strict judge's direction and speed on each prompt's video, before and after interpolating it x`factor`.

    Generation is what `pipe(prompt, interpolate=factor)` runs: text -> image -> video ("np" frames), then the
    interpolation model on those frames with the same number of steps; each prompt's noise is seeded by
    `prompt_seed(prompt, seed)` (the video) and by that seed and the window (the interpolation).
    """
    interp = pipe.interpolation
    if factor not in interp.config.factors:
        raise ValueError(f"the model interpolates x{interp.config.factors}, not x{factor}")
    rows = []
    for _, chunk in _batches(prompts, batch_size, f"verdicts x{factor}", progress):
        texts = [p["prompt"] for p in chunk]
        seeds = [prompt_seed(text, seed) for text in texts]
        video = pipe(texts, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=steps,
                     output_type="np")  # (B, T, H, W, 3) float in [0, 1]
        before = numpy_to_uint8(video.frames)
        gens = interpolation_generators(seeds)
        after = interp(video.frames, texts, factor=factor, num_inference_steps=steps, generator=gens, fps=video.fps,
                       output_type="np")
        for target, b, a in zip(chunk, before, numpy_to_uint8(after.frames)):
            row = {"prompt": target["prompt"], "before": _verdict(b, video.fps, target),
                   "after": _verdict(a, after.fps, target)}
            row["unchanged"] = {f: row["before"][f] == row["after"][f] for f in VERDICT_FIELDS}
            row["unchanged"]["both"] = all(row["unchanged"].values())
            rows.append(row)
    n = len(rows)
    summary = {
        "factor": factor,
        "unchanged": {f: rate_record(sum(r["unchanged"][f] for r in rows), n) for f in (*VERDICT_FIELDS, "both")},
        "all_correct": {when: rate_record(sum(r[when]["all_correct"] for r in rows), n)
                        for when in ("before", "after")},
    }
    return {"rows": rows, "summary": summary}


def verdict_table(summary: dict) -> str:
    f = summary["factor"]
    lines = [f"| under --interpolate {f} | prompts | rate (95% Wilson) |", "|---|---|---|"]
    for name, r in [*(("unchanged " + k, v) for k, v in summary["unchanged"].items()),
                    *((f"strict all-correct {k}", v) for k, v in summary["all_correct"].items())]:
        lines.append(f"| {name} | {r['n']} | {100 * r['rate']:.1f}% ({100 * r['low']:.0f}-{100 * r['high']:.0f}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- all four parts
@dataclass(frozen=True)
class InterpolationEvalConfig:
    """What `evaluate_interpolation` measures; 0 clips / prompts skips a part, `gif=None` writes no strip."""

    steps: int = 25  # sampler steps of every stage
    seed: int = 0
    batch_size: int = 8
    clips: int = 64  # held-back clips for the in-between table
    factors: tuple[int, ...] = (2, 4)
    keys: int = 9  # key frames (8 fps) per held-back clip
    keyframe_clips: int = 64  # clips for first/last-frame PSNR
    prompts_limit: int | None = None  # only the first N of the 120 canonical prompts (None: all)
    gif: str | None = "docs/interpolation_strip.gif"  # the GIF strip (and a .png beside it)
    gif_fps: int = 8  # the strip's playback rate (8: slowed by the factor)

    def __post_init__(self):
        for name in ("steps", "batch_size", "keys", "gif_fps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("clips", "keyframe_clips", "prompts_limit"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def evaluate_interpolation(pipe, config: InterpolationEvalConfig, progress: bool = True, meta: dict | None = None,
                           echo: Callable[[str], None] = lambda text: None) -> dict:
    """All four parts on `pipe` (an `EmuVideoPipeline` with an interpolation model).

    Returns {"meta", "in_between", "keyframes", "verdicts", "strip"} (the parts run); each part's table goes to
    `echo` as soon as it is done (`print` for a command line).
    """
    start = time.perf_counter()
    interp = pipe.interpolation  # fails now, naming what is missing, if the model has none
    bad = [f for f in config.factors if f not in interp.config.factors]
    if bad:
        raise ValueError(f"factors {bad} not trained: the model interpolates x{interp.config.factors}")
    result = {"meta": {
        **(meta or {}), "steps": config.steps, "seed": config.seed, "batch_size": config.batch_size,
        "device": str(pipe.device), "torch": torch.__version__,
        "in_between_seeds": f"clip i: random.Random({IN_BETWEEN_SEED} + i)",
        "keyframe_seeds": f"clip i: random.Random({KEYFRAME_SEED} + i)",
    }}
    if config.clips:
        specs = held_back_specs(config.clips, IN_BETWEEN_SEED, config.keys)
        result["in_between"] = evaluate_in_between(interp, specs, list(config.factors), config.keys, config.steps,
                                                   config.seed, config.batch_size, progress=progress)
        result["in_between"]["keys"] = config.keys
        echo(f"\nIn-between frames, {config.clips} held-back clips, {config.keys} key frames at 8 fps "
             f"(mean, 95% bootstrap interval over clips):\n" + in_between_table(result["in_between"]["summary"]))
    if config.keyframe_clips:
        specs = held_back_specs(config.keyframe_clips, KEYFRAME_SEED, KEYFRAME_FRAMES)
        result["keyframes"] = evaluate_keyframes(pipe, specs, config.steps, config.seed, config.batch_size,
                                                 progress=progress)
        echo(f"\nKeyframes, {config.keyframe_clips} clips of {KEYFRAME_FRAMES} frames: PSNR of the output's first "
             f"and last frames against the given images:\n" + keyframe_table(result["keyframes"]["summary"]))
    prompts = canonical_prompts()[: config.prompts_limit]
    if prompts:
        result["verdicts"] = evaluate_verdicts(pipe, prompts, config.steps, config.seed, config.batch_size,
                                               progress=progress)
        echo(f"\nStrict judge on {len(prompts)} canonical prompts (seed {config.seed}), before and after x2:\n"
             + verdict_table(result["verdicts"]["summary"]))
    if config.gif is not None:
        from .interpolation_strip import write_strip  # the strip module uses this one's clips and seeds

        factor = 4 if 4 in interp.config.factors else interp.config.factors[0]
        result["strip"] = write_strip(interp, config.gif, factor, config.keys, config.steps, config.seed,
                                      config.gif_fps)
        echo(f"\nwrote {result['strip']['gif']} and {result['strip']['png']} ({result['strip']['prompt']}, "
             f"x{factor})")
    result["meta"]["seconds"] = round(time.perf_counter() - start, 1)
    return result
