"""What `pip install emuvideo` gets: the configs, so that `--config qlora` works outside a checkout."""

import shutil
import subprocess
import sys
import zipfile
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
