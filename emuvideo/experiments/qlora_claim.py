"""QLoRA's claim on video (Dettmers et al. 2023): does a 4-bit NF4 base + LoRA teach the video model a new
concept, diagonal motion, as well as LoRA and full fine-tuning? The methods, the data, the prompts and the
judging; `scripts/qlora_claim.py` runs them (its docstring tells the whole design).

- `full`: every weight of the temporal layers and conv_in, fp32, AdamW;
- `lora`: LoRA rank 16 on the temporal layers' attention, fp32 base, AdamW;
- `qlora`: the same LoRA on an NF4 (double-quantized) base, AdamW;
- `qlora_paged`: `qlora` with paged 8-bit AdamW.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from ..config import CONFIGS_DIR
from ..data.shapes import (
    DIAGONALS, SPEEDS, VIDEO_HELD_OUT_PAIRS, VIDEO_PAIRS, canonical_caption, render_clip, sample_spec,
    write_clip_folder,
)
from ..utils.files import atomic_dir

CONFIGS = CONFIGS_DIR / "experiments" / "qlora_claim"
METHODS = ("full", "lora", "qlora", "qlora_paged")
CONCEPT_PAIRS = (("red", "circle"), ("green", "square"), ("blue", "triangle"),
                 ("yellow", "circle"), ("white", "square"), ("red", "triangle"))  # one held-out video pair
NUM_FRAMES, FPS = 16, 8


def config_path(method: str) -> Path:
    """configs/experiments/qlora_claim/claim_METHOD.yaml (named apart from the packaged configs lora, qlora, full)."""
    return CONFIGS / f"claim_{method}.yaml"


def render_data(folder: str | Path, clips: int, seed: int) -> None:
    """`clips` diagonal clips of the video pairs as GIF + caption (random phrasings), written once.

    The folder is built beside (`atomic_dir`) and renamed into place with a DONE marker of its settings; a
    folder of other settings (this experiment's own data), or one left part-written by an older version, is
    replaced.
    """
    folder = Path(folder)
    done = folder / "DONE"
    if done.is_file() and done.read_text() == f"{clips} {seed}":
        return
    with atomic_dir(folder) as tmp:
        write_clip_folder(tmp, clips, seed, num_frames=NUM_FRAMES, fps=FPS, pairs=VIDEO_PAIRS, directions=DIAGONALS)
        (tmp / "DONE").write_text(f"{clips} {seed}")


def concept_prompts() -> list[dict]:
    """The new concept: 4 diagonals x 2 speeds x `CONCEPT_PAIRS`, in the canonical phrasing."""
    return [{"colour": c, "shape": s, "direction": d, "speed": sp, "prompt": canonical_caption(c, s, d, sp),
             "held_out": (c, s) in VIDEO_HELD_OUT_PAIRS}
            for c, s in CONCEPT_PAIRS for d in DIAGONALS for sp in SPEEDS]


def finetune_command(method: str, data: Path, run: Path, steps: int, batch_size: int, seed: int, lr: float,
                     model: str | None = None) -> list[str]:
    """The `emuvideo finetune` command line of `method`'s run (scripts/qlora_claim.py runs it in a child
    process, so that its wall time and peak resident set are its own). It resumes a run stopped part way."""
    data, run = Path(data).absolute(), Path(run).absolute()
    command = [sys.executable, "-m", "emuvideo.cli", "finetune", "--data", str(data),
               "--config", str(config_path(method)), "--output-dir", str(run), "--resume", "latest",
               "--max-steps", str(steps), "--set", f"batch_size={batch_size}",
               "--set", f"seed={seed}", "--set", f"optim.lr={lr}"]
    return command + (["--model", model] if model else [])


def load(method: str | None, run: Path | None, model: str | None = None):
    """The pipeline of `method`'s run (None: the base model): a full fine-tune's folder, or the base with the
    LoRA applied (at full precision, as a user loads it)."""
    from ..loaders import apply_loras
    from ..pipelines.loading import load_pipeline

    if method == "full":
        return load_pipeline(run / "final")
    pipe = load_pipeline(model)
    if method is not None:
        apply_loras(pipe, [(str(run / "final"), 1.0)])
    return pipe


def judge_concept(pipe, prompts: list[dict], seeds: int, sampling: dict, batch_size: int = 8) -> list[dict]:
    """Animate a rendered first frame of each prompt x seed; the strict verdicts, one row per video."""
    import torch
    from tqdm import tqdm

    from ..evaluation.evaluate import _row, prompt_seed
    from ..pipelines.common import numpy_to_uint8

    rows = []
    jobs = [(p, seed) for seed in range(seeds) for p in prompts]
    with tqdm(total=len(jobs), desc="new concept", unit="video") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            firsts = []
            for p, seed in chunk:
                rng = random.Random(prompt_seed(p["prompt"], seed))
                spec = sample_spec(rng, NUM_FRAMES, FPS, colour=p["colour"], shape=p["shape"],
                                   direction=p["direction"], speed=p["speed"])
                firsts.append(render_clip(spec, 1, FPS)[0])
            generators = [torch.Generator().manual_seed(prompt_seed(p["prompt"], seed)) for p, seed in chunk]
            out = pipe.image_to_video(firsts, [p["prompt"] for p, _ in chunk], generator=generators,
                                      output_type="np", **sampling)
            for (p, seed), frames in zip(chunk, numpy_to_uint8(out.frames)):  # "np" is float in [0, 1]
                rows.append(_row(p, seed, None, frames, out.fps))
            bar.update(len(chunk))
    return rows


def rate(rows: list[dict]) -> dict:
    """The strict all-correct rate with its Wilson interval, and four checks' rates (`EvalReport.rates`)."""
    from ..evaluation.evaluate import EvalReport

    r = EvalReport(rows).rates("strict", "all")
    return {"correct": r["all"]["k"], "videos": r["all"]["n"], "rate": r["all"]["rate"], "low": r["all"]["low"],
            "high": r["all"]["high"], **{f"{a}_rate": r[a]["rate"] for a in ("direction", "speed", "path", "visible")}}


