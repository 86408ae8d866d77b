"""FinalizeReady: finalize, in every open batch, the documents whose OCR results are there, to free
disk before the batch's OCR is over; never OCR anything.

Per batch this is a partial finalize (``finalize.finalize_batch(partial=True)``) under the batch's
Finalize lock, so it never runs beside a Finalize of the same batch, and it runs safely beside the
batch's OCRBatch or SplitResults: results files appear whole (temp + rename) and a partial finalize
only adds 04 and 05 files and deletes the PDFs of the documents it finalized. It leaves alone every
document a chunk still to run lists (planned, retry or half, neither done nor split nor given up),
even when a record of it exists (a job killed after writing its results and before its done marker
runs again): a job must never find its PDF gone. A batch with nothing ready is not touched, so a
second run changes no byte.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import atomic, lease, olmocr_format
from pipeline.executors.base import Progress
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import batches, bisect, finalize, split

FINALIZE_STAGE = "Finalize"  # the lock a Finalize task of the batch holds (batch_NNNN/locks/Finalize.lock)


def _valid_records(paths: BatchPaths, identifiers: set[str]) -> set[str]:
    """Which of ``identifiers`` have a record in the batch's results that the split can write."""
    plan = split.plan_split(paths.results, identifiers)
    found = set()
    for identifier, (record, _) in plan.winners.items():
        try:
            olmocr_format.make_valid(record)
        except olmocr_format.InvalidRecord:
            continue
        found.add(identifier)
    return found


def ready_documents(layout: Layout, paths: BatchPaths, in_flight: frozenset[str]) -> list[str]:
    """Documents of the batch a partial finalize would finalize now: a PDF or download file of theirs
    is still there, they have a 04 record, a whole 05 output or a valid record in the batch's
    results, and no chunk still to run (``in_flight``) lists them."""
    documents = atomic.read_json(paths.batch_record)["documents"]
    candidates = {}
    for identifier in documents:
        if identifier in in_flight:
            continue
        doc = layout.document(identifier)
        if any(p.exists() for p in (paths.pdf(identifier), doc.downloaded_pdf, doc.downloaded_meta)):
            candidates[identifier] = doc
    ready = {i for i, doc in candidates.items() if doc.completed_jsonl.exists() or doc.processed_metadata.exists()}
    rest = set(candidates) - ready
    if rest and paths.results.is_dir():
        ready |= _valid_records(paths, rest)
    return sorted(ready)


def _input_files(layout: Layout, paths: BatchPaths, identifiers: Iterable[str]) -> dict[tuple[int, int], Path]:
    """(device, inode) -> one path, for the PDFs and download files of ``identifiers`` (a hard-linked
    PDF counts once)."""
    found: dict[tuple[int, int], Path] = {}
    for identifier in identifiers:
        doc = layout.document(identifier)
        for path in (paths.pdf(identifier), doc.downloaded_pdf, doc.downloaded_meta):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                continue
            found.setdefault((info.st_dev, info.st_ino), path)
    return found


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _amount(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB" if size >= 2**20 \
        else f"{size / 2**10:.1f} KiB"


@dataclass
class Summary:
    """What one FinalizeReady run did."""

    batches: dict[str, int] = field(default_factory=dict)  # batch -> documents finalized now
    documents: int = 0
    bytes_freed: int = 0
    left: dict[str, int] = field(default_factory=dict)  # batch -> documents still waiting for OCR

    def line(self) -> str:
        if not self.documents:
            return f"FinalizeReady: nothing ready in {len(self.left)} open batches; nothing finalized"
        where = ", ".join(f"{b} ({n})" for b, n in self.batches.items())
        return (f"FinalizeReady: {self.documents} documents finalized in batches {where}, "
                f"{_amount(self.bytes_freed)} freed; {sum(self.left.values())} documents wait for OCR")

    def as_dict(self) -> dict:
        return {"batches": self.batches, "documents_finalized": self.documents, "bytes_freed": self.bytes_freed,
                "waiting_for_ocr": self.left}


def finalize_batch_ready(layout: Layout, paths: BatchPaths, *, workers: int, engine: str,
                         progress: Progress, lease_seconds: float = lease.DEFAULT_SECONDS) -> tuple[int, int]:
    """Finalize what is ready in one open batch, under its Finalize lock; returns (documents
    finalized now, bytes of inputs deleted). Nothing when nothing is ready once the lock is held."""
    ready: list[str] = []
    outcome = (0, 0)

    def nothing_ready() -> bool:  # asked under the lock: a Finalize that held it may have done it all
        nonlocal ready
        if paths.finalized.exists():
            return True
        ready = ready_documents(layout, paths, bisect.documents_in_flight(paths))
        return not ready

    def run() -> None:
        nonlocal outcome
        inputs = _input_files(layout, paths, ready)
        before = sum(_size(p) for p in inputs.values())
        summary = finalize.finalize_batch(layout, paths, partial=True, workers=workers, engine=engine,
                                          progress=progress)
        outcome = (summary["finalized_now"], before - sum(_size(p) for p in inputs.values()))

    batches.run_once(paths, FINALIZE_STAGE, nothing_ready, run, progress, lease_seconds)
    return outcome


def finalize_ready(layout: Layout, *, workers: int, engine: str, progress: Progress,
                   lease_seconds: float = lease.DEFAULT_SECONDS) -> Summary:
    """FinalizeReady over every open batch that has a batch record; returns what was done."""
    summary = Summary()
    numbers = [n for n in batches.open_batches(layout) if BatchPaths(layout.batch_dir(n)).batch_record.exists()]
    for position, number in enumerate(numbers):
        paths = BatchPaths(layout.batch_dir(number))

        def batch_progress(done: int, total: int, message: str, number: str = number, at: int = position) -> None:
            progress(at, len(numbers), f"batch {number}: {message} ({done}/{total})")

        batch_progress(0, 1, "looking for documents with results")
        finalized = freed = 0
        if ready_documents(layout, paths, bisect.documents_in_flight(paths)):  # else not even a lock file is made
            finalized, freed = finalize_batch_ready(layout, paths, workers=workers, engine=engine,
                                                    progress=batch_progress, lease_seconds=lease_seconds)
        if finalized:
            summary.batches[number] = finalized
            summary.documents += finalized
            summary.bytes_freed += freed
        if not paths.finalized.exists():
            summary.left[number] = len(paths.pdfs())
    progress(len(numbers), len(numbers), summary.line())
    return summary
