import hashlib
import itertools
import math
import random
import re

import numpy as np
import pytest
import torch

from emuvideo.data.shapes import (
    CAPTION_STYLES,
    COLOURS,
    DIAGONALS,
    DIRECTIONS,
    FRAME_SIZE,
    IMAGE_PAIRS,
    REFERENCE_FPS,
    SHAPES,
    SIZE_RANGE,
    SPEEDS,
    VIDEO_HELD_OUT_PAIRS,
    VIDEO_PAIRS,
    ShapesDataset,
    ShapeSpec,
    canonical_caption,
    caption_words,
    canonical_prompts,
    centre_trajectory,
    parse_caption,
    random_caption,
    render_clip,
    sample_spec,
    validation_caption,
    validation_prompts,
)

# Area of each shape as a fraction of size**2.
AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


def coverage(frames: np.ndarray, colour: str) -> np.ndarray:
    """Per-pixel fraction covered by the object, read back from a render: (T, H, W, 3) -> (T, H, W)."""
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    channel = int(rgb.argmax())
    return frames[..., channel].astype(np.float64) / rgb[channel]


def centroids(frames: np.ndarray, colour: str) -> np.ndarray:
    """Coverage-weighted centroid (x, y) of every frame, shape (T, 2)."""
    cov = coverage(frames, colour)
    ys, xs = np.indices(cov.shape[1:]) + 0.5
    total = cov.sum(axis=(1, 2))
    return np.stack([(cov * xs).sum(axis=(1, 2)) / total, (cov * ys).sum(axis=(1, 2)) / total], axis=1)


def test_combination_split():
    assert len(IMAGE_PAIRS) == len(set(IMAGE_PAIRS)) == len(COLOURS) * len(SHAPES) == 15
    assert len(VIDEO_PAIRS) == 12
    assert VIDEO_HELD_OUT_PAIRS == {("blue", "triangle"), ("yellow", "square"), ("white", "circle")}
    assert VIDEO_HELD_OUT_PAIRS <= set(IMAGE_PAIRS)
    assert not VIDEO_HELD_OUT_PAIRS & set(VIDEO_PAIRS)
    assert set(VIDEO_PAIRS) | VIDEO_HELD_OUT_PAIRS == set(IMAGE_PAIRS)


@pytest.mark.parametrize("pair", IMAGE_PAIRS)
def test_background_black_and_interior_exact_colour(pair):
    colour, shape = pair
    spec = sample_spec(random.Random(str(pair)), 8, 8, colour=colour, shape=shape)
    frames = render_clip(spec, 8, 8)
    rgb = np.asarray(COLOURS[colour])
    assert frames.shape == (8, FRAME_SIZE, FRAME_SIZE, 3) and frames.dtype == np.uint8

    exact = (frames == rgb).all(axis=-1)
    black = (frames == 0).all(axis=-1)
    # A large interior of exactly the colour in every frame (the smallest triangle has ~98 px).
    assert exact.sum(axis=(1, 2)).min() >= 60
    # Every other pixel is black or an anti-aliased edge: the colour scaled by the covered fraction.
    edge = ~exact & ~black
    cov = coverage(frames, colour)[edge]
    assert np.abs(frames[edge] - np.rint(cov[:, None] * rgb)).max() <= 1
    # Edges are a thin outline, not a halo: far fewer edge pixels than the perimeter allows.
    assert edge.sum(axis=(1, 2)).max() <= 4 * spec.size + 8


def test_object_size_in_range_and_measured_area_matches():
    rng = random.Random(0)
    sizes = []
    for _ in range(150):
        spec = sample_spec(rng, 1, REFERENCE_FPS)
        sizes.append(spec.size)
        area = coverage(render_clip(spec, 1), spec.colour).sum()
        measured_size = math.sqrt(area / AREA_FACTOR[spec.shape])
        assert measured_size == pytest.approx(spec.size, rel=0.005)
        assert SIZE_RANGE[0] - 0.1 <= measured_size <= SIZE_RANGE[1] + 0.1
    # Uniform over the whole range, not a constant.
    assert SIZE_RANGE[0] <= min(sizes) < SIZE_RANGE[0] + 1 and SIZE_RANGE[1] - 1 < max(sizes) <= SIZE_RANGE[1]


