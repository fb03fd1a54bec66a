"""The README's Python runs as written: every ```python block, in order, in one namespace, on the shipped model."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.slow
def test_readme_python_blocks_run_as_written_and_their_shape_comments_hold(one_thread, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the blocks write lands here
    namespace = {}
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md (python block {i + 1})", "exec"), namespace)
        # `x.shape   # (1, 16, 64, 64, 3) ...`: a shape the README promises is the shape the code gives
        for expression, shape in re.findall(r"^(\S[^#\n]*?\.shape)\s+# (\([\d, ]+\))", block, re.M):
            assert tuple(eval(expression, namespace)) == eval(shape), expression
