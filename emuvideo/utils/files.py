"""Writing files and folders so that a reader never sees a half-written one: write beside, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the final suffix, so writers that pick a format by extension still work.
    The file ends with the permissions a plain `open(path, "w")` gives (0o666 less the umask), not
    `mkstemp`'s private 0o600. A failed write (full disk, file-size limit, ...) raises an `OSError` whose
    message names `path`, and leaves neither `path` nor the temporary file behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(err, OSError):
            # the writer's message names the temporary file (or nothing); name the file the user asked for
            raise _naming(err, path) from err
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """`err` again (same errno, so the same subclass: FileNotFoundError, PermissionError, ...) naming `path`."""
    message = f"cannot write {str(path)!r}: {err.strerror or str(err) or type(err).__name__}"
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def check_writable_dir(folder: str | Path, what: str = "output folder") -> None:
    """Refuse, before any long work, a folder that cannot be created or written (one line naming it).

    A folder that does not exist yet is fine when its nearest existing parent is a writable folder.
    """
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {str(folder)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(folder)!r} is not writable ({str(existing)!r}: permission denied)")


def plain_permissions(path: str | Path) -> None:
    """Give `path` (a file, or each `.safetensors` file under a folder) the permissions of a plain
    `open(path, "w")`: 0o666 less the umask. safetensors >= 0.8 writes 0o600 (a private temporary file, renamed)
    and `shutil.copytree` keeps that: another user, or a container, could not read the weights beside their
    0o644 JSON."""
    path = Path(path)
    mode = 0o666 & ~_umask()
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    for file in files:
        if file.is_file() and not file.is_symlink() and file.stat().st_mode & 0o777 != mode:
            os.chmod(file, mode)


def swap_in(tmp: str | Path, final: str | Path) -> None:
    """Rename the complete folder `tmp` to `final`, replacing an older `final`, its weights readable as its JSON
    files are (`plain_permissions`: safetensors, and copies of what it wrote, are 0o600).

    A rename cannot overwrite a folder: the old `final` is moved aside to `.old-NAME` first, then deleted (a copy
    left there by a kill is deleted the next time).
    """
    tmp, final = Path(tmp), Path(final)
    plain_permissions(tmp)
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a new empty folder beside `path` (`.NAME.tmp-PID-XXXXXXXX`); on success it replaces `path`
    (`swap_in`: a reader never sees half a folder, its weights get `plain_permissions`), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on the renamed folder
    try:
        yield tmp
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
