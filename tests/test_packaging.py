"""What `pip install emuvideo` gets: the configs, so that `--config qlora` works outside a checkout, and every
package the code imports (and only those, with the floors the code needs)."""

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_ships_every_config_and_an_install_resolves_them_by_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("emuvideo", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("setup.py", "MANIFEST.in", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(tmp_path)]
    subprocess.run(build, check=True, capture_output=True, timeout=300, cwd=src)
    (wheel,) = tmp_path.glob("emuvideo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs and all(f"emuvideo/{c}" in names for c in configs)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # an install, minus the scripts
    probe = "from emuvideo.config import resolve_config; print(resolve_config('qlora'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""})
    assert Path(out.stdout.strip()) == site / "emuvideo" / "configs" / "finetune" / "qlora.yaml"


# Declared though emuvideo never imports them: each one's reason.
RUNTIME_ONLY = {"tensorboard": "accelerate's log_with='tensorboard' (the training logs) writes through it"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Pillow == pillow, PyYAML == pyyaml


def _declared() -> tuple[set[str], set[str]]:
    """(dependencies, every optional extra's) of pyproject.toml, as canonical distribution names."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in reqs}  # noqa: E731
    extras = [r for extra in project["optional-dependencies"].values() for r in extra]
    return names(project["dependencies"]), names(extras)


def _imported_top_level() -> dict[str, str]:
    """Top-level module name -> one file of emuvideo/ that imports it (absolute imports only)."""
    found = {}
    for path in sorted((ROOT / "emuvideo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared_and_every_declared_package_is_used():
    required, optional = _declared()
    distributions = packages_distributions()  # import name -> distributions, from what is installed here
    used = set()
    for module, where in _imported_top_level().items():
        if module in sys.stdlib_module_names or module == "emuvideo":
            continue
        dists = {_canonical(d) for d in distributions.get(module, [module])}  # not installed: named as imported
        assert dists & (required | optional), f"{where} imports {module} ({', '.join(dists)}), not in pyproject.toml"
        used |= dists
    unused = required - used - set(RUNTIME_ONLY)
    assert not unused, f"declared in pyproject.toml but never imported by emuvideo/: {sorted(unused)}"