def evaluate(method: str | None, run: Path | None, old_prompts: list[dict], seeds: int, model: str | None = None,
             video_steps: int | None = None, image_steps: int | None = None) -> dict:
    """Judge one model: the new concept (animated from rendered first frames) and the old prompts (forgetting)."""
    from ..evaluation.evaluate import evaluate_pipeline

    sampling = {} if video_steps is None else {"num_inference_steps": video_steps}
    pipe = load(method, run, model)
    start = time.perf_counter()
    concept = rate(judge_concept(pipe, concept_prompts(), seeds, sampling))
    report = evaluate_pipeline(pipe, old_prompts, seeds=seeds, num_inference_steps=video_steps,
                               image_num_inference_steps=image_steps)
    return {"new_concept": concept, "old_prompts": rate(report.rows),
            "eval_seconds": round(time.perf_counter() - start, 1)}


def table(result: dict) -> str:
    """One row per judged model: new concept and old prompts (strict, 95% interval), memory and time."""
    def cell(r):
        return f"{100 * r['rate']:.1f}% ({100 * r['low']:.0f}–{100 * r['high']:.0f})"

    lines = ["| method | new concept: diagonal, strict | direction | old prompts, strict | peak RSS MiB | train s |",
             "|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        if "new_concept" not in m:
            continue
        t = m.get("train", {})
        lines.append(f"| {name} | {cell(m['new_concept'])} | {100 * m['new_concept']['direction_rate']:.1f}% | "
                     f"{cell(m['old_prompts'])} | {t.get('peak_rss_mib', '—')} | {t.get('seconds', '—')} |")
    return "\n".join(lines)
