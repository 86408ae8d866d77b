"""Consolidate OCR output into 05_processed, then delete the PDFs it replaces (DESIGN.md rule 1).

Per document: write <id>.ocr.json and <id>.metadata.json (temp file, fsync, rename), fsync the
folder, read both back and compare, and only then delete the PDF from the batch and 01_downloaded.
Killed at any instant, a document is either untouched, finalized with its PDF still present (the
rerun deletes it), or finalized and deleted. A full finalize quarantines the documents left without
a result (no_ocr_result), so the batch ends; a partial one leaves them in the batch.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import atomic, events, olmocr_format
from pipeline.layout import PENDING_LEGACY, BatchPaths, DocumentPaths, Layout, fanout_of
from pipeline.stages import bisect, integrity, split
from pipeline.stages.quarantine import quarantine, read_reasons

if TYPE_CHECKING:
    from pipeline.executors.base import Progress

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
        "finalized_at": events.now_iso(),
        "pipeline": PIPELINE_NAME,
    }


class VerificationError(RuntimeError):
    pass


def _output_whole(doc: DocumentPaths, identifier: str) -> bool:
    """Both 05 files exist and parse: the document's output is safe, its PDF may go."""
    try:
        meta = atomic.read_json(doc.processed_metadata)
        atomic.read_json(doc.processed_ocr)
    except (FileNotFoundError, ValueError):
        return False
    return meta.get("identifier") == identifier


def output_files(doc: DocumentPaths, identifier: str, download: dict[str, Any],
                 prov: Provenance) -> tuple[list[tuple[Path, bytes]], list[Path]]:
    """The document's two 05 files and their bytes, none when they are already complete, and the
    folders that gained an entry. Its folder is made here (one that was already there is tidied of
    temp files a killed attempt left); the caller writes the files (``atomic.begin_writes``) and
    syncs those folders and the files' own."""
    if _output_whole(doc, identifier):
        return [], []
    record = json.loads(doc.completed_jsonl.read_bytes().splitlines()[-1])
    changed = atomic.makedirs(doc.processed_dir, sync=False)
    if not changed:
        atomic.remove_stale_temps(doc.processed_dir)
    files = [(doc.processed_ocr, atomic.dumps_json(record)),
             (doc.processed_metadata, atomic.dumps_json(build_metadata(identifier, download, record, prov)))]
    return files, changed


def release_inputs(layout: Layout, paths: BatchPaths, doc: DocumentPaths, identifier: str,
                   legacy: bool) -> list[Path]:
    """Read the 05 files back, then delete the document's PDFs (``legacy``: a 02_ocr_pending may
    hold one too); returns what was deleted (folders not yet synced). Raises VerificationError,
    deleting nothing, when the output is not whole."""
    if not _output_whole(doc, identifier):
        raise VerificationError(f"{doc.processed_dir}: output did not read back whole; PDF kept")
    links = legacy_links(layout, paths, identifier) if legacy else []
    return atomic.remove_files([*links, paths.pdf(identifier), doc.downloaded_pdf, doc.downloaded_meta], sync=False)


def legacy_links(layout: Layout, paths: BatchPaths, identifier: str) -> list[Path]:
    """The document's file in a legacy 02_ocr_pending (flat or sharded) when it is the batch's PDF itself."""
    legacy = layout.base / PENDING_LEGACY
    if not legacy.is_dir():
        return []
    found = []
    for folder in (legacy, legacy / fanout_of(identifier, layout.fanout_width)):
        candidate = folder / f"{identifier}.pdf"
        try:
            if candidate not in found and os.path.samefile(candidate, paths.pdf(identifier)):
                found.append(candidate)
        except FileNotFoundError:
            continue
    return found


def download_info(doc: DocumentPaths, identifier: str, batch_doc: dict[str, Any]) -> dict[str, Any]:
    """The download metadata: the .meta.json when it is still there, else what batch.json recorded."""
    try:
        return atomic.read_json(doc.downloaded_meta)
    except FileNotFoundError:
        return {"identifier": identifier, **batch_doc}


GROUP = 64  # documents whose outputs are made durable with one sync before their PDFs go


def finalize_many(
    layout: Layout,
    paths: BatchPaths,
    documents: dict[str, dict[str, Any]],
    provenance: Callable[[str], Provenance],
    *,
    workers: int,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, str]:
    """Finalize each document that has a 04 record; returns id -> outcome ('finalized' or 'already').

    Per group of documents: write every output (``workers`` threads flush them), sync the folders
    they changed, then read each back and delete its PDFs. A group's deletions run while the next
    group's outputs are flushed. The deletions are synced before returning (the caller then records
    the batch as done). The work on each file runs in this thread, one after another: threads
    taking turns at the GIL for every file call cost more than the calls themselves.
    """
    docs = {i: layout.document(i) for i in documents}
    ready = sorted(i for i, doc in docs.items() if doc.completed_jsonl.exists() or _output_whole(doc, i))
    legacy = (layout.base / PENDING_LEGACY).is_dir()
    outcomes: dict[str, str] = {}
    removed_from: set[Path] = set()

    def release(group: list[str], written: dict[str, str]) -> None:
        for identifier in group:
            removed_from.update(p.parent for p in release_inputs(layout, paths, docs[identifier], identifier, legacy))
        outcomes.update(written)
        events.append(layout.events, [events.event("finalized", identifier=i, batch=paths.number)
                                      for i, outcome in written.items() if outcome == "finalized"])
        progress(len(outcomes), len(ready))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as flushers:
        previous: tuple[list[str], dict[str, str]] | None = None
        for start in range(0, len(ready), GROUP):
            group = ready[start:start + GROUP]
            files: list[tuple[Path, bytes]] = []
            folders: set[Path] = set()
            written: dict[str, str] = {}
            for identifier in group:
                doc = docs[identifier]
                outputs, changed = output_files(doc, identifier, download_info(doc, identifier, documents[identifier]),
                                                provenance(identifier))
                written[identifier] = "finalized" if outputs else "already"
                files += outputs
                folders.update(changed)
            pending = atomic.begin_writes(files, flushers)
            if previous:
                release(*previous)
            atomic.fsync_dirs(folders | {path.parent for path in pending.finish()})
            previous = (group, written)
        if previous:
            release(*previous)
    atomic.fsync_dirs(removed_from)
    return outcomes


