"""The synthetic "shapes world": one coloured shape moving on black, with captions.

The world is small enough to train on a CPU and exact enough to judge automatically
(`emuvideo.evaluation.judge`), so it stands in for the paper's 34M captioned clips:

- frames are `FRAME_SIZE` x `FRAME_SIZE` RGB on pure black with exactly one filled object;
- the object is a circle (diameter d), an axis-aligned square (side d) or an apex-up triangle
  (base d, height d), with d drawn uniformly from `SIZE_RANGE`;
- it moves at constant velocity left/right/up/down, "slowly" (1.0 px per frame) or "quickly"
  (2.5 px per frame) at `REFERENCE_FPS`; at another frame rate f the per-frame displacement is
  `speed * REFERENCE_FPS / f`, so a second of video always covers the same distance;
- it stays fully inside the frame for the whole clip.

Coordinates are continuous pixels of the 64 px world: pixel (row i, column j) covers
[j, j + 1) x [i, i + 1), x grows right and y grows down. A `ShapeSpec`'s (x, y) is the centre of
the object's d x d bounding box at frame 0 (for the triangle this is d/6 above its centroid).

The combination split follows the paper's setting (images plentiful, videos scarce): the
text-to-image data has all colour x shape pairs, the video data leaves `VIDEO_HELD_OUT_PAIRS` out,
so a model can only get "a blue triangle moving left" right by combining what it learned from
images with motion learned from other pairs.

Captions: `random_caption` phrases a clip for training in one of `CAPTION_STYLES` ("simple", the first model's six
templates; "rich", the many ways people write), `canonical_caption` is the one evaluation phrasing, and
`validation_caption` (`validation_prompts`) a grammar held out of training for tuning recipe decisions;
`parse_caption` reads any of them back.
"""

import dataclasses
import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..utils.files import atomic_path, check_writable_dir
from ..utils.video import write_video


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
# Diagonal motion is not in the world's training data: it is the new concept that fine-tuning experiments
# teach (scripts/qlora_claim.py). Clips and captions can be made with it; the data sets never draw it.
DIAGONALS = ("up-left", "up-right", "down-left", "down-right")
SPEEDS = {"slowly": 1.0, "quickly": 2.5}  # px per frame at REFERENCE_FPS
REFERENCE_FPS = 8
FRAME_SIZE = 64
SIZE_RANGE = (14, 20)

# The one place that defines the combination split; everything else derives from it.
VIDEO_HELD_OUT_PAIRS = frozenset({("blue", "triangle"), ("yellow", "square"), ("white", "circle")})
IMAGE_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
VIDEO_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in IMAGE_PAIRS if p not in VIDEO_HELD_OUT_PAIRS)

# Unit vectors in image coordinates (y grows downward, so "up" is negative y).
_DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_DIRECTION_VECTORS.update({  # unit vectors: a diagonal object moves `speed` px per frame along its path
    d: tuple(float(a + b) / np.sqrt(2.0) for a, b in zip(_DIRECTION_VECTORS[d.split("-")[0]],
                                                          _DIRECTION_VECTORS[d.split("-")[1]]))
    for d in DIAGONALS
})

# Anti-aliasing: each pixel row is cut into this many horizontal bands; within a band the object
# (convex) covers one x-interval whose overlap with each pixel is computed exactly, and a band only
# partly inside the object counts by the part inside. Positions are therefore honoured exactly
# along x and nearly so along y, and 1/3 px per frame (slowly at 24 fps) moves smoothly.
_BANDS_PER_PIXEL = 8


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines a clip of the shapes world.

    Args:
        colour: a key of `COLOURS`.
        shape: one of `SHAPES`.
        direction: one of `DIRECTIONS`.
        speed: a key of `SPEEDS` ("slowly" or "quickly").
        size: d in world pixels: circle diameter, square side, triangle base and height.
        x, y: centre of the object's d x d bounding box at frame 0, in world pixels.
    """

    colour: str
    shape: str
    direction: str
    speed: str
    size: float
    x: float
    y: float

    def __post_init__(self):
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("direction", self.direction, DIRECTIONS + DIAGONALS)
        _check_choice("speed", self.speed, SPEEDS)
        if self.size <= 0:
            raise ValueError(f"size must be > 0, got {self.size}")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def displacement_per_frame(speed: str, fps: float) -> float:
    """Pixels the object moves between consecutive frames of a clip sampled at `fps`."""
    _check_choice("speed", speed, SPEEDS)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return SPEEDS[speed] * REFERENCE_FPS / fps


def centre_trajectory(spec: ShapeSpec, num_frames: int, fps: float) -> np.ndarray:
    """Bounding-box centre of the object at every frame, shape (num_frames, 2) as (x, y)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    step = displacement_per_frame(spec.speed, fps)
    dx, dy = _DIRECTION_VECTORS[spec.direction]
    t = np.arange(num_frames, dtype=np.float64)
    return np.stack([spec.x + dx * step * t, spec.y + dy * step * t], axis=1)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

