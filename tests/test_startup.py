"""Start-up: a command imports only what it uses — `--version` and `--help` import no torch, scoring existing
clips imports no diffusers — checked in fresh processes, as a user's shell runs them."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "numpy", "PIL", "av")

RUN = """
import json, sys
import emuvideo.cli as cli
try:
    code = cli.main({argv!r})
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({{"code": code, "imported": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def _run(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", RUN.format(argv=argv, heavy=HEAVY)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["generate", "--help"], ["eval", "--help"],
                                  ["generate", "--sampler", "heun"]])
def test_version_help_and_usage_errors_import_no_torch(argv):
    run = _run(argv)
    assert run["code"] in (0, 2) and run["imported"] == [], run


@pytest.mark.slow
def test_scoring_existing_clips_imports_no_diffusers(tmp_path):
    (tmp_path / "clips").mkdir()
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle moving right\n")
    run = _run(["eval", "--videos", str(tmp_path / "clips"), "--captions", str(captions)])  # no clip: exit 2
    assert run["code"] == 2
    assert "torch" in run["imported"] and "diffusers" not in run["imported"] and "transformers" not in run["imported"]
