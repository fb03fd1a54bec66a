"""Typed configs from YAML: one source of truth for every setting.

A config is a dataclass; `load_config` fills it from a YAML file plus `KEY=VALUE` overrides (dotted keys
for nested sections), rejecting unknown keys and wrong types with a message that names them. The resolved
config is saved next to every checkpoint (`save_config`) and read back on resume.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .utils.files import atomic_path

T = TypeVar("T")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or '<root>'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {where + unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint, value, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is dict and isinstance(value, dict):
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"config key {key!r} must be {hint.__name__}, got {value!r}")
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def parse_overrides(pairs: list[str]) -> dict:
    """`["train.lr=1e-4", "data.fps=4"]` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} must look like KEY=VALUE")
        key, raw = pair.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# The configs of the repository's configs/ folder: inside the installed package (a wheel copies them to
# emuvideo/configs/, see setup.py), else at the root of the checkout this package runs from.
_PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIGS_DIR = _PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "configs"


def resolve_config(name: str | Path) -> Path:
    """A config file: `name` itself if it is a file, else the packaged config so named (`qlora`,
    `finetune/qlora`, `02_video_stage1.yaml`: the file's name, with or without its folder and `.yaml`)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = str(name).removesuffix(".yaml").removesuffix(".yml")
    if path.is_absolute() or stem.startswith("."):
        raise ValueError(f"config file {str(name)!r} does not exist")
    stem = stem.removeprefix("configs/")  # `configs/finetune/qlora.yaml` written for a checkout, run elsewhere
    found = sorted(CONFIGS_DIR.glob(f"**/{stem}.yaml")) if CONFIGS_DIR.is_dir() else []
    if len(found) == 1:
        return found[0]
    known = sorted(p.relative_to(CONFIGS_DIR).with_suffix("").as_posix() for p in CONFIGS_DIR.glob("**/*.yaml"))
    if found:
        raise ValueError(f"config {str(name)!r} is ambiguous: {', '.join(str(p.relative_to(CONFIGS_DIR)) for p in found)}")
    raise ValueError(f"config file {str(name)!r} does not exist, nor is it a packaged config ({', '.join(known)})")


def config_name(path: str | Path) -> str:
    """How to print a config file: `configs/finetune/qlora.yaml` for a packaged one (the name a checkout's docs
    use, which `resolve_config` also accepts installed), else the path as given."""
    path = Path(path)
    try:
        return "configs/" + path.resolve().relative_to(CONFIGS_DIR.resolve()).as_posix()
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> dict:
    """The mapping a YAML file holds, or a one-line error naming the file (and the line that does not parse)."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {str(path)!r} cannot be read: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Defaults of `cls` <- YAML file (a path or a packaged config's name) <- overrides, checked.

    A bad key or value of the file is reported with the file's name; one of the overrides without it."""
    data = to_dict(cls())
    if path is not None:
        path = resolve_config(path)
        loaded = read_yaml(path)
        try:
            _check_keys(cls, loaded, "")
            data = _merge(data, loaded)
            from_dict(cls, data)  # the file's values checked alone, so that an error can name the file
        except ValueError as err:
            raise ValueError(f"config file {str(path)!r}: {err}") from None
    if overrides:
        _check_keys(cls, overrides, "")
        data = _merge(data, overrides)
    return from_dict(cls, data)


def _check_keys(cls, data: dict, where: str) -> None:
    # Checked before merging, so a typo is reported rather than merged into a nested default.
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {where + key!r} (known: {', '.join(sorted(fields))})")
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            _check_keys(hints[key], value, where + key + ".")


def save_config(config, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