# Two grammars phrase a clip for training (`CAPTION_STYLES`, `random_caption`):
# - "simple": the first model's six templates and few synonyms, kept exactly as they were (same outputs for the same
#   random state), so runs made with it stay reproducible;
# - "rich": the many ways people write a caption: synonyms, verbs in several tenses and forms, several word orders,
#   optional words. A model trained on "simple" fails on phrasings it never saw; "rich" is the remedy.
# A third grammar, `validation_caption`, uses templates and words neither produces. It is held out of training and
# used only to tune recipe decisions, so the evaluation prompt sets stay out of those decisions too.
CAPTION_STYLES = ("simple", "rich")

# -- the simple grammar
_SHAPE_WORDS = {"circle": ("circle", "ball"), "square": ("square", "box"), "triangle": ("triangle",)}
_DIRECTION_PHRASES = {
    "left": ("left", "to the left"),
    "right": ("right", "to the right"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
    **{d: (d, f"{d.split('-')[0]} and to the {d.split('-')[1]}") for d in DIAGONALS},
}
_SPEED_ADVERBS = {"slowly": ("slowly",), "quickly": ("quickly", "fast")}
_SPEED_ADJECTIVES = {"slowly": ("slow",), "quickly": ("fast", "quick")}
_VERBS = ("moves", "slides", "drifts", "travels")
_VERBS_ING = ("moving", "sliding", "drifting", "travelling")

# -- the rich grammar: templates whose {slots} are filled left to right, one `rng.choice` per slot (`_fill`).
# Every option is a plain phrase, so the captions a spec can get are exactly the product of its slots' options.
# No filler word may be an attribute word of `_WORD_TO_VALUE` ("right now", "speeds up" would change the meaning).
_EDGES = {"left": "left", "right": "right", "up": "top", "down": "bottom"}  # "towards the top" is up
_RICH_NOUNS = {"circle": ("circle", "ball", "disc", "dot"), "square": ("square", "box", "block", "square shape"),
               "triangle": ("triangle", "triangle shape")}
# (present, -ing, past) of each motion verb; none of them implies a speed (no "races", "crawls").
_RICH_VERBS = (("moves", "moving", "moved"), ("slides", "sliding", "slid"), ("drifts", "drifting", "drifted"),
               ("travels", "travelling", "travelled"), ("heads", "heading", "headed"))
_RICH_ADVERBS = {"slowly": ("slowly", "at a slow pace", "at a slow speed"),
                 "quickly": ("quickly", "fast", "rapidly", "at a fast pace")}
_RICH_FRONTED_ADVERBS = {"slowly": ("slowly", "at a slow pace"), "quickly": ("quickly", "rapidly", "at a fast pace")}
_RICH_ADJECTIVES = {"slowly": ("slow", "slow-moving"), "quickly": ("fast", "quick", "fast-moving", "speedy")}
_RICH_SCENES = ("on black", "on a black background", "across the frame")
# Twelve templates. Every slot multiplies a template's captions, and tests/test_eval.py walks all of them for every
# spec, so the slots are crossed where it adds a new kind of phrasing, not everywhere.
_RICH_TEMPLATES = (
    # the speed said
    "{article} {colour} {noun} {past} {where} {adverb}",  # "the red ball slid to the left quickly"
    "{any_article} {colour} {noun} {ing} {where} {adverb}",  # the canonical form is one of these
    "{article} {colour} {noun} {ing} {adverb} {where}",  # "a red ball moving quickly to the left"
    "{fronted_adverb}, a {colour} {noun} {present} {where} {scene}",  # "slowly, a red box drifts upwards on black"
    "{fronted_where}, {article} {colour} {noun} {present} {adverb}",  # "towards the left, the red dot heads fast"
    "{article} {adjective} {colour} {noun} {ing} {where}",  # "a slow-moving red ball heading left"
    "there is {one} {colour} {noun} that {present} {where} {adverb}",  # a relative clause
    "there is {one} {colour} {noun} {ing} {where} {adverb}",
    # the speed left out (4 of 12, as 2 of 6 in the simple grammar): such a caption fits either speed
    "{article} {colour} {noun} {past} {where} {setting}",
    "{article} {colour} {noun} {present} {where} {setting}",
    "{any_article} {colour} {noun} {ing} {where} {setting}",
    "{article} {colour} {noun} is {ing} {where} {setting}",
)


def _rich_directions(direction: str) -> tuple[str, ...]:
    """Phrases of a direction: the bare word first, then phrases that can also open a sentence."""
    if direction in DIAGONALS:
        v, h = direction.split("-")
        return (direction, f"{v} and to the {h}", f"diagonally {v} and to the {h}", f"towards the {_EDGES[v]} {h}")
    if direction in ("left", "right"):
        return (direction, f"to the {direction}", f"{direction}ward", f"{direction}wards", f"towards the {direction}")
    return (direction, f"{direction}ward", f"{direction}wards", f"towards the {_EDGES[direction]}")


def _rich_slots(spec: ShapeSpec) -> dict[str, tuple[str, ...]]:
    return _rich_slots_of(spec.colour, spec.shape, spec.direction, spec.speed)


@functools.lru_cache(maxsize=None)  # a training step captions every clip of its batch
def _rich_slots_of(colour: str, shape: str, direction: str, speed: str) -> dict[str, tuple[str, ...]]:
    where = _rich_directions(direction)
    return {
        "colour": (colour,),
        "noun": _RICH_NOUNS[shape],
        "article": ("a", "the"),
        "any_article": ("a", "the", "one", ""),  # "" as in "red ball moving left", the way many captions start
        "one": ("a", "one"),
        "present": tuple(v[0] for v in _RICH_VERBS),
        "ing": tuple(v[1] for v in _RICH_VERBS),
        "past": tuple(v[2] for v in _RICH_VERBS),
        "where": where,
        "fronted_where": where[1:],  # "left, a red ball ..." would read as the verb "left"
        "adverb": _RICH_ADVERBS[speed],
        "fronted_adverb": _RICH_FRONTED_ADVERBS[speed],
        "adjective": _RICH_ADJECTIVES[speed],
        "scene": _RICH_SCENES,
        "setting": ("",) + _RICH_SCENES,  # optional
    }


# -- the validation grammar: each template has words no training caption uses ("a clip of", "watch ... as it",
# "makes its way", "keeps", "in motion"), and some slots have held-out words (disk, tile, shifts, toward, swiftly, ...).
# Every template names the speed, so a validation prompt asks for all four attributes.
_VALIDATION_NOUNS = {"circle": ("circle", "disk", "round shape"), "square": ("square", "box", "tile"),
                     "triangle": ("triangle", "triangular shape")}
_VALIDATION_VERBS = (("moves", "moving"), ("shifts", "shifting"), ("floats", "floating"), ("slides", "sliding"))
_VALIDATION_ADVERBS = {"slowly": ("slowly", "leisurely", "at a leisurely pace"),
                       "quickly": ("quickly", "swiftly", "speedily")}
_VALIDATION_ADJECTIVES = {"slowly": ("slow", "leisurely"), "quickly": ("fast", "swift")}
_VALIDATION_TEMPLATES = (
    "a clip of {article} {colour} {noun} {ing} {where} {adverb}",
    "watch {article} {colour} {noun} as it {present} {where} {adverb}",
    "{article} {colour} {noun} makes its way {where} {adverb}",
    "{article} {colour} {noun} keeps {ing} {where} {adverb}",
    "{article} {adjective} {colour} {noun} in motion, heading {where}",
)
_VALIDATION_SEED = 20240917  # fixed: the validation prompts never change


def _validation_directions(direction: str) -> tuple[str, ...]:
    if direction in DIAGONALS:
        v, h = direction.split("-")
        return (direction, f"{v} and {h}ward", f"toward the {_EDGES[v]} {h}")
    article = "an" if direction == "up" else "a"
    return (direction, f"toward the {_EDGES[direction]}", f"in {article} {direction}ward direction")


def _validation_slots(spec: ShapeSpec) -> dict[str, tuple[str, ...]]:
    return {
        "colour": (spec.colour,),
        "noun": _VALIDATION_NOUNS[spec.shape],
        "article": ("a", "the"),
        "present": tuple(v[0] for v in _VALIDATION_VERBS),
        "ing": tuple(v[1] for v in _VALIDATION_VERBS),
        "where": _validation_directions(spec.direction),
        "adverb": _VALIDATION_ADVERBS[spec.speed],
        "adjective": _VALIDATION_ADJECTIVES[spec.speed],
    }


_SLOT = re.compile(r"\{(\w+)\}")


def _fill(templates: Sequence[str], slots: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    """A random template with each slot filled by `rng.choice`, left to right (a one-option slot takes no draw);
    empty options leave no double space."""
    template = rng.choice(templates)
    text = _SLOT.sub(lambda m: slots[m[1]][0] if len(slots[m[1]]) == 1 else rng.choice(slots[m[1]]), template)
    return " ".join(text.split())


def _grammar_words(templates: Sequence[str], slot_tables: Sequence[dict[str, tuple[str, ...]]]) -> set[str]:
    """Every word a slot grammar can write: its templates' own words and every option of every slot."""
    text = " ".join([_SLOT.sub(" ", t) for t in templates]
                    + [o for slots in slot_tables for options in slots.values() for o in options])
    return set(re.findall(r"[a-z]+", text.lower()))


# parse_caption's vocabulary: every word that names an attribute, mapped to its canonical value.
_WORD_TO_VALUE = {
    "colour": {c: c for c in COLOURS},
    "shape": {"circle": "circle", "ball": "circle", "disc": "circle", "disk": "circle", "dot": "circle",
              "round": "circle",
              "square": "square", "box": "square", "block": "square", "tile": "square",
              "triangle": "triangle", "triangular": "triangle"},
    "direction": {"left": "left", "leftward": "left", "leftwards": "left",
                  "right": "right", "rightward": "right", "rightwards": "right",
                  "up": "up", "upward": "up", "upwards": "up", "top": "up",
                  "down": "down", "downward": "down", "downwards": "down", "bottom": "down"},
    "speed": {"slowly": "slowly", "slow": "slowly", "leisurely": "slowly",
              "quickly": "quickly", "quick": "quickly", "fast": "quickly", "rapidly": "quickly",
              "swiftly": "quickly", "swift": "quickly", "speedy": "quickly", "speedily": "quickly"},
}


def canonical_caption(colour: str, shape: str, direction: str, speed: str) -> str:
    """The canonical prompt, e.g. "a red circle moving left slowly"."""
    _check_choice("colour", colour, COLOURS)
    _check_choice("shape", shape, SHAPES)
    _check_choice("direction", direction, DIRECTIONS + DIAGONALS)
    _check_choice("speed", speed, SPEEDS)
    return f"a {colour} {shape} moving {direction} {speed}"


def random_caption(spec: ShapeSpec, rng: random.Random, style: str = "rich") -> str:
    """One of many phrasings of `spec` in `style` (`CAPTION_STYLES`; the canonical one among them in both).

    Some phrasings leave the speed out (a third of the templates): such a caption fits the clip at either speed,
    which is the point (captions of real videos rarely say everything). Only `rng.choice` is used.
    """
    _check_choice("style", style, CAPTION_STYLES)
    if style == "rich":
        return _fill(_RICH_TEMPLATES, _rich_slots(spec), rng)
    # The simple grammar, unchanged: the same choices in the same order as the first model's.
    c, d, sp = spec.colour, spec.direction, spec.speed
    noun = rng.choice(_SHAPE_WORDS[spec.shape])
    where = rng.choice(_DIRECTION_PHRASES[d])
    templates = (
        lambda: canonical_caption(c, spec.shape, d, sp),
        lambda: f"a {c} {noun} {rng.choice(_VERBS)} {where} {rng.choice(_SPEED_ADVERBS[sp])}",
        lambda: f"a {c} {noun} {rng.choice(_VERBS_ING)} {where} {rng.choice(_SPEED_ADVERBS[sp])}",
        lambda: f"a {rng.choice(_SPEED_ADJECTIVES[sp])} {c} {noun} {rng.choice(_VERBS_ING)} {where}",
        lambda: f"a {c} {noun} {rng.choice(_VERBS)} {where}",  # speed left out
        lambda: f"a {c} {noun} moving {where}",  # speed left out
    )
    return rng.choice(templates)()


def validation_caption(spec: ShapeSpec, rng: random.Random) -> str:
    """A phrasing of `spec` from the validation grammar, which no training caption (either style) can equal; it
    always names the speed. Only `rng.choice` is used."""
    return _fill(_VALIDATION_TEMPLATES, _validation_slots(spec), rng)


def caption_words() -> set[str]:
    """Every lowercase word (`[a-z]+`) any caption of the world can hold: `random_caption` in both styles,
    `validation_caption` and `canonical_caption`, for every spec, diagonals included (e.g. to check that a text
    encoder's vocabulary covers them)."""
    specs = [ShapeSpec(c, s, d, sp, float(SIZE_RANGE[0]), FRAME_SIZE / 2, FRAME_SIZE / 2)
             for c in COLOURS for s in SHAPES for d in DIRECTIONS + DIAGONALS for sp in SPEEDS]
    words = _grammar_words(_RICH_TEMPLATES, [_rich_slots(s) for s in specs])
    words |= _grammar_words(_VALIDATION_TEMPLATES, [_validation_slots(s) for s in specs])
    simple = ("a moving", *(w for table in (_SHAPE_WORDS, _DIRECTION_PHRASES, _SPEED_ADVERBS, _SPEED_ADJECTIVES)
                            for options in table.values() for w in options), *_VERBS, *_VERBS_ING)
    canonical = [canonical_caption(s.colour, s.shape, s.direction, s.speed) for s in specs]
    return words | set(re.findall(r"[a-z]+", " ".join([*simple, *canonical, *COLOURS]).lower()))


def parse_caption(text: str) -> Optional[dict]:
    """Recover the attributes named by a caption of the shapes world.

    Understands the canonical form and every word that names an attribute in `random_caption` (both styles)
    and `validation_caption` (ball, box, "to the left", "upwards", "towards the top", fast/slow, swiftly, ...).
    Case and punctuation are ignored.

    Returns:
        `{"colour", "shape", "direction", "speed"}` with canonical values ("up" with "left" is the diagonal
        "up-left", `DIAGONALS`), `speed` None when the
        caption does not say; or None when colour, shape or direction is missing, or when a caption
        names two different values of one attribute (e.g. "a red and blue circle").
    """
    words = re.findall(r"[a-z]+", text.lower())
    found = {}
    for attribute, vocabulary in _WORD_TO_VALUE.items():
        values = {vocabulary[w] for w in words if w in vocabulary}
        if attribute == "direction" and len(values) == 2:  # "up-left", "down and to the right": a diagonal
            vertical, horizontal = values & {"up", "down"}, values & {"left", "right"}
            if vertical and horizontal:
                values = {f"{vertical.pop()}-{horizontal.pop()}"}
        if len(values) > 1:
            return None
        found[attribute] = values.pop() if values else None
    if found["colour"] is None or found["shape"] is None or found["direction"] is None:
        return None
    return found


def canonical_prompts() -> list[dict]:
    """The 120 canonical prompts (15 pairs x 4 directions x 2 speeds) in a fixed order.

    Each entry is `{"colour", "shape", "direction", "speed", "prompt"}`. Pairs held out of the video
    data are included: they are what the evaluation is most interested in.
    """
    return [
        {"colour": c, "shape": s, "direction": d, "speed": sp, "prompt": canonical_caption(c, s, d, sp)}
        for c, s in IMAGE_PAIRS
        for d in DIRECTIONS
        for sp in SPEEDS
    ]


def validation_prompts() -> list[dict]:
    """The 120 validation prompts: one `validation_caption` for each of `canonical_prompts()`, in its order.

    Each entry is `{"colour", "shape", "direction", "speed", "prompt"}`; every prompt names its speed. Drawn with
    a fixed seed, so the set never changes. For tuning recipe decisions only: no training caption can equal one.
    """
    rng = random.Random(_VALIDATION_SEED)
    return [
        {**p, "prompt": validation_caption(
            ShapeSpec(p["colour"], p["shape"], p["direction"], p["speed"], float(SIZE_RANGE[0]), FRAME_SIZE / 2,
                      FRAME_SIZE / 2), rng)}
        for p in canonical_prompts()
    ]


# ----------------------------------------------------------------------------------------------
# Sampling and rendering
# ----------------------------------------------------------------------------------------------


def sample_spec(
    rng: random.Random,
    num_frames: int,
    fps: float,
    pairs: Sequence[tuple[str, str]] = IMAGE_PAIRS,
    colour: Optional[str] = None,
    shape: Optional[str] = None,
    direction: Optional[str] = None,
    speed: Optional[str] = None,
) -> ShapeSpec:
    """Draw a random spec whose object stays fully inside the frame for all `num_frames` frames.

    Attributes left as None are drawn uniformly; colour and shape are drawn from `pairs` (so a
    video dataset cannot produce a held-out pair by accident, even when one of them is fixed).
    Size is uniform over `SIZE_RANGE`, the position uniform over the feasible range.

    When a long fast clip would not fit an object of the largest size (e.g. 37 frames at 16 fps,
    quickly), the size is drawn from the part of `SIZE_RANGE` that fits; when even the smallest
    object cannot cross the frame in time a ValueError says so.
    """
    if colour is not None:
        _check_choice("colour", colour, COLOURS)
    if shape is not None:
        _check_choice("shape", shape, SHAPES)
    candidates = [p for p in pairs if colour in (None, p[0]) and shape in (None, p[1])]
    if not candidates:
        raise ValueError(f"no pair in `pairs` matches colour={colour!r}, shape={shape!r} (pairs={list(pairs)})")
    colour, shape = rng.choice(candidates)
    direction = rng.choice(DIRECTIONS) if direction is None else direction
    speed = rng.choice(list(SPEEDS)) if speed is None else speed
    _check_choice("direction", direction, DIRECTIONS + DIAGONALS)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")

    travel = displacement_per_frame(speed, fps) * (num_frames - 1)
    max_size = min(SIZE_RANGE[1], FRAME_SIZE - travel)
    if max_size < SIZE_RANGE[0]:
        raise ValueError(
            f"a {speed} object travels {travel:.1f} px over {num_frames} frames at {fps} fps and cannot stay "
            f"inside the {FRAME_SIZE} px frame (needs travel <= {FRAME_SIZE - SIZE_RANGE[0]} px); use fewer frames "
            f"or a higher fps"
        )
    size = rng.uniform(SIZE_RANGE[0], max_size)
    half = size / 2

    # Along the motion axis the start must leave room for the whole travel; across it, any
    # position that keeps the object inside.
    dx, dy = _DIRECTION_VECTORS[direction]
    x = _uniform_start(rng, half, travel * abs(dx), backwards=dx < 0)
    y = _uniform_start(rng, half, travel * abs(dy), backwards=dy < 0)
    return ShapeSpec(colour, shape, direction, speed, size, x, y)


def _uniform_start(rng: random.Random, half: float, travel: float, backwards: bool) -> float:
    low, high = half, FRAME_SIZE - half - travel  # range for a forward (increasing) motion
    if backwards:
        low, high = low + travel, high + travel
    return rng.uniform(low, high)


def render_clip(spec: ShapeSpec, num_frames: int, fps: float = REFERENCE_FPS, size: int = FRAME_SIZE) -> np.ndarray:
    """Render the clip described by `spec`.

    Each pixel is the object's colour times the fraction of the pixel the object covers, so fully
    covered pixels are exactly the colour, the background is exactly black, and edges are
    anti-aliased with sub-pixel accuracy.

    Args:
        spec: the clip.
        num_frames: T.
        fps: frame rate, which sets the per-frame displacement (`displacement_per_frame`).
        size: output side in pixels; the 64 px world is scaled to it, so other sizes show the same
            picture at another resolution.

    Returns:
        (T, size, size, 3) uint8 array.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    scale = size / FRAME_SIZE  # output pixels per world pixel
    half = spec.size / 2 * scale
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float64)
    clip = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for t, (cx, cy) in enumerate(centre_trajectory(spec, num_frames, fps) * scale):
        # Only the pixels under the bounding box can be covered.
        x0, x1 = max(0, int(np.floor(cx - half))), min(size, int(np.ceil(cx + half)))
        y0, y1 = max(0, int(np.floor(cy - half))), min(size, int(np.ceil(cy + half)))
        if x1 <= x0 or y1 <= y0:
            continue
        edges = np.arange(y0 * _BANDS_PER_PIXEL, y1 * _BANDS_PER_PIXEL + 1) / _BANDS_PER_PIXEL - cy  # band edges, relative
        top, bottom = np.maximum(edges[:-1], -half), np.minimum(edges[1:], half)  # part of each band inside
        inside = np.clip((bottom - top) * _BANDS_PER_PIXEL, 0.0, 1.0)  # (B,) fraction of the band
        v = (top + bottom) / 2  # (B,) middle of that part
        width = _half_width(spec.shape, v, half)  # (B,) object spans cx +- width in this band
        columns = np.arange(x0, x1, dtype=np.float64)
        overlap = np.minimum(cx + width[:, None], columns + 1) - np.maximum(cx - width[:, None], columns)  # (B, w)
        band_coverage = inside[:, None] * np.clip(overlap, 0.0, 1.0)
        coverage = band_coverage.reshape(y1 - y0, _BANDS_PER_PIXEL, x1 - x0).mean(axis=1)  # (h, w)
        clip[t, y0:y1, x0:x1] = np.rint(coverage[..., None] * colour)
    return clip


def _half_width(shape: str, v: np.ndarray, half: float) -> np.ndarray:
    """Half the object's width at height v (relative to its centre, y down); 0 outside it."""
    v = np.clip(v, -half, half)
    if shape == "circle":
        return np.sqrt(np.maximum(half * half - v * v, 0.0))
    if shape == "square":
        return np.full_like(v, half)
    return (v + half) / 2  # triangle: apex at v = -half, base (width 2 * half) at v = +half


class ShapesDataset(torch.utils.data.Dataset):
    """Clips (or, with `num_frames=1`, images) of the shapes world, generated on the fly.

    Item `i` depends only on `(seed, i)`, so a dataset is reproducible and workers need no shared
    state. `split="video"` draws colour x shape pairs from `VIDEO_PAIRS` (held-out pairs never
    appear), `split="image"` from all `IMAGE_PAIRS`.

    Args:
        split: "video" or "image".
        num_frames: T frames per item.
        fps: frame rate the clip is sampled at (sets the per-frame displacement).
        length: number of items.
        seed: dataset seed.
        resolution: output side; below 64 the 64 px render is area-downsampled (low-resolution
            training stages), above 64 the world is rendered directly at that size.
        canonical_only: caption every item with `canonical_caption` instead of a random phrasing.
        render_frames: render only the clip's first N frames (default: all `num_frames`). With 1, an
            item is the still that opens a `num_frames` clip: its position leaves room for the motion
            its caption names, which is what a text-to-image model must learn to draw a first frame.

    Items are dicts:
        "pixel_values": float32 tensor (3, T, resolution, resolution) in [-1, 1];
        "caption": str;
        "spec": `dataclasses.asdict` of the `ShapeSpec`.
    """

    def __init__(
        self,
        split: str,
        num_frames: int,
        fps: float,
        length: int,
        seed: int = 0,
        resolution: int = FRAME_SIZE,
        canonical_only: bool = False,
        render_frames: int | None = None,
    ):
        _check_choice("split", split, ("video", "image"))
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if render_frames is not None and not 1 <= render_frames <= num_frames:
            raise ValueError(f"render_frames must be in [1, num_frames={num_frames}], got {render_frames}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.split = split
        self.pairs = VIDEO_PAIRS if split == "video" else IMAGE_PAIRS
        self.num_frames = num_frames
        self.fps = fps
        self.length = length
        self.seed = seed
        self.resolution = resolution
        self.canonical_only = canonical_only
        self.render_frames = render_frames or num_frames
        # Fail now rather than in a worker process mid-epoch if a fast clip cannot fit the frame.
        sample_spec(random.Random(0), num_frames, fps, speed="quickly")

    def __len__(self) -> int:
        return self.length

    def cache_fields(self) -> dict:
        """Everything that determines this dataset's items, for `emuvideo.data.cache.LatentCache`."""
        return {
            # v3: image stills are the first frames of clips
            "dataset": "ShapesDataset-v3", "split": self.split, "num_frames": self.num_frames, "fps": self.fps,
            "length": self.length, "seed": self.seed, "resolution": self.resolution,
            "canonical_only": self.canonical_only, "render_frames": self.render_frames,
        }

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        # SeedSequence mixes (seed, index) so neighbouring seeds do not share items.
        rng = random.Random(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
        spec = sample_spec(rng, self.num_frames, self.fps, pairs=self.pairs)
        caption = canonical_caption(spec.colour, spec.shape, spec.direction, spec.speed)
        if not self.canonical_only:
            # The first model's grammar: items (and the captions a latent cache stores with them) stay as they were.
            # Training stages draw a fresh caption per step in the configured style (`data.captions`).
            caption = random_caption(spec, rng, style="simple")

        render_size = max(self.resolution, FRAME_SIZE)
        frames = torch.from_numpy(render_clip(spec, self.render_frames, self.fps, size=render_size))
        video = frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (T, H, W, 3) -> (3, T, H, W)
        if self.resolution < render_size:
            # Area averaging is the exact box-filter downsample, so low-res stages see no aliasing.
            video = F.interpolate(video, size=(self.resolution, self.resolution), mode="area")
        return {"pixel_values": video.contiguous(), "caption": caption, "spec": dataclasses.asdict(spec)}


def write_clip_folder(
    folder: str | Path,
    num_clips: int,
    seed: int = 0,
    num_frames: int = 16,
    size: int = FRAME_SIZE,
    fps: int = REFERENCE_FPS,
    pairs: Sequence[tuple[str, str]] = VIDEO_PAIRS,
    directions: Sequence[str] = DIRECTIONS,
    suffix: str = ".gif",
    progress: bool = True,
) -> list[Path]:
    """Render `num_clips` practice clips into `folder`, the layout `emuvideo finetune --data` reads.

    Clip i is `clipIIIII{suffix}` (GIF by default: lossless for these flat colours) beside `clipIIIII.txt`, its
    caption in the first model's phrasing (`random_caption(style="simple")`). Clip i's colour x shape pair is
    drawn from `pairs`, its direction from `directions`, its speed from `SPEEDS`, all from one
    `random.Random(seed)`, so a folder is reproducible from `seed`.

    `folder` must be empty or not exist yet (it is refused before anything is rendered); every file is
    written beside and renamed into place, so a stopped run leaves only whole clips, each with its caption.
    Returns the clip paths.
    """
    # 1. check inputs: before any clip is rendered
    folder = Path(folder)
    for name, value in (("num_clips", num_clips), ("num_frames", num_frames), ("size", size), ("fps", fps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"suffix must be '.gif' or '.mp4', got {suffix!r}")
    for direction in directions:
        _check_choice("direction", direction, DIRECTIONS + DIAGONALS)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"clip folder {str(folder)!r} is a file")
    if folder.is_dir() and any(folder.iterdir()):
        raise ValueError(f"clip folder {str(folder)!r} is not empty: choose a new folder")
    check_writable_dir(folder, "clip folder")
    sample_spec(random.Random(0), num_frames, fps, speed="quickly")  # a clip too long to fit fails now

    # 2. render and write, one clip at a time
    rng = random.Random(seed)
    paths = []
    for i in tqdm(range(num_clips), desc="rendering clips", unit="clip", disable=not progress):
        direction, speed = rng.choice(list(directions)), rng.choice(list(SPEEDS))  # drawn in this order
        spec = sample_spec(rng, num_frames, fps, pairs=pairs, direction=direction, speed=speed)
        path = folder / f"clip{i:05d}{suffix}"
        # the caption first: a clip is there for a reader once its video is, and then it has its caption
        with atomic_path(path.with_suffix(".txt")) as tmp:
            tmp.write_text(random_caption(spec, rng, style="simple") + "\n")
        paths.append(write_video(path, render_clip(spec, num_frames, fps, size=size), fps))
    return paths
