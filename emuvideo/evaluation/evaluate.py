"""`emuvideo eval`: judge a model, or a folder of clips, on a prompt set, strictly and leniently, with intervals.

Every prompt is generated `seeds` times, each prompt x seed from its own noise (`prompt_seed`: the seed mixed
with the prompt's text, so a prompt's video does not depend on its place in the set or its batch), and every
video gets two verdicts: the strict judge's (`strict_judge.py`, per attribute: colour, shape, direction, speed,
visible, single, size, path) and the lenient judge's (`judge.py`: colour, shape, direction, speed). Rates are
reported over all videos, the video-trained and the held-out colour x shape pairs, and slow vs quick prompts,
each with a Wilson 95% interval (`stats.py`). A prompt x seed is one trial; the seeds of one prompt are not
independent of each other, so read an interval as "over these prompts", not "over all prompts".

On a CPU the run is deterministic: the same model, prompts, seeds, steps and batch size give the same videos.
"""

from __future__ import annotations

import inspect
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils.video import VIDEO_SUFFIXES, read_frames
from .judge import judge_video, score
from .prompt_sets import read_prompt_lines, target_of
from .stats import rate_record
from .strict_judge import STRICT_ATTRIBUTES, explain_strict, judge_video_strict, score_strict

DEFAULT_SEEDS = 3
LENIENT_ATTRIBUTES = ("colour", "shape", "direction", "speed", "all")
VERDICTS = {"strict": STRICT_ATTRIBUTES, "lenient": LENIENT_ATTRIBUTES}
# Subsets a rate is reported for; a group with no video is left out of the summary.
GROUPS = {
    "all": lambda row: True,
    "video-trained pairs": lambda row: not row["held_out"],
    "held-out pairs": lambda row: row["held_out"],
    "slowly": lambda row: row["target"]["speed"] == "slowly",
    "quickly": lambda row: row["target"]["speed"] == "quickly",
    "speed not stated": lambda row: row["target"]["speed"] is None,
}


def prompt_seed(prompt: str, seed: int) -> int:
    """The noise seed of one prompt x seed: differs across prompts and seeds, independent of order and batch."""
    return int(np.random.SeedSequence([seed, zlib.crc32(prompt.encode("utf-8"))]).generate_state(1)[0])


def _number(x) -> float | None:
    """A float for JSON (which has no NaN or infinity): None when not finite."""
    x = float(x)
    return x if math.isfinite(x) else None


def judge_clip(frames: np.ndarray, fps: float, target: dict) -> dict:
    """Both verdicts on one (T, H, W, 3) uint8 clip, what they measured, and why the strict one said no."""
    strict = judge_video_strict(frames, fps)
    lenient = judge_video(frames, fps)
    return {
        "strict": score_strict(strict, target),
        "lenient": score(lenient, target),
        "judged": {
            "strict": {
                "colour": strict.colour, "shape": strict.shape, "direction": strict.direction, "speed": strict.speed,
                "object_frames": strict.num_object_frames, "frames": strict.num_frames,
                "crowded_frames": strict.num_crowded_frames,
                "colour_agreement": _number(strict.colour_agreement), "shape_agreement": _number(strict.shape_agreement),
                "size_ratio": _number(strict.size_ratio), "path_rms": _number(strict.path_rms),
                "angle_degrees": _number(strict.angle_degrees),
                "speed_at_8fps": _number(strict.speed_at_reference_fps),
                "half_speeds_at_8fps": [_number(s) for s in strict.half_speeds_at_reference_fps],
            },
            "lenient": {
                "colour": lenient.colour, "shape": lenient.shape, "direction": lenient.direction, "speed": lenient.speed,
                "speed_at_8fps": None if lenient.displacement_at_reference_fps is None
                else _number(lenient.displacement_at_reference_fps),
            },
        },
        "why": explain_strict(strict, target),
    }


def _row(target: dict, seed: int | None, video: str | None, frames: np.ndarray, fps: float) -> dict:
    return {
        "prompt": target["prompt"],
        "seed": seed,
        "video": video,
        "target": {k: target[k] for k in ("colour", "shape", "direction", "speed")},
        "held_out": target["held_out"],
        **judge_clip(frames, fps, target),
    }


