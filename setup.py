"""Packaging beyond pyproject.toml: the wheel ships the checkout's configs/ as emuvideo/configs/.

configs/ stays at the repository root, the one copy that is edited (docs and commands name
`configs/finetune/qlora.yaml`); an installed emuvideo finds the same files by name (`--config qlora`,
see `emuvideo.config.resolve_config`). MANIFEST.in puts configs/ in the sdist, so a wheel built from it
has them too.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        source = Path("configs")  # setuptools runs from the project root
        if source.is_dir() and not self.editable_mode:  # an editable install reads the checkout's configs/
            shutil.copytree(source, Path(self.build_lib) / "emuvideo" / "configs", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConfigs})