@pytest.mark.parametrize("num_frames, fps", [(16, 8), (8, 4), (37, 16), (24, 24)])
def test_object_fully_inside_for_the_whole_clip(num_frames, fps):
    rng = random.Random(num_frames * 100 + fps)
    for _ in range(40):
        spec = sample_spec(rng, num_frames, fps)
        half = spec.size / 2
        centres = centre_trajectory(spec, num_frames, fps)
        assert (centres - half >= 0).all() and (centres + half <= FRAME_SIZE).all()
        # The render agrees: the covered area never shrinks (nothing is cut off by the border).
        areas = coverage(render_clip(spec, num_frames, fps), spec.colour).sum(axis=(1, 2))
        assert areas.min() == pytest.approx(AREA_FACTOR[spec.shape] * spec.size**2, rel=0.005)


def test_start_position_spans_the_feasible_range():
    # Moving right quickly for 16 frames at 8 fps travels 37.5 px: the left edge starts anywhere
    # from the border to 64 - 37.5 - size, so both extremes are reached across samples.
    rng = random.Random(1)
    specs = [sample_spec(rng, 16, 8, direction="right", speed="quickly") for _ in range(400)]
    left_gaps = [s.x - s.size / 2 for s in specs]
    right_gaps_at_end = [FRAME_SIZE - (s.x + s.size / 2 + 37.5) for s in specs]
    top_gaps = [s.y - s.size / 2 for s in specs]
    assert min(left_gaps) < 0.5 and min(right_gaps_at_end) < 0.5
    assert min(top_gaps) < 1.0 and max(top_gaps) > FRAME_SIZE - SIZE_RANGE[1] - 8


@pytest.mark.parametrize("fps", [4, 8, 16, 24])
@pytest.mark.parametrize("speed", list(SPEEDS))
def test_displacement_per_frame_is_speed_times_reference_fps_over_fps(fps, speed):
    num_frames = 8
    expected = SPEEDS[speed] * REFERENCE_FPS / fps
    unit = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    rng = random.Random(fps)
    for direction in DIRECTIONS:
        spec = sample_spec(rng, num_frames, fps, direction=direction, speed=speed)
        steps = np.diff(centroids(render_clip(spec, num_frames, fps), spec.colour), axis=0)  # (T-1, 2)
        np.testing.assert_allclose(steps, np.broadcast_to(np.multiply(unit[direction], expected), steps.shape), atol=0.03)


def test_sub_pixel_motion_is_smooth():
    # 1 px/frame at 24 fps is 1/3 px per frame: every frame must differ and move by the same step.
    spec = ShapeSpec("red", "circle", "right", "slowly", 16.0, 20.0, 32.0)
    frames = render_clip(spec, 12, fps=24)
    assert all((frames[t] != frames[t + 1]).any() for t in range(11))
    np.testing.assert_allclose(np.diff(centroids(frames, "red")[:, 0]), 1 / 3, atol=0.03)


def test_render_at_other_sizes_shows_the_same_picture():
    spec = sample_spec(random.Random(3), 4, 8)
    small = render_clip(spec, 4, 8, size=32).astype(np.float64)
    big = render_clip(spec, 4, 8, size=FRAME_SIZE).astype(np.float64)
    pooled = big.reshape(4, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(small - pooled).max() <= 2.0  # uint8 rounding in both renders
    assert render_clip(spec, 4, 8, size=128).shape == (4, 128, 128, 3)


def test_sample_spec_respects_pairs_and_fixed_attributes():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="no pair"):
        sample_spec(rng, 8, 8, pairs=VIDEO_PAIRS, colour="blue", shape="triangle")
    for _ in range(100):
        spec = sample_spec(rng, 8, 8, pairs=VIDEO_PAIRS, colour="blue", direction="up", speed="slowly")
        assert spec.colour == "blue" and spec.shape != "triangle"
        assert spec.direction == "up" and spec.speed == "slowly"
    with pytest.raises(ValueError, match="colour"):
        sample_spec(rng, 8, 8, colour="purple")


