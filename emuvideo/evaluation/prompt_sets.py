"""The prompt sets `emuvideo eval` judges a model on, each prompt with the attributes it asks for.

- "canonical": the 120 prompts of `data.shapes.canonical_prompts` (15 colour x shape pairs x 4 directions x 2
  speeds) in the canonical phrasing, which is one of the training templates;
- "paraphrase": `prompts/paraphrases.txt`, 60 prompts (each pair x each direction, half slow, half quick) in
  phrasings the training captions never produce (tests/test_eval.py enumerates every training caption to prove
  it). It is kept out of training and out of recipe decisions, so it measures how the model understands text
  it was not fitted to;
- "validation": the 120 prompts of `data.shapes.validation_prompts`, one per canonical prompt, in phrasings of a
  grammar held out of training (tests/test_eval.py proves no training caption equals one) that always name the
  speed. It is the set to tune recipe decisions on, so that "paraphrase" stays out of them;
- any other value: a text file, one prompt a line (blank lines and lines starting with "#" skipped), read with
  `data.shapes.parse_caption`.

A prompt is a dict `{"prompt", "colour", "shape", "direction", "speed", "held_out"}`: canonical values, speed
None when the prompt does not say, `held_out` True for the pairs left out of video training.
"""

from __future__ import annotations

from pathlib import Path

from ..data.shapes import VIDEO_HELD_OUT_PAIRS, canonical_prompts, parse_caption, validation_prompts

PARAPHRASE_FILE = Path(__file__).resolve().parent / "prompts" / "paraphrases.txt"
PROMPT_SETS = ("canonical", "paraphrase", "validation")
DEFAULT_PROMPT_SET = "canonical"


def read_prompt_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank, non-comment lines of a prompt or caption file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    lines = [(i, line.strip()) for i, line in enumerate(path.read_text().splitlines(), start=1)]
    return [(i, text) for i, text in lines if text and not text.startswith("#")]


def target_of(text: str, where: str = "") -> dict:
    """The prompt dict of one caption; ValueError (naming `where`, e.g. "file:3") when it cannot be read."""
    target = parse_caption(text)
    if target is None:
        place = f"{where}: " if where else ""
        raise ValueError(
            f"{place}cannot read one colour, shape and direction of the shapes world from {text!r}"
        )
    return {"prompt": text, **target, "held_out": (target["colour"], target["shape"]) in VIDEO_HELD_OUT_PAIRS}


def load_prompt_set(name_or_path: str | Path) -> list[dict]:
    """The prompts of "canonical", "paraphrase", "validation" or a prompt file (see module docstring)."""
    generated = {"canonical": canonical_prompts, "validation": validation_prompts}
    if name_or_path in generated:
        return [{**p, "held_out": (p["colour"], p["shape"]) in VIDEO_HELD_OUT_PAIRS} for p in generated[name_or_path]()]
    path = PARAPHRASE_FILE if name_or_path == "paraphrase" else Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"prompt set {str(name_or_path)!r} is neither one of {list(PROMPT_SETS)} nor a file")
    prompts = [target_of(text, f"{path}:{i}") for i, text in read_prompt_lines(path)]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompt")
    return prompts


__all__ = ["DEFAULT_PROMPT_SET", "PARAPHRASE_FILE", "PROMPT_SETS", "load_prompt_set", "read_prompt_lines", "target_of"]
