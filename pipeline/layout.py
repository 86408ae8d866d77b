"""Stage folders, fan-out folders (<ab>) and identifier rules of the base_dir layout (DESIGN.md)."""
from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline import listing

DOWNLOADED = "01_downloaded"
PENDING_LEGACY = "02_ocr_pending"
PROCESSING = "03_ocr_processing"
OCR_COMPLETED = "04_ocr_completed"
PROCESSED = "05_processed"
QUARANTINE = "_quarantine"
MANIFESTS = "_manifests"  # the folder of the event log, metrics and run records (its name on disk stays)

# A stage asks for a document's paths several times while it works on it (six Paths, a hash and the
# identifier checks each time otherwise); a batch's worth is remembered.
DOCUMENTS_REMEMBERED = 4096
_BATCH_DIR = re.compile(r"^batch_(\d+)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidIdentifier(ValueError):
    """An identifier or key that could escape its folder; never used as a path."""


# Names made only of these are safe without the checks below (ASCII: bytes = characters <= 200);
# a source of millions of documents validates each name.
_PLAIN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\- ]{0,199}")


def validate_identifier(identifier: str) -> str:
    """Return ``identifier`` if it is safe as one path component, else raise InvalidIdentifier."""
    if _PLAIN.fullmatch(identifier):
        return identifier
    problem = None
    if not identifier:
        problem = "is empty"
    elif "/" in identifier or "\\" in identifier:
        problem = "contains a path separator"
    elif "\x00" in identifier:
        problem = "contains a NUL byte"
    elif _CONTROL.search(identifier):
        problem = "contains a control character (line break, tab, ...)"
    elif identifier.startswith("."):
        problem = "starts with a dot (hidden file or '..')"
    elif len(identifier.encode("utf-8", "surrogateescape")) > 200:
        problem = "is longer than 200 bytes"
    if problem:
        raise InvalidIdentifier(f"identifier {identifier!r} {problem}; rename the file to a plain name")
    return identifier


def identifier_of(pdf_name: str) -> str:
    """The identifier of a PDF file name: the name without its ``.pdf`` suffix (any case)."""
    stem = pdf_name[:-4] if pdf_name.lower().endswith(".pdf") else pdf_name
    return validate_identifier(stem)


def fanout_of(identifier: str, width: int) -> str:
    """``<ab>``: the first ``width`` hex digits of sha1(identifier); '' when fan-out is off (shard_width = 0)."""
    return hashlib.sha1(identifier.encode("utf-8", "surrogateescape")).hexdigest()[:width] if width else ""


def normalize_batch(batch: str | int) -> str:
    """'7', '0007' and 7 all name batch '0007'."""
    text = str(batch).strip()
    if text.startswith("batch_"):
        text = text[len("batch_"):]
    if not text.isdigit():
        raise ValueError(f"batch {batch!r} is not a number; use e.g. --batch 7 or --batch 0007")
    return f"{int(text):04d}"


@dataclass(frozen=True)
class DocumentPaths:
    downloaded_pdf: Path
    downloaded_meta: Path
    completed_jsonl: Path
    processed_dir: Path
    processed_ocr: Path
    processed_metadata: Path


@functools.lru_cache(maxsize=DOCUMENTS_REMEMBERED)
def _document_paths(base: Path, width: int, identifier: str) -> DocumentPaths:
    fanout = fanout_of(validate_identifier(identifier), width)
    root = str(base)
    processed = os.path.join(root, PROCESSED, fanout, identifier)
    return DocumentPaths(
        downloaded_pdf=Path(os.path.join(root, DOWNLOADED, fanout, f"{identifier}.pdf")),
        downloaded_meta=Path(os.path.join(root, DOWNLOADED, fanout, f"{identifier}.meta.json")),
        completed_jsonl=Path(os.path.join(root, OCR_COMPLETED, fanout, f"{identifier}.ocr.jsonl")),
        processed_dir=Path(processed),
        processed_ocr=Path(os.path.join(processed, f"{identifier}.ocr.json")),
        processed_metadata=Path(os.path.join(processed, f"{identifier}.metadata.json")),
    )


