"""OCR engines. Each reads a list of PDFs and writes one olmOCR-format JSONL file into a workspace.

Contract (the same for every engine):
    engine.run(pdfs, workspace) -> list of output .jsonl paths under ``workspace/results/``
Output files are written atomically (temp file, fsync, rename). A PDF the engine could not read
simply has no record; the caller notices and reports it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class Engine(Protocol):
    name: str

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]: ...


@dataclass
class EngineSettings:
    """What an engine needs from [ocr], passed explicitly so jobs need no luigi.cfg."""

    workers: int = 0
    tesseract_lang: str = "eng"
    tesseract_dpi: int = 300
    olmocr_python: str = "python"
    olmocr_args: list[str] = field(default_factory=list)
    max_page_error_rate: float = 0.004
    command: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EngineSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def output_name(pdfs: list[Path]) -> str:
    """output_<sha1 of the sorted PDF paths>.jsonl, named the way olmOCR names a work item's output."""
    digest = hashlib.sha1("\n".join(sorted(str(p) for p in pdfs)).encode("utf-8", "surrogateescape"))
    return f"output_{digest.hexdigest()}.jsonl"


def get_engine(name: str, settings: EngineSettings | None = None) -> Engine:
    settings = settings or EngineSettings()
    if name == "text":
        from .text import TextEngine

        return TextEngine(settings)
    if name == "tesseract":
        from .tesseract import TesseractEngine

        return TesseractEngine(settings)
    if name == "olmocr":
        from .olmocr import OlmOCREngine

        return OlmOCREngine(settings)
    if name == "command":
        from .command import CommandEngine

        return CommandEngine(settings)
    raise ValueError(f"unknown OCR engine {name!r}; use olmocr, tesseract, text or command")