def test_too_long_fast_clip_is_refused_and_long_clips_shrink_the_object():
    with pytest.raises(ValueError, match="cannot stay inside"):
        sample_spec(random.Random(0), 16, 4, speed="quickly")  # 75 px of travel
    with pytest.raises(ValueError, match="cannot stay inside"):
        ShapesDataset("video", num_frames=16, fps=4, length=10)
    # 37 frames at 16 fps travel 45 px: only objects up to 19 px fit.
    sizes = [sample_spec(random.Random(i), 37, 16, speed="quickly").size for i in range(50)]
    assert max(sizes) <= 19.0 and min(sizes) >= SIZE_RANGE[0]


def test_canonical_prompts():
    prompts = canonical_prompts()
    assert len(prompts) == 120 == len({p["prompt"] for p in prompts})
    assert prompts[0]["prompt"] == "a red circle moving left slowly"
    assert prompts == canonical_prompts()  # fixed order
    assert {(p["colour"], p["shape"]) for p in prompts} == set(IMAGE_PAIRS)
    for p in prompts:
        assert p["prompt"] == canonical_caption(p["colour"], p["shape"], p["direction"], p["speed"])
        assert parse_caption(p["prompt"]) == {k: p[k] for k in ("colour", "shape", "direction", "speed")}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red ball moving to the left slowly", ("red", "circle", "left", "slowly")),
        ("A green box slides to the right fast.", ("green", "square", "right", "quickly")),
        ("a slow blue triangle drifting upwards", ("blue", "triangle", "up", "slowly")),
        ("a fast white ball travelling downwards", ("white", "circle", "down", "quickly")),
        ("a yellow square travels up quickly", ("yellow", "square", "up", "quickly")),
        ("a white triangle moves down", ("white", "triangle", "down", None)),
        ("a blue circle moving to the right", ("blue", "circle", "right", None)),
        ("a red circle moving up-left slowly", ("red", "circle", "up-left", "slowly")),
        ("a green box drifting down and to the right fast", ("green", "square", "down-right", "quickly")),
    ],
)
def test_parse_caption_synonyms(text, expected):
    assert parse_caption(text) == dict(zip(("colour", "shape", "direction", "speed"), expected))


@pytest.mark.parametrize(
    "text",
    ["", "a red circle", "a circle moving left", "a red thing moving left", "a red and blue circle moving left",
     "a red circle moving left and right", "a red circle moving left slowly then fast"],
)
def test_parse_caption_rejects_incomplete_or_ambiguous(text):
    assert parse_caption(text) is None


@pytest.mark.parametrize("style", CAPTION_STYLES)
def test_random_captions_round_trip_and_vary(style):
    rng = random.Random(0)
    seen_words, omitted_speed = set(), 0
    for _ in range(600):
        spec = sample_spec(rng, 8, 8)
        caption = random_caption(spec, rng, style=style)
        parsed = parse_caption(caption)
        assert parsed is not None, caption
        assert (parsed["colour"], parsed["shape"], parsed["direction"]) == (spec.colour, spec.shape, spec.direction)
        assert parsed["speed"] in (None, spec.speed), caption
        omitted_speed += parsed["speed"] is None
        seen_words.update(caption.split())
    assert {"ball", "box", "slides", "drifts", "travels", "moving", "upwards", "downwards", "fast", "slow"} <= seen_words
    assert 50 < omitted_speed < 400