@dataclass(frozen=True)
class Layout:
    """Where everything lives under one base_dir."""

    base: Path
    fanout_width: int = 2

    def _fanned_out(self, stage: str, identifier: str) -> Path:
        return self.base / stage / fanout_of(validate_identifier(identifier), self.fanout_width)

    def document(self, identifier: str) -> DocumentPaths:
        """Every stage path of one document, from one fan-out computation (hot loops use it directly)."""
        return _document_paths(self.base, self.fanout_width, identifier)

    # 01 -----------------------------------------------------------------
    def downloaded_pdf(self, identifier: str) -> Path:
        return self.document(identifier).downloaded_pdf

    def downloaded_meta(self, identifier: str) -> Path:
        return self.document(identifier).downloaded_meta

    # 03 -----------------------------------------------------------------
    @property
    def processing(self) -> Path:
        return self.base / PROCESSING

    def batch_dir(self, batch: str | int) -> Path:
        return self.processing / f"batch_{normalize_batch(batch)}"

    def batch_numbers(self) -> list[str]:
        """Every batch folder present, as normalized numbers, in order."""
        if not self.processing.is_dir():
            return []
        found = (_BATCH_DIR.match(p.name) for p in self.processing.iterdir() if p.is_dir())
        return sorted({normalize_batch(m.group(1)) for m in found if m})

    # 04 / 05 ------------------------------------------------------------
    def completed_jsonl(self, identifier: str) -> Path:
        return self.document(identifier).completed_jsonl

    def processed_dir(self, identifier: str) -> Path:
        return self.document(identifier).processed_dir

    def processed_ocr(self, identifier: str) -> Path:
        return self.document(identifier).processed_ocr

    def processed_metadata(self, identifier: str) -> Path:
        return self.document(identifier).processed_metadata

    # quarantine / manifests ----------------------------------------------
    def quarantine_pdf(self, identifier: str) -> Path:
        return self._fanned_out(QUARANTINE, identifier) / f"{identifier}.pdf"

    def quarantine_reason(self, identifier: str) -> Path:
        return self._fanned_out(QUARANTINE, identifier) / f"{identifier}.reason.json"

    @property
    def manifests(self) -> Path:
        return self.base / MANIFESTS

    @property
    def events(self) -> Path:
        return self.manifests / "events.ndjson"

    @property
    def metrics(self) -> Path:
        return self.manifests / "metrics.ndjson"

    def is_known(self, identifier: str) -> bool:
        """True when the document was already downloaded, finalized or quarantined.

        A PDF in 01_downloaded without its .meta.json does not count: the .meta.json marks a
        download complete, and a run killed between the two must fetch the document again.
        """
        return any(
            p.exists()
            for p in (
                self.downloaded_meta(identifier),
                self.processed_metadata(identifier),
                self.quarantine_reason(identifier),
            )
        )


@dataclass(frozen=True)
class BatchPaths:
    """Files inside one 03_ocr_processing/batch_NNNN/ folder."""

    dir: Path

    @property
    def number(self) -> str:
        return normalize_batch(self.dir.name)

    @property
    def batch_record(self) -> Path:
        """batch.json: the batch's documents, their pages, when it was made."""
        return self.dir / "batch.json"

    @property
    def chunk_plan(self) -> Path:
        return self.dir / "chunks.json"

    @property
    def retry_plan(self) -> Path:
        return self.dir / "chunks" / "retries.json"

    def chunk_list(self, index: int) -> Path:
        return self.dir / "chunks" / f"chunk_{index:03d}.txt"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def chunk_log(self, index: int) -> Path:
        return self.logs / f"chunk_{index:03d}.log"

    @property
    def workspace(self) -> Path:
        """olmOCR's workspace; its output files land in workspace/results/."""
        return self.dir / "results"

    @property
    def results(self) -> Path:
        return self.workspace / "results"

    def done_marker(self, index: int) -> Path:
        return self.workspace / "done" / f"chunk_{index:03d}.done"

    @property
    def ocr_marker(self) -> Path:
        """Written by OCRBatch once every chunk and the retry pass are done."""
        return self.workspace / "done" / "ocr_batch.done"

    @property
    def split_report(self) -> Path:
        return self.dir / "split_report.json"

    @property
    def finalize_report(self) -> Path:
        return self.dir / "finalize_report.json"

    @property
    def finalized(self) -> Path:
        return self.dir / "finalized.json"

    def pdf(self, identifier: str) -> Path:
        return self.dir / f"{validate_identifier(identifier)}.pdf"

    def pdfs(self) -> list[tuple[str, Path]]:
        """PDFs lying directly in the batch folder (new and old layouts alike)."""
        return sorted(listing.entries(self.dir).derived(pdfs_listed))


def pdfs_listed(entries: listing.Entries) -> list[tuple[str, Path]]:
    """(identifier, path) of the PDF files of a listing whose name makes a safe identifier."""
    found = []
    for name in entries.files:
        if name[-4:].lower() == ".pdf":
            try:
                found.append((identifier_of(name), Path(entries.folder, name)))
            except InvalidIdentifier:
                continue
    return found