@dataclass
class EvalReport:
    """Verdicts of one evaluation: `rows` (one per video), `meta` (what was run, how long it took)."""

    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def rates(self, verdict: str, group: str) -> dict[str, dict]:
        """{attribute: {"k", "n", "rate", "low", "high"}} for the rows of `group` under `verdict`."""
        rows = [r for r in self.rows if GROUPS[group](r)]
        return {a: rate_record(sum(bool(r[verdict][a]) for r in rows), len(rows)) for a in VERDICTS[verdict]}

    def groups(self) -> list[str]:
        return [g for g, member in GROUPS.items() if any(member(r) for r in self.rows)]

    def summary(self) -> dict:
        return {"n": len(self.rows), **{v: {g: self.rates(v, g) for g in self.groups()} for v in VERDICTS}}

    def table(self) -> str:
        """Markdown tables (strict, then lenient): rate in % and its 95% interval, per group and attribute."""
        blocks = []
        for verdict, attributes in VERDICTS.items():
            lines = [f"| {verdict} | n | " + " | ".join(attributes) + " |", "|---" * (len(attributes) + 2) + "|"]
            for group in self.groups():
                rates = self.rates(verdict, group)
                cells = [f"{100 * r['rate']:.1f}% ({100 * r['low']:.0f}-{100 * r['high']:.0f})" for r in rates.values()]
                lines.append(f"| {group} | {rates['all']['n']} | " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def to_json(self) -> dict:
        return {"meta": self.meta, "summary": self.summary(), "rows": self.rows}

    def write_json(self, path: str | Path) -> Path:
        from ..utils.files import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1))
        return Path(path)


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def generate_videos(pipe, jobs: list[tuple[dict, int]], batch_size: int = 8, progress: bool = True, **call_kwargs):
    """Yield (prompt dict, seed, frames (T, H, W, 3) uint8, fps) for each (prompt dict, seed) job, in order.

    Each video's noise comes from its own CPU generator seeded with `prompt_seed`, so it is the same on any
    device and in any batch.
    """
    from ..pipelines.common import numpy_to_uint8

    with tqdm(total=len(jobs), desc="eval", unit="video", disable=not progress) as bar, torch.no_grad():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            generators = [torch.Generator().manual_seed(prompt_seed(p["prompt"], seed)) for p, seed in chunk]
            # prompt= by name: an image-to-video pipeline with no image (direct text-to-video) is called the same way
            out = pipe(prompt=[p["prompt"] for p, _ in chunk], generator=generators, output_type="np", **call_kwargs)
            for (target, seed), frames in zip(chunk, numpy_to_uint8(out.frames)):  # the bytes a file would hold
                yield target, seed, frames, out.fps
            bar.update(len(chunk))


def evaluate_pipeline(
    pipe,
    prompts: list[dict],
    seeds: int = DEFAULT_SEEDS,
    batch_size: int = 8,
    num_inference_steps: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
    image_num_inference_steps: int | None = None,
) -> EvalReport:
    """Generate every prompt with seeds 0 .. `seeds` - 1 and judge each video.

    Args:
        pipe: an `EmuVideoPipeline` (text -> image -> video).
        prompts: from `prompt_sets.load_prompt_set`.
        seeds: noise draws per prompt.
        batch_size: videos per pipeline call.
        num_inference_steps: sampler steps of the video stage, and of the image stage unless
            `image_num_inference_steps` is given (default: the pipeline's).
        image_num_inference_steps: sampler steps of the image stage.
        meta: recorded in the report as is (model, prompt set, ...), beside the settings of this call.
    """
    _check_count("seeds", seeds)
    _check_count("batch_size", batch_size)
    for name, value in (("num_inference_steps", num_inference_steps), ("image_num_inference_steps", image_num_inference_steps)):
        if value is not None:
            _check_count(name, value)
    if not prompts:
        raise ValueError("no prompt to evaluate")
    sampling = {k: v for k, v in (("num_inference_steps", num_inference_steps),
                                  ("image_num_inference_steps", image_num_inference_steps)) if v is not None}
    jobs = [(p, seed) for seed in range(seeds) for p in prompts]
    start = time.perf_counter()
    report = EvalReport()
    for target, seed, frames, fps in generate_videos(pipe, jobs, batch_size, progress, **sampling):
        report.rows.append(_row(target, seed, None, frames, fps))
    report.meta = {
        **(meta or {}),
        "prompts": len(prompts), "seeds": seeds, "videos": len(jobs), "batch_size": batch_size,
        "num_inference_steps": num_inference_steps or inspect.signature(pipe.__call__).parameters["num_inference_steps"].default,
        "image_num_inference_steps": image_num_inference_steps,
        "schedulers": {name: type(getattr(pipe, name)).__name__ for name in ("image_scheduler", "scheduler")
                       if hasattr(pipe, name)},
        "device": str(pipe.device),
        "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 1),
    }
    return report


def evaluate_videos(videos: str | Path, captions: str | Path, progress: bool = True) -> EvalReport:
    """Judge existing clips: the .mp4/.gif files of folder `videos` in name order, the i-th against the i-th
    caption of `captions` (one a line, as `emuvideo generate --prompt-file FILE --output-dir DIR` pairs them)."""
    folder = Path(videos)
    if not folder.is_dir():
        raise ValueError(f"--videos {str(folder)!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--videos {str(folder)!r} holds no {' or '.join(VIDEO_SUFFIXES)} file")
    if not Path(captions).is_file():
        raise ValueError(f"--captions {str(captions)!r} does not exist")
    lines = read_prompt_lines(captions)
    if len(lines) != len(files):
        raise ValueError(
            f"{len(lines)} captions in {str(captions)!r} for {len(files)} videos in {str(folder)!r} "
            f"(one caption a line, for the videos in name order)"
        )
    targets = [target_of(text, f"{captions}:{i}") for i, text in lines]  # all checked before any video is read
    start = time.perf_counter()
    report = EvalReport()
    for path, target in tqdm(list(zip(files, targets)), desc="eval", unit="video", disable=not progress):
        frames, fps = read_frames(path)
        if fps <= 0:
            raise ValueError(f"{str(path)!r} does not say its frame rate")
        report.rows.append(_row(target, None, str(path), frames, fps))
    report.meta = {"videos_dir": str(folder), "captions": str(captions), "videos": len(files),
                   "seconds": round(time.perf_counter() - start, 1)}
    return report


__all__ = [
    "DEFAULT_SEEDS", "EvalReport", "GROUPS", "LENIENT_ATTRIBUTES", "evaluate_pipeline", "evaluate_videos",
    "generate_videos", "judge_clip", "prompt_seed",
]