def test_simple_captions_are_the_first_models():
    """Pinned from the grammar before the rich style existed: same outputs, same draws from the random state."""
    rng = random.Random(2024)
    specs = [ShapeSpec(c, s, d, sp, 16.0, 32.0, 32.0) for c, s in (("red", "circle"), ("green", "square"),
             ("blue", "triangle")) for d in ("left", "up-right") for sp in SPEEDS]
    assert [random_caption(spec, rng, style="simple") for spec in specs] == [
        "a red ball moving left", "a red ball moving left", "a red ball slides up and to the right",
        "a fast red ball drifting up and to the right", "a green box moving left", "a green square moving to the left",
        "a slow green square drifting up-right", "a green square moving up-right quickly",
        "a slow blue triangle drifting to the left", "a quick blue triangle drifting to the left",
        "a blue triangle slides up and to the right slowly", "a blue triangle drifting up-right fast",
    ]
    assert rng.random() == 0.6136863538029395
    rng = random.Random(99)
    captions = [random_caption(ShapeSpec(c, s, d, sp, 16.0, 32.0, 32.0), rng, style="simple")
                for _ in range(3) for c, s in IMAGE_PAIRS for d in DIRECTIONS + DIAGONALS for sp in SPEEDS]
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()
    assert digest == "301e1bcdf2c2a7d4add9514a7fbeeabf48449484e24a5deee2115e182d377fb5"
    assert rng.random() == 0.514054011040327
    # the dataset's items keep the first model's captions
    rng = random.Random(int(np.random.SeedSequence([3, 5]).generate_state(1)[0]))
    spec = sample_spec(rng, 8, 8, pairs=VIDEO_PAIRS)
    assert ShapesDataset("video", 8, 8, 20, seed=3)[5]["caption"] == random_caption(spec, rng, style="simple")


def test_unknown_caption_style_is_refused():
    spec = ShapeSpec("red", "circle", "left", "slowly", 16.0, 32.0, 32.0)
    with pytest.raises(ValueError, match="'fancy'"):
        random_caption(spec, random.Random(0), style="fancy")


def _all_captions(caption, spec: ShapeSpec) -> set[str]:
    """Every caption `caption(spec, rng)` can give, by walking its `rng.choice` calls (as tests/test_eval.py)."""
    from test_eval import every_caption

    return every_caption(caption, spec)


@pytest.mark.parametrize("spec", [
    ShapeSpec("red", "circle", "left", "quickly", 16.0, 32.0, 32.0),
    ShapeSpec("yellow", "square", "down", "slowly", 16.0, 32.0, 32.0),
    ShapeSpec("blue", "triangle", "up-right", "slowly", 16.0, 32.0, 32.0),
    ShapeSpec("white", "square", "down-left", "quickly", 16.0, 32.0, 32.0),
])
def test_every_rich_and_validation_caption_round_trips(spec):
    attributes = (spec.colour, spec.shape, spec.direction)
    words = caption_words()
    for name, caption in (("rich", random_caption), ("validation", validation_caption)):
        for text in _all_captions(caption, spec):
            parsed = parse_caption(text)
            assert parsed is not None and (parsed["colour"], parsed["shape"], parsed["direction"]) == attributes, text
            assert parsed["speed"] == spec.speed or (parsed["speed"] is None and name == "rich"), text
            assert set(re.findall(r"[a-z]+", text)) <= words, text
            assert text == " ".join(text.split()) and text == text.lower(), text


