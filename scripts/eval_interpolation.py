"""Measure frame interpolation and keyframes (issue 9): the model against real baselines, on held-back clips.

Usage:
    python scripts/eval_interpolation.py --model runs/default/interpolation/final --json interpolation.json
    python scripts/eval_interpolation.py --model DIR --clips 4 --keyframe-clips 2 --prompts-limit 4 --steps 5  # a look

Four parts, all in one run (a part with 0 clips / prompts is skipped):

a. In-between quality. Held-back clips of the shapes world, clip i drawn by `random.Random(10_000 + i)` (training's
   `ShapesDataset` seeds item i with `SeedSequence([config seed, i])`, another stream; all 15 colour x shape pairs,
   the 3 held out of video training included). Each clip is rendered at 8·factor fps, (keys-1)·factor + 1 frames,
   so the true in-between frames exist; its key frames are every factor-th frame (8 fps). Methods: the
   interpolation model (prompted with the clip's canonical caption), linear blending, frame repetition and
   FFmpeg's `minterpolate`. PSNR and SSIM over the in-between frames only (mean per clip, then over clips with a
   95% bootstrap interval over clips).
b. Keyframes. Clips drawn by `random.Random(20_000 + i)`, 16 frames at 8 fps: `image_to_video(first, caption,
   last_image=last)`; PSNR of the output's first and last frames against the given images. For comparison the
   same with the first frame only (its last frame's PSNR shows how far an unconditioned end lies).
c. Judge verdicts under `--interpolate 2`. The canonical prompts, one seed: text -> image -> video at 8 fps,
   judged strictly (direction, speed); then the same video interpolated x2 by the model and judged at 16 fps.
   Reported: the share of prompts whose judged direction and judged speed band are unchanged ("none found" is a
   value too: None before and after is unchanged), with a Wilson 95% interval, and the strict all-correct rate
   before and after.
d. A GIF strip of one held-back clip (ground truth | model | linear blend | minterpolate | repetition), and a
   PNG filmstrip of its first two key intervals beside it.

Noise is drawn per clip / prompt from its own seeded CPU generator, so it does not depend on --batch-size or on
order (on a CPU the whole run is deterministic).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from tqdm.auto import tqdm

from emuvideo.data.shapes import (
    REFERENCE_FPS, SPEEDS, ShapeSpec, canonical_caption, canonical_prompts, render_clip, sample_spec,
)
from emuvideo.evaluation.evaluate import prompt_seed
from emuvideo.evaluation.interpolation import (
    BASELINES,
    bootstrap_interval,
    ffmpeg_minterpolate,
    in_between_scores,
    linear_blend,
    psnr,
    repeat_frames,
)
from emuvideo.evaluation.stats import wilson_interval
from emuvideo.evaluation.strict_judge import judge_video_strict, score_strict
from emuvideo.pipelines.common import decode_frames, encode_frames, frames_to_output

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


def interpolation_generators(interp, seeds: list[int], num_keys: int, factor: int) -> list[torch.Generator]:
    """One CPU generator per clip (the pipeline draws all of a clip's windows from it), so that a clip's noise
    depends on its seed alone, not on the batch it is in."""
    return [torch.Generator().manual_seed(clip_seed(s, 0)) for s in seeds]


def interpolate(interp, keys: list[np.ndarray], prompts: list[str], factor: int, steps: int,
                seeds: list[int]) -> np.ndarray:
    """The model on B key-frame clips `(K, H, W, 3)` uint8 at 8 fps -> `(B, (K-1)·factor + 1, H, W, 3)` uint8."""
    gens = interpolation_generators(interp, seeds, len(keys[0]), factor)
    return interp(np.stack(keys), prompts, factor=factor, num_inference_steps=steps, generator=gens,
                  fps=REFERENCE_FPS, output_type="np").frames


def _batches(items: list, size: int, desc: str, progress: bool):
    for start in tqdm(range(0, len(items), size), desc=desc, disable=not progress):
        yield start, items[start : start + size]


def _mean_interval(values: list[float]) -> dict:
    low, high = bootstrap_interval(values)
    return {"mean": float(np.mean(values)), "low": low, "high": high}


def _rate(k: int, n: int) -> dict:
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "low": low, "high": high}


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


@torch.no_grad()
def autoencoder_round_trip(vae, truth: np.ndarray, factor: int) -> np.ndarray:
    """The true frames encoded and decoded by the model's VAE, the key frames kept as given (as the model's
    output keeps them): what a perfect latent interpolator would score."""
    x = torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, T, H, W)
    out = frames_to_output(decode_frames(vae, encode_frames(vae, x)), "np")[0]
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
            outs[setting] = i2v(firsts, prompts, num_frames=num_frames, num_inference_steps=steps, generator=gens,
                                fps=REFERENCE_FPS, output_type="np", **extra).frames
        for j, (first, last, prompt) in enumerate(zip(firsts, lasts, prompts)):
            scores = {setting: {"first": psnr(out[j][0], first), "last": psnr(out[j][-1], last)}
                      for setting, out in outs.items()}
            rows.append({"clip": start + j, "prompt": prompt, **scores})
    summary = {}
    for setting in ("first + last", "first only"):
        summary[setting] = {}
        for frame in ("first", "last"):
            values = [r[setting][frame] for r in rows]
            good = _rate(sum(v >= GOOD_PSNR_DB for v in values), len(values))
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

    Generation is what `pipe(prompt, interpolate=factor)` runs: text -> image -> video ("pt" frames), then the
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
                     output_type="pt")
        before = frames_to_output(video.frames, "np")  # (B, T, H, W, 3)
        gens = interpolation_generators(interp, seeds, video.frames.shape[2], factor)
        after = interp(video.frames, texts, factor=factor, num_inference_steps=steps, generator=gens, fps=video.fps,
                       output_type="np")
        for target, b, a in zip(chunk, before, after.frames):
            row = {"prompt": target["prompt"], "before": _verdict(b, video.fps, target),
                   "after": _verdict(a, after.fps, target)}
            row["unchanged"] = {f: row["before"][f] == row["after"][f] for f in VERDICT_FIELDS}
            row["unchanged"]["both"] = all(row["unchanged"].values())
            rows.append(row)
    n = len(rows)
    summary = {
        "factor": factor,
        "unchanged": {f: _rate(sum(r["unchanged"][f] for r in rows), n) for f in (*VERDICT_FIELDS, "both")},
        "all_correct": {when: _rate(sum(r[when]["all_correct"] for r in rows), n) for when in ("before", "after")},
    }
    return {"rows": rows, "summary": summary}


def verdict_table(summary: dict) -> str:
    f = summary["factor"]
    lines = [f"| under --interpolate {f} | prompts | rate (95% Wilson) |", "|---|---|---|"]
    for name, r in [*(("unchanged " + k, v) for k, v in summary["unchanged"].items()),
                    *((f"strict all-correct {k}", v) for k, v in summary["all_correct"].items())]:
        lines.append(f"| {name} | {r['n']} | {100 * r['rate']:.1f}% ({100 * r['low']:.0f}-{100 * r['high']:.0f}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- d. the strip
STRIP_LABELS = ("ground truth", "model", "linear blend", "minterpolate", "repetition")
SCALE, LABEL_HEIGHT, GAP = 2, 14, 2


def strip_panels(interp, spec: ShapeSpec, factor: int, num_keys: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """{label: (N, H, W, 3) uint8} for one clip: the truth and what each method makes of its key frames (`seed`: the
    clip's noise seed, so the model's panel is the in-between table's output for that clip)."""
    truth = render_dense(spec, num_keys, factor, interp.size)
    keys = truth[::factor]
    model = interpolate(interp, [keys], [caption_of(spec)], factor, steps, [seed])[0]
    made = (model, linear_blend(keys, factor), ffmpeg_minterpolate(keys, factor, REFERENCE_FPS),
            repeat_frames(keys, factor))
    return dict(zip(STRIP_LABELS, (truth, *made)))


def _labelled(image: np.ndarray, text: str, width: int | None = None) -> np.ndarray:
    """`image` (H, W, 3) under a black bar with `text` in white."""
    bar = PIL.Image.new("RGB", (width or image.shape[1], LABEL_HEIGHT))
    PIL.ImageDraw.Draw(bar).text((2, 1), text, fill=(255, 255, 255))
    bar = np.asarray(bar)
    if bar.shape[1] != image.shape[1]:
        image = np.pad(image, ((0, 0), (0, bar.shape[1] - image.shape[1]), (0, 0)))
    return np.concatenate([bar, image])


def _hstack(images: list[np.ndarray]) -> np.ndarray:
    gap = np.full((images[0].shape[0], GAP, 3), 80, np.uint8)
    return np.concatenate([x for im in images for x in (im, gap)][:-1], axis=1)


def strip_video(panels: dict[str, np.ndarray], factor: int) -> np.ndarray:
    """Side by side, each panel 2x (nearest) under its label, a frame counter (key frames marked) below."""
    n = len(next(iter(panels.values())))
    frames = []
    for i in range(n):
        row = _hstack([_labelled(v[i].repeat(SCALE, 0).repeat(SCALE, 1), k) for k, v in panels.items()])
        caption = f"frame {i}/{n - 1}" + ("  key" if i % factor == 0 else "")
        counter = _labelled(np.zeros((0, row.shape[1], 3), np.uint8), caption)
        frames.append(np.concatenate([row, counter]))
    return np.stack(frames)


def filmstrip(panels: dict[str, np.ndarray], factor: int, intervals: int = 2) -> np.ndarray:
    """A still: one row per method, columns the frames of the first `intervals` key intervals."""
    columns = range(min(intervals * factor + 1, len(next(iter(panels.values())))))
    rows = []
    for label, v in panels.items():
        cells = [_labelled(v[i].repeat(SCALE, 0).repeat(SCALE, 1), f"{i}" + (" key" if i % factor == 0 else ""))
                 for i in columns]
        name = _labelled(np.zeros((cells[0].shape[0] - LABEL_HEIGHT, 90, 3), np.uint8), label)
        rows.append(_hstack([name, *cells]))
    gap = np.full((GAP, rows[0].shape[1], 3), 80, np.uint8)
    return np.concatenate([x for r in rows for x in (r, gap)][:-1])


def write_strip(interp, path: str | Path, factor: int, num_keys: int, steps: int, seed: int, gif_fps: int) -> dict:
    """The GIF strip at `path` and its filmstrip beside it (same name, .png), for the first held-back clip that moves
    quickly (at 1 px per 8 fps frame the methods look alike)."""
    from emuvideo.utils.files import atomic_path
    from emuvideo.utils.video import write_video

    index = 0
    while (spec := held_back_spec(IN_BETWEEN_SEED, index, num_keys)).speed != "quickly":
        index += 1
    panels = strip_panels(interp, spec, factor, num_keys, steps, clip_seed(seed, index))
    gif = write_video(path, strip_video(panels, factor), gif_fps)
    png = gif.with_suffix(".png")
    with atomic_path(png) as tmp:
        PIL.Image.fromarray(filmstrip(panels, factor)).save(tmp, format="PNG")
    return {"gif": str(gif), "png": str(png), "clip": index, "prompt": caption_of(spec), "factor": factor,
            "gif_fps": gif_fps, "spec": dataclasses.asdict(spec)}


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder with an interpolation_unet (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps of every stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=64, help="held-back clips for the in-between table (0: skip)")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--keys", type=int, default=9, help="key frames (8 fps) per held-back clip")
    parser.add_argument("--keyframe-clips", type=int, default=64, help="clips for first/last-frame PSNR (0: skip)")
    parser.add_argument("--prompts-limit", type=int, help="only the first N of the 120 canonical prompts (0: skip)")
    parser.add_argument("--gif", default="docs/interpolation_strip.gif", help="the GIF strip (and a .png beside it)")
    parser.add_argument("--no-gif", action="store_true", help="write no strip")
    parser.add_argument("--gif-fps", type=int, default=8, help="the strip's playback rate (8: slowed by the factor)")
    parser.add_argument("--json", help="write every number and per-clip row here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "keys", "gif_fps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("clips", "keyframe_clips", "prompts_limit"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def run(args: argparse.Namespace, pipe) -> dict:
    """All four parts on `pipe` (an `EmuVideoPipeline` with an interpolation model); prints the tables."""
    start = time.perf_counter()
    progress = not args.quiet
    interp = pipe.interpolation  # fails now, naming what is missing, if the model has none
    bad = [f for f in args.factors if f not in interp.config.factors]
    if bad:
        raise ValueError(f"--factors {bad} not trained: the model interpolates x{interp.config.factors}")
    result = {"meta": {
        "command": shlex.join(["python", *sys.argv]), "model": args.model or "default", "steps": args.steps,
        "seed": args.seed, "batch_size": args.batch_size, "device": str(pipe.device), "torch": torch.__version__,
        "in_between_seeds": f"clip i: random.Random({IN_BETWEEN_SEED} + i)",
        "keyframe_seeds": f"clip i: random.Random({KEYFRAME_SEED} + i)",
    }}
    if args.clips:
        specs = held_back_specs(args.clips, IN_BETWEEN_SEED, args.keys)
        result["in_between"] = evaluate_in_between(interp, specs, args.factors, args.keys, args.steps, args.seed,
                                                   args.batch_size, progress=progress)
        result["in_between"]["keys"] = args.keys
        print(f"\nIn-between frames, {args.clips} held-back clips, {args.keys} key frames at 8 fps "
              f"(mean, 95% bootstrap interval over clips):\n" + in_between_table(result["in_between"]["summary"]))
    if args.keyframe_clips:
        specs = held_back_specs(args.keyframe_clips, KEYFRAME_SEED, KEYFRAME_FRAMES)
        result["keyframes"] = evaluate_keyframes(pipe, specs, args.steps, args.seed, args.batch_size, progress=progress)
        print(f"\nKeyframes, {args.keyframe_clips} clips of {KEYFRAME_FRAMES} frames: PSNR of the output's first and "
              f"last frames against the given images:\n" + keyframe_table(result["keyframes"]["summary"]))
    prompts = canonical_prompts()[: args.prompts_limit]
    if prompts:
        result["verdicts"] = evaluate_verdicts(pipe, prompts, args.steps, args.seed, args.batch_size, progress=progress)
        print(f"\nStrict judge on {len(prompts)} canonical prompts (seed {args.seed}), before and after x2:\n"
              + verdict_table(result["verdicts"]["summary"]))
    if not args.no_gif:
        factor = 4 if 4 in interp.config.factors else interp.config.factors[0]
        result["strip"] = write_strip(interp, args.gif, factor, args.keys, args.steps, args.seed, args.gif_fps)
        print(f"\nwrote {result['strip']['gif']} and {result['strip']['png']} ({result['strip']['prompt']}, x{factor})")
    result["meta"]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n{result['meta']['seconds']:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    from emuvideo.pipelines.loading import load_pipeline
    from emuvideo.utils.files import atomic_path

    args = parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        pipe = load_pipeline(args.model, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        result = run(args, pipe)
    except ValueError as err:  # bad input: one line, exit 2 (as the CLI)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
