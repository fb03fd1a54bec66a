"""The package's rooms import only downwards (docs/architecture.md): a module may import from its own room and
from the rooms on the floors below it, never from above or from a room beside it. A cycle between rooms, or a
data loader that needs a pipeline, is how code starts to exist twice; this keeps the layering a fact."""

import ast
from pathlib import Path

import emuvideo

PACKAGE = Path(emuvideo.__file__).parent
# floor -> rooms (a subpackage or a top-level module); the same list as docs/architecture.md
FLOORS = [
    ["preprocessing"],           # reading and shaping images and videos: no emuvideo imports
    ["utils"],                   # files, video writing, memory counting, benchmarks
    ["config", "schedules"],     # YAML configs; noise schedules
    ["loaders"],                 # LoRA / peft plumbing the models mix in
    ["models"],                  # U-Nets, presets, text encoder, VAE/text encoding
    ["data"],                    # shapes world, clip folders, latent cache, data sources
    ["pipelines"],               # sampling: text-to-image, image-to-video, interpolation, loading
    ["training", "evaluation"],  # stages and trainer | judges and reports (beside each other: no imports across)
    ["experiments"],             # the paper's ablations and claims, run by scripts/
    ["cli"],                     # argparse lives only here
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def imported_rooms(source: str, module: str) -> set[str]:
    """The emuvideo rooms that `source`, the text of the module `module` ("emuvideo.data.sources"), imports from
    (relative or absolute imports; the package root itself skipped)."""
    package = module.split(".")[:-1]
    rooms = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "emuvideo":
                target = node.module.split(".")
            else:
                continue
            names = [target[1]] if len(target) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("emuvideo.")]
        else:
            continue
        rooms.update(n for n in names if n in FLOOR)
    return rooms


def test_every_room_is_on_a_floor():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert rooms - {"weights"} == set(FLOOR)  # weights/: the shipped model, no code


def test_rooms_import_only_from_the_floors_below():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package root re-exports the public names lazily
        room = rel.parts[0].removesuffix(".py")
        module = ".".join(("emuvideo", *rel.with_suffix("").parts))
        if rel.name == "__init__.py":
            module = module.removesuffix(".__init__") + ".__init__"  # its package is the folder itself
        wrong += [f"{rel} imports {other} (floor {FLOOR[other]} >= {FLOOR[room]})"
                  for other in sorted(imported_rooms(path.read_text(), module))
                  if other != room and FLOOR[other] >= FLOOR[room]]
    assert wrong == []


def test_the_check_sees_upward_and_sideways_imports():
    """The check can fail: what a data module or a training stage must not import is reported."""
    source = "from ..pipelines.common import encode_frames\nimport emuvideo.training.trainer\nfrom .. import utils\n"
    assert imported_rooms(source, "emuvideo.data.sources") == {"pipelines", "training", "utils"}
    source = "from ...evaluation.strict_judge import judge\nfrom ..losses import diffusion_loss\n"
    assert imported_rooms(source, "emuvideo.training.stages.video") == {"evaluation", "training"}
