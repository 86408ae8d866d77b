"""The ``text`` engine: the PDF's own text layer, read with pypdf (born-digital documents)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import atomic, olmocr_format
from . import EngineSettings, output_name

VERSION = "text-pypdf"


def page_texts(pdf: Path) -> list[str]:
    from pypdf import PdfReader

    reader = PdfReader(pdf)
    if reader.is_encrypted:
        reader.decrypt("")
    return [(page.extract_text() or "").strip() for page in reader.pages]


class TextEngine:
    name = "text"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]:
        lines = []
        for pdf in pdfs:
            try:
                texts = page_texts(pdf)
            except Exception as exc:  # a PDF pypdf cannot read gets no record; the caller reports it
                print(f"text engine: {pdf}: cannot read text layer: {exc}", flush=True)
                continue
            record = olmocr_format.build_record(str(pdf), texts, version=VERSION)
            lines.append(json.dumps(record, ensure_ascii=False))
        out = Path(workspace) / "results" / output_name(pdfs)
        atomic.write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
        return [out]