def provenance_lookup(paths: BatchPaths, engine: str) -> Callable[[str], Provenance]:
    """identifier -> Provenance, from the chunk plan, retries, halves and done markers; ``engine``
    (the configured one) stands in for done markers that do not name theirs."""
    chunk_of: dict[str, int] = {}
    for chunk in bisect.all_chunks(paths):  # in index order: a later chunk that is done wins
        done = paths.done_marker(chunk["index"]).exists()
        for identifier in chunk["documents"]:
            if done or identifier not in chunk_of:
                chunk_of[identifier] = chunk["index"]
    markers: dict[int, dict[str, Any]] = {}

    def lookup(identifier: str) -> Provenance:
        index = chunk_of.get(identifier)
        if index is None:
            return Provenance(paths.number, None, None, None)
        if index not in markers:
            marker = paths.done_marker(index)
            markers[index] = atomic.read_json(marker) if marker.exists() else {}
        return Provenance(paths.number, index, markers[index].get("engine", engine), markers[index].get("finished"))

    return lookup


NO_RESULT = "no_ocr_result"


def quarantine_without_result(layout: Layout, paths: BatchPaths, identifiers: list[str],
                              lookup: Callable[[str], Provenance]) -> dict[str, dict[str, str]]:
    """Quarantine each document the OCR engine gave no record, also on retry, naming its chunk, the
    chunk's log and the engine's reason when the done marker has one; returns their reasons."""
    for identifier in identifiers:
        index = lookup(identifier).chunk
        where = f"chunk {index}, log {paths.chunk_log(index)}" if index is not None else "no chunk"
        failure = integrity.failure_of(paths, index, paths.pdf(identifier).name)
        why = f": {failure['error']}: {failure['message']}" if failure else ""
        quarantine(layout, identifier, [paths.pdf(identifier), layout.downloaded_pdf(identifier)],
                   NO_RESULT, f"the OCR engine produced no record, also on retry ({where}){why}",
                   also_remove=(layout.downloaded_meta(identifier),), batch=paths.number, chunk=index)
    return {i: {"reason": NO_RESULT} for i in identifiers}


def finalize_batch(layout: Layout, paths: BatchPaths, *, partial: bool, workers: int, engine: str,
                   progress: Progress) -> dict[str, Any]:
    """Finalize: every document with a result into 05_processed, its PDFs deleted; then
    finalize_report.json and, unless documents remain (``partial``: those without a result yet stay),
    finalized.json. Returns the summary.

    A partial finalize may run beside the batch's OCRBatch: it leaves as they are the documents a
    chunk still to run lists (``bisect.documents_in_flight``, read here, under the batch's Finalize
    lease its callers hold), so a job never finds its PDF gone, then splits the results there are
    and finalizes the rest that have one."""
    record = atomic.read_json(paths.batch_record)
    documents = record["documents"]
    hold = bisect.documents_in_flight(paths) if partial else frozenset()
    taken = {i: d for i, d in documents.items() if i not in hold}
    split_summary = split.split_documents(layout, paths, set(taken), workers=workers) if partial else None
    lookup = provenance_lookup(paths, engine)
    outcomes = finalize_many(layout, paths, taken, lookup, workers=workers,
                             progress=lambda done, total: progress(done, total, "documents finalized"))
    reasons = read_reasons(layout, [i for i in documents if i not in outcomes])
    remaining = sorted(i for i in documents if i not in outcomes and i not in reasons)
    if remaining and not partial:
        reasons.update(quarantine_without_result(layout, paths, remaining, lookup))
        remaining = []
    quarantined = {i: r["reason"] for i, r in sorted(reasons.items())}
    quarantined.update(record.get("quarantined", {}))
    finalized = sorted(outcomes)
    summary = {
        "batch": paths.number,
        "documents": len(documents),
        "finalized": len(finalized),
        "finalized_now": sum(1 for o in outcomes.values() if o == "finalized"),
        "pages": sum(documents[i]["pages"] for i in finalized),
        "quarantined": quarantined,
        "remaining": remaining,
        "partial": partial,
        "split": split_summary,
    }
    atomic.write_json(paths.finalize_report, {**summary, "time": events.now_iso()})
    if remaining:
        progress(len(finalized), len(documents),
                 f"partial: {len(remaining)} documents have no result yet and stay in {paths.dir}")
        return summary
    atomic.write_json(paths.finalized, {**summary, "finished_at": events.now_iso()})
    events.log_event(layout.events, "batch_finalized", batch=paths.number, finalized=len(finalized),
                     quarantined=len(quarantined))
    progress(len(documents), len(documents), f"batch {paths.number} finalized")
    return summary
