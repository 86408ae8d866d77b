"""The ``text`` engine: the PDF's own text layer, read with pypdf (born-digital documents).

Each PDF is read in a worker process under the document limits (see ``isolation``): a PDF that
makes pypdf raise, hang or eat memory gets no record and a failure entry, the others go on.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from pipeline import atomic, olmocr_format
from pipeline.engines import EngineSettings, output_name, say
from pipeline.isolation import DocumentFailed, Workers, available_cpus

VERSION = "text-pypdf"
PROGRESS_EVERY = 100  # documents between progress lines


def _share_named_encodings() -> None:
    """pypdf builds its 256-entry table of a named encoding (cp1252) from scratch for every page it
    reads, a sixth of this engine's time on short pages: build each once per worker, hand out copies
    (pypdf amends them with a font's /Differences). A pypdf without these internals is left as it is."""
    import pypdf._text_extraction._text_extractor as extractor
    import pypdf.generic._font as font

    build: Callable[[str], dict[int, str]] | None = getattr(extractor, "encoding_dict_from_named_encoding", None)
    if build is None or getattr(build, "shared", False):
        return
    table = functools.lru_cache(maxsize=None)(build)

    def shared(encoding: str) -> dict[int, str]:
        return dict(table(encoding))

    shared.shared = True  # type: ignore[attr-defined]
    for module in (extractor, font):
        if getattr(module, "encoding_dict_from_named_encoding", None) is build:
            module.encoding_dict_from_named_encoding = shared  # type: ignore[attr-defined]


def page_texts(pdf: Path) -> list[str]:
    from pypdf import PdfReader

    _share_named_encodings()

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
