"""Installs the startup hook ocr_pipeline_luigi.pth next to the package (see _ocr_pipeline_cli.py)."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK = "ocr_pipeline_luigi.pth"


class BuildWithHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(HOOK, str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


setup(cmdclass={"build_py": BuildWithHook})
