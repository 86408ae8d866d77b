"""The ``text`` engine: the PDF's own text layer, read with pypdf (born-digital documents).

Each PDF is read in a worker process under the document limits (see ``isolation``): a PDF that
makes pypdf raise, hang or eat memory gets no record and a failure entry, the others go on.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import atomic, olmocr_format
from pipeline.engines import EngineSettings, output_name, say
from pipeline.isolation import DocumentFailed, Workers, available_cpus

VERSION = "text-pypdf"
PROGRESS_EVERY = 100  # documents between progress lines


def page_texts(pdf: Path) -> list[str]:
    from pypdf import PdfReader

    reader = PdfReader(pdf)
    if reader.is_encrypted:
        reader.decrypt("")
    return [(page.extract_text() or "").strip() for page in reader.pages]


def record_line(pdf: Path) -> bytes:
    """Runs in a worker: the document's record as one valid JSONL line."""
    return olmocr_format.record_line(olmocr_format.build_record(str(pdf), page_texts(pdf), version=VERSION))


class TextEngine:
    name = "text"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.failures: list[dict[str, str]] = []

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]:
        self.failures = []
        lines = []
        workers = min(len(pdfs), self.settings.workers or available_cpus())
        with Workers(self.settings.limits(), workers) as pool:
            for done, (pdf, result) in enumerate(pool.map(record_line, pdfs), start=1):
                if isinstance(result, DocumentFailed):
                    say(f"text engine: {pdf}: no record: {result}")
                    self.failures.append(result.entry(pdf.name))
                else:
                    lines.append(result)
                if done % PROGRESS_EVERY == 0 or done == len(pdfs):
                    say(f"text engine: {done}/{len(pdfs)} documents read, {len(self.failures)} failed")
        out = Path(workspace) / "results" / output_name(pdfs)
        atomic.write_bytes(out, b"".join(lines))
        return [out]
