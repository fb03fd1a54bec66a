"""Checkpoint folders of a run: listed, checked before a resume, swapped in atomically, leftovers removed.

A checkpoint is `RUN/checkpoints/checkpoint-N/`, written as `.tmp-checkpoint-N/` and renamed once complete; its
`trainer_state.json`, written last, lists every file with its size. So a folder named `checkpoint-N` is always
complete when written, and a file lost or cut short afterwards (a full disk, a copy that stopped) is recognised
by `checkpoint_problem` without loading anything; `resolve_resume("latest")` then takes the newest one that can
be read. Hidden `.tmp-*`, `.trash-*`, `.old-*` folders are what a killed run left; they are never read.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

from ..utils.files import swap_in  # noqa: F401  (renames a complete folder into place; the trainer's)

logger = logging.getLogger(__name__)


def checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint folders of a run, oldest first (complete ones: a save in progress has another name)."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
             and p.is_dir() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def trained_to(output_dir: Path) -> int | None:
    """The step of a run's newest checkpoint (None: none yet)."""
    found = checkpoints(output_dir)
    return json.loads((found[-1] / "trainer_state.json").read_text())["step"] if found else None


def _file_problem(path: Path) -> str | None:
    """Why a checkpoint file cannot be read, from its format's own structure (cheap: nothing is loaded)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:  # checks the header against the file's size
                f.keys()
        except (SafetensorError, OSError) as err:
            return f"is not a readable safetensors file ({str(err).splitlines()[0]})"
    elif path.suffix in (".bin", ".pkl", ".pt"):  # torch.save's zip format: a truncated one has no directory
        if not zipfile.is_zipfile(path):
            return "is not a readable torch file (truncated?)"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from (a missing, truncated or damaged file), or None.

    Each checkpoint lists its files and their sizes in `trainer_state.json`, written last, before the folder
    is renamed into place; each file is also checked against its format (safetensors header, torch zip).
    """
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        steps = [state[k] for k in ("step", "epoch", "batch_in_epoch")]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"trainer_state.json cannot be read ({type(err).__name__}: {err})"
    if not all(isinstance(v, int) and v >= 0 for v in steps):
        return f"trainer_state.json holds no step ({state})"
    # Checkpoints written before the list existed: every file there, by its format only.
    files = state.get("files") or {p.relative_to(path).as_posix(): None for p in sorted(path.rglob("*"))
                                   if p.is_file() and p.name != "trainer_state.json"}
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if size is not None and file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {size} were written"
        problem = _file_problem(file)
        if problem is not None:
            return f"{name} {problem}"
    return None


RNG_STATE_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")  # what accelerate's load_state restores


def rng_state_problem(path: Path) -> str | None:
    """Why the RNG-state file `path` of a checkpoint cannot be restored, or None. accelerate's `load_state` goes on
    without it on any error, saying so only at INFO level; the resumed run then draws other noise."""
    from accelerate.utils import load

    try:
        states = load(path)  # as accelerate reads it: torch.load(weights_only=True) with numpy's RNG types allowed
    except Exception as err:  # noqa: BLE001 - what accelerate would skip; the caller warns, naming the file
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'unreadable'}"
    missing = [k for k in RNG_STATE_KEYS if not isinstance(states, dict) or k not in states]
    return f"it holds no {missing[0]!r}" if missing else None


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from: `resume` itself, or for "latest" the newest one that can be read
    (each damaged one skipped with a warning naming it). None: start from step 0."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        if not found:
            logger.warning("--resume latest: no checkpoint in %s yet, starting from step 0", output_dir)
            return None
        for path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            logger.warning("--resume latest: skipping %s, it cannot be read: %s", path, problem)
        raise ValueError(f"--resume latest: none of the {len(found)} checkpoints in {Path(output_dir) / 'checkpoints'} "
                         "can be read (see the warnings); delete them to start over")
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"--resume {resume!r} is not a checkpoint folder (no trainer_state.json)")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume {resume!r} cannot be read: {problem}")
    return path


def remove_leftovers(output_dir: Path) -> None:
    """Folders a killed run left half-written or half-deleted: never read, removed at the next start."""
    leftovers = [*(output_dir / "checkpoints").glob(".*-checkpoint-*"), *output_dir.glob(".*-final"),
                 *output_dir.glob(".*final.tmp-*"),  # save_fn's own temporaries (`atomic_dir`)
                 *output_dir.glob(".*final.old-*")]  # what older versions' save_fn moved aside
    for path in leftovers:
        logger.info("removing %s (left by a run that was stopped while writing it)", path)
        shutil.rmtree(path, ignore_errors=True)