def test_captions_of_every_spec_round_trip():
    """Sampled over every colour, shape, direction (diagonals included) and speed, in every grammar."""
    rng = random.Random(5)
    words, omitted = caption_words(), {style: 0 for style in CAPTION_STYLES}
    for colour, shape, direction, speed in itertools.product(COLOURS, SHAPES, DIRECTIONS + DIAGONALS, SPEEDS):
        spec = ShapeSpec(colour, shape, direction, speed, 16.0, 32.0, 32.0)
        captions = [(style, random_caption(spec, rng, style=style)) for style in CAPTION_STYLES for _ in range(10)]
        captions += [("validation", validation_caption(spec, rng)) for _ in range(10)]
        captions.append(("canonical", canonical_caption(colour, shape, direction, speed)))
        for style, text in captions:
            parsed = parse_caption(text)
            assert parsed is not None and (parsed["colour"], parsed["shape"], parsed["direction"]) == (colour, shape, direction), text
            assert parsed["speed"] in (speed, None if style in CAPTION_STYLES else speed), text
            omitted[style] = omitted.get(style, 0) + (parsed["speed"] is None)
            assert set(re.findall(r"[a-z]+", text.lower())) <= words, text
    # About a third of the training captions leave the speed out, in both styles (2 of 6 and 4 of 12 templates).
    assert 0.25 < omitted["rich"] / 2400 < 0.42 and 0.25 < omitted["simple"] / 2400 < 0.42
    assert omitted["validation"] == omitted["canonical"] == 0


def test_rich_captions_are_richer():
    spec = ShapeSpec("green", "triangle", "right", "slowly", 16.0, 32.0, 32.0)
    rng = random.Random(0)
    simple = {random_caption(spec, rng, style="simple") for _ in range(2000)}
    rich = {random_caption(spec, rng, style="rich") for _ in range(2000)}
    assert len(simple) < 50 and len(rich) > 1000
    rich_words = {w for c in rich for w in re.findall(r"[a-z]+", c)}
    simple_words = {w for c in simple for w in re.findall(r"[a-z]+", c)}
    assert len(rich_words) > 2 * len(simple_words)
    # several word orders: adverb first, direction first, "there is", relative clauses, past tense
    assert any(c.startswith(("slowly,", "at a slow pace,")) for c in rich)
    assert any(c.startswith(("to the right,", "towards the right,", "rightward,", "rightwards,")) for c in rich)
    assert any(c.startswith("there is") for c in rich) and any(" that " in c for c in rich)
    assert any(" slid " in c for c in rich) and any(c.startswith("green ") for c in rich)  # no article


def test_validation_prompts():
    prompts = validation_prompts()
    assert prompts == validation_prompts()  # a fixed seed
    assert len(prompts) == 120 == len({p["prompt"] for p in prompts})
    keys = ("colour", "shape", "direction", "speed")
    assert [{k: p[k] for k in keys} for p in prompts] == [{k: p[k] for k in keys} for p in canonical_prompts()]
    assert all(list(p) == [*keys, "prompt"] for p in prompts)
    for p in prompts:
        assert parse_caption(p["prompt"]) == {k: p[k] for k in keys}, p  # the speed named too


def test_caption_words():
    words = caption_words()
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)
    assert {"a", "moving", "ball", "upwards", "towards", "slid", "there", "leftwards", "diagonally"} <= words
    assert set(COLOURS) | set(SHAPES) | set(SPEEDS) | {"up", "down", "left", "right"} <= words
    assert "paraphrase" not in words and "purple" not in words


def test_dataset_is_deterministic_per_index():
    a = ShapesDataset("video", num_frames=8, fps=8, length=20, seed=3)
    b = ShapesDataset("video", num_frames=8, fps=8, length=20, seed=3)
    c = ShapesDataset("video", num_frames=8, fps=8, length=20, seed=4)
    _ = a[7]  # access order must not matter
    for i in (5, 0, 19):
        x, y = a[i], b[i]
        assert torch.equal(x["pixel_values"], y["pixel_values"])
        assert x["caption"] == y["caption"] and x["spec"] == y["spec"]
    assert a[5]["spec"] != a[6]["spec"]
    assert a[5]["spec"] != c[5]["spec"]
    with pytest.raises(IndexError):
        a[20]


def test_dataset_splits():
    video = ShapesDataset("video", num_frames=2, fps=8, length=400, seed=0)
    image = ShapesDataset("image", num_frames=1, fps=8, length=400, seed=0)
    video_pairs = {(video[i]["spec"]["colour"], video[i]["spec"]["shape"]) for i in range(len(video))}
    image_pairs = {(image[i]["spec"]["colour"], image[i]["spec"]["shape"]) for i in range(len(image))}
    assert video_pairs == set(VIDEO_PAIRS)
    assert image_pairs == set(IMAGE_PAIRS)
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("audio", num_frames=2, fps=8, length=4)


