"""OCR engines. Each reads a list of PDFs and writes one olmOCR-format JSONL file into a workspace.

Contract (the same for every engine):
    engine.run(pdfs, workspace) -> list of output .jsonl paths under ``workspace/results/``
    engine.failures -> after run: {"file", "error", "message", "log"} for each PDF left without a record
Output files are written atomically (temp file, fsync, rename) and hold valid text only. A PDF the
engine could not read has no record and, where the engine knows why, an entry in ``failures``; the
caller notices every PDF without a record either way. One document's failure, hang or crash never
costs the others: work on the PDF inside this process runs under ``isolation`` limits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline import pdf
from pipeline.isolation import DocumentFailed, Limits

if TYPE_CHECKING:
    from pipeline.config import OCRConfig


class Engine(Protocol):
    name: str
    failures: list[dict[str, str]]

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
    document_timeout: float = 120.0  # seconds of in-process work on one PDF (text layer, page count); 0 = none
    document_memory_mb: int = 2048  # memory of that work, and of each pdftoppm/tesseract process; 0 = none

    def limits(self) -> Limits:
        return Limits(seconds=self.document_timeout, memory_bytes=self.document_memory_mb << 20)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_config(cls, ocr: OCRConfig) -> EngineSettings:
        """The settings the [ocr] section gives (the one place they are built from it)."""
        return cls(
            workers=ocr.engine_workers,
            tesseract_lang=ocr.tesseract_lang,
            tesseract_dpi=ocr.tesseract_dpi,
            olmocr_python=ocr.olmocr_python,
            olmocr_args=shlex.split(ocr.olmocr_args),
            max_page_error_rate=ocr.max_page_error_rate,
            command=shlex.split(ocr.command),
            document_timeout=ocr.document_timeout,
            document_memory_mb=ocr.document_memory_mb,
        )

    @classmethod
    def from_json(cls, text: str) -> EngineSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def output_name(pdfs: list[Path]) -> str:
    """output_<sha1 of the sorted PDF paths>.jsonl, named the way olmOCR names a work item's output."""
    digest = hashlib.sha1("\n".join(sorted(str(p) for p in pdfs)).encode("utf-8", "surrogateescape"))
    return f"output_{digest.hexdigest()}.jsonl"


def page_count(path: Path) -> int:
    """Runs in an isolation worker: the PDF's page count, or DocumentFailed naming why there is none."""
    try:
        return pdf.count_pages(path).pages
    except (pdf.PdfError, OSError) as exc:
        raise DocumentFailed("PdfError", f"{getattr(exc, 'reason', 'unreadable')}: {exc}") from None


def say(message: str) -> None:
    """Print a progress or failure line; names and messages from documents may hold any character."""
    print(message.encode("utf-8", "backslashreplace").decode("utf-8"), flush=True)


# The one list of engines: [ocr] engine and [s3] engine choose from these names (config checks,
# Preflight and RunShard read it here). Modules are imported when an engine is first asked for,
# so a chunk job loads only its own.
ENGINES: dict[str, str] = {
    "olmocr": "pipeline.engines.olmocr:OlmOCREngine",
    "tesseract": "pipeline.engines.tesseract:TesseractEngine",
    "text": "pipeline.engines.text:TextEngine",
    "command": "pipeline.engines.command:CommandEngine",
}


def engine_names(conjunction: str = "or") -> str:
    """'olmocr, tesseract, text or command': the engines, for messages that say what to use."""
    names = list(ENGINES)
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


class EngineFailed(RuntimeError):
    """The OCR program failed as a whole (exit status, timeout, no output): the chunk is not done."""


def get_engine(name: str, settings: EngineSettings | None = None) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; use {engine_names()}")
    module, _, cls = ENGINES[name].partition(":")
    engine: Engine = getattr(importlib.import_module(module), cls)(settings or EngineSettings())
    return engine
