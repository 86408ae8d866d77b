"""Consolidate OCR output into 05_processed, then delete the PDFs it replaces (DESIGN.md rule 1).

Per document: write <id>.ocr.json and <id>.metadata.json (temp file, fsync, rename), fsync the
folder, read both back and compare, and only then delete the PDF from the batch and 01_downloaded.
Killed at any instant, a document is either untouched, finalized with its PDF still present (the
rerun deletes it), or finalized and deleted.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import atomic, manifest, olmocr_format
from .layout import PENDING_LEGACY, BatchPaths, Layout, shard_of

PIPELINE_NAME = "ocr-pipeline"


@dataclass(frozen=True)
class Provenance:
    """Where a document's OCR came from, for its metadata file."""

    batch: str
    chunk: int | None
    engine: str | None
    ocr_finished_at: str | None


def build_metadata(identifier: str, download: dict[str, Any], record: dict[str, Any], prov: Provenance) -> dict:
    return {
        "identifier": identifier,
        "download": download,
        "ocr": olmocr_format.record_stats(record),
        "batch": prov.batch,
        "chunk": prov.chunk,
        "engine": prov.engine,
        "ocr_finished_at": prov.ocr_finished_at,
        "finalized_at": manifest.now_iso(),
        "pipeline": PIPELINE_NAME,
    }


class VerificationError(RuntimeError):
    pass


def is_finalized(layout: Layout, identifier: str) -> bool:
    """Both 05 files exist and parse: the document's output is safe, its PDF may go."""
    try:
        meta = atomic.read_json(layout.processed_metadata(identifier))
        atomic.read_json(layout.processed_ocr(identifier))
    except (FileNotFoundError, ValueError):
        return False
    return meta.get("identifier") == identifier


def finalize_document(
    layout: Layout, paths: BatchPaths, identifier: str, download: dict[str, Any], prov: Provenance
) -> tuple[str, list[Path]]:
    """Finalize one document whose record is in 04; returns 'finalized' or 'already', and the
    files deleted (their folders still to be fsynced by the caller)."""
    outcome = "already"
    if not is_finalized(layout, identifier):
        lines = layout.completed_jsonl(identifier).read_bytes().splitlines()
        record = json.loads(lines[-1])
        ocr_bytes = atomic.dumps_json(record)
        meta_bytes = atomic.dumps_json(build_metadata(identifier, download, record, prov))
        folder = layout.processed_dir(identifier)
        atomic.remove_stale_temps(folder)  # a kill during an earlier attempt
        atomic.makedirs(folder)
        atomic.write_bytes(layout.processed_ocr(identifier), ocr_bytes, sync_dir=False)
        atomic.write_bytes(layout.processed_metadata(identifier), meta_bytes, sync_dir=False)
        atomic.fsync_dir(folder)
        if (layout.processed_ocr(identifier).read_bytes() != ocr_bytes
                or layout.processed_metadata(identifier).read_bytes() != meta_bytes):
            raise VerificationError(f"{folder}: files read back differ from what was written; PDF kept")
        outcome = "finalized"
    removed = atomic.remove_files([*legacy_links(layout, paths, identifier), paths.pdf(identifier),
                                   layout.downloaded_pdf(identifier), layout.downloaded_meta(identifier)],
                                  sync=False)
    return outcome, removed


def legacy_links(layout: Layout, paths: BatchPaths, identifier: str) -> list[Path]:
    """The document's file in a legacy 02_ocr_pending (flat or sharded) when it is the batch's PDF itself."""
    legacy = layout.base / PENDING_LEGACY
    found = []
    for folder in (legacy, legacy / shard_of(identifier, layout.shard_width)):
        candidate = folder / f"{identifier}.pdf"
        try:
            if candidate not in found and os.path.samefile(candidate, paths.pdf(identifier)):
                found.append(candidate)
        except FileNotFoundError:
            continue
    return found


def download_info(layout: Layout, identifier: str, batch_doc: dict[str, Any]) -> dict[str, Any]:
    """The download metadata: the .meta.json when it is still there, else what batch.json recorded."""
    try:
        return atomic.read_json(layout.downloaded_meta(identifier))
    except FileNotFoundError:
        return {"identifier": identifier, **batch_doc}


def finalize_many(
    layout: Layout,
    paths: BatchPaths,
    documents: dict[str, dict[str, Any]],
    provenance: Callable[[str], Provenance],
    *,
    workers: int,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, str]:
    """Finalize each document (those with a 04 record) ``workers`` at a time; returns id -> outcome."""
    ready = sorted(i for i in documents if layout.completed_jsonl(i).exists() or is_finalized(layout, i))
    outcomes: dict[str, str] = {}
    events: list[dict] = []

    removed_from: set[Path] = set()

    def one(identifier: str) -> tuple[str, str, list[Path]]:
        info = download_info(layout, identifier, documents[identifier])
        return identifier, *finalize_document(layout, paths, identifier, info, provenance(identifier))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for identifier, outcome, removed in pool.map(one, ready):
            outcomes[identifier] = outcome
            removed_from.update(p.parent for p in removed)
            if outcome == "finalized":
                events.append(manifest.event("finalized", identifier=identifier, batch=paths.number))
            if len(events) >= 200:  # one fsynced append per group keeps the event log off the hot path
                manifest.append(layout.events, events)
                events = []
            progress(len(outcomes), len(ready))
    atomic.fsync_dirs(removed_from)  # the deletions are durable before anyone records the batch done
    manifest.append(layout.events, events)
    return outcomes