def test_dataset_item_format_and_low_resolution():
    full = ShapesDataset("video", num_frames=4, fps=8, length=3, seed=1)
    low = ShapesDataset("video", num_frames=4, fps=8, length=3, seed=1, resolution=32)
    canonical = ShapesDataset("video", num_frames=4, fps=8, length=3, seed=1, canonical_only=True)
    item = full[2]
    video = item["pixel_values"]
    assert video.shape == (3, 4, 64, 64) and video.dtype == torch.float32
    assert video.min() == -1.0 and video.max() <= 1.0  # black background maps to exactly -1
    spec = ShapeSpec(**item["spec"])
    expected = torch.from_numpy(render_clip(spec, 4, 8)).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.equal(video, expected)
    parsed = parse_caption(item["caption"])
    assert (parsed["colour"], parsed["shape"], parsed["direction"]) == (spec.colour, spec.shape, spec.direction)
    assert canonical[2]["caption"] == canonical_caption(spec.colour, spec.shape, spec.direction, spec.speed)

    small = low[2]["pixel_values"]
    assert small.shape == (3, 4, 32, 32)
    # Area downsampling: each low-res pixel is the mean of its 2x2 block.
    pooled = video.reshape(3, 4, 32, 2, 32, 2).mean(dim=(3, 5))
    torch.testing.assert_close(small, pooled)

    batch = next(iter(torch.utils.data.DataLoader(full, batch_size=3)))
    assert batch["pixel_values"].shape == (3, 3, 4, 64, 64) and len(batch["caption"]) == 3


def test_spec_validation():
    with pytest.raises(ValueError, match="shape"):
        ShapeSpec("red", "hexagon", "left", "slowly", 16.0, 32.0, 32.0)
    with pytest.raises(ValueError, match="speed"):
        canonical_caption("red", "circle", "left", "fast")


def test_first_frame_stills_open_their_clip_and_leave_room_for_its_motion():
    clips = ShapesDataset("image", 16, 8, 64, seed=3)
    stills = ShapesDataset("image", 16, 8, 64, seed=3, render_frames=1)
    for i in range(64):
        clip, still = clips[i], stills[i]
        assert still["pixel_values"].shape[1] == 1
        assert torch.equal(still["pixel_values"][:, 0], clip["pixel_values"][:, 0])
    # a fast clip moving down for 16 frames must start in the upper part of the frame
    tops = [s["spec"]["y"] for s in (stills[i] for i in range(64)) if s["spec"]["direction"] == "down" and s["spec"]["speed"] == "quickly"]
    assert tops and max(tops) < 32
    with pytest.raises(ValueError, match="render_frames"):
        ShapesDataset("image", 16, 8, 4, render_frames=17)


@pytest.mark.parametrize("direction", DIAGONALS)
def test_diagonal_clips_move_along_the_diagonal_at_the_asked_speed_and_stay_inside(direction):
    rng = random.Random(direction)
    for speed in SPEEDS:
        for _ in range(20):
            spec = sample_spec(rng, 16, REFERENCE_FPS, direction=direction, speed=speed)
            centres = centre_trajectory(spec, 16, REFERENCE_FPS)
            half = spec.size / 2
            assert (centres - half >= 0).all() and (centres + half <= FRAME_SIZE).all()
            step = np.diff(centres, axis=0)
            assert np.linalg.norm(step, axis=1) == pytest.approx(np.full(15, SPEEDS[speed]))
            assert np.sign(step[0]).tolist() == [1 if "right" in direction else -1, 1 if "down" in direction else -1]
    # The data sets never draw a diagonal: it is new to every model trained on the world.
    assert {sample_spec(rng, 16, REFERENCE_FPS).direction for _ in range(200)} == set(DIRECTIONS)
