"""Batches: new ones made from waiting PDFs, old ones (made by the older scripts) adopted as they are."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import atomic, events, lease, listing, olmocr_format, pdf
from pipeline.layout import DOWNLOADED, PENDING_LEGACY, BatchPaths, Layout, fanout_of, pdfs_listed
from pipeline.stages.quarantine import quarantine

if TYPE_CHECKING:
    from pipeline.executors.base import Progress

STAGE_LOCKS = "locks"  # batch_NNNN/locks/<Stage>.lease
# The batch creators' lease: a hidden file beside the batch folders, so 03 holds only batch folders.
CREATE_LEASE = ".create.lease"


@contextmanager
def batch_lock(layout: Layout, lease_seconds: float = lease.DEFAULT_SECONDS,
               status: Callable[[str], None] | None = None) -> Iterator[None]:
    """One batch creator at a time per base_dir, so two batches never take the same document;
    ``status(message)`` says so before waiting for another."""
    path = layout.processing / CREATE_LEASE
    atomic.makedirs(path.parent)

    def waiting(holder: lease.Holder | None) -> None:
        if status is not None:
            status(f"waiting: another process makes a batch in {layout.base}{lease.held_by(holder)}")

    with lease.hold(path, lease_seconds, waiting=waiting) as held, lease.stop_when_lost(held, "CreateBatch"):
        yield


def stage_lease(paths: BatchPaths, stage: str) -> Path:
    return paths.dir / STAGE_LOCKS / f"{stage}.lease"


@contextmanager
def stage_lock(paths: BatchPaths, stage: str, waiting: Callable[[], None],
               lease_seconds: float = lease.DEFAULT_SECONDS) -> Iterator[lease.Lease]:
    """One process at a time runs ``stage`` of a batch; ``waiting()`` is called before waiting.

    luigid runs each task once, but not across its own restart (a crash forgets who runs what)
    nor for runs with --local-scheduler or on hosts that share base_dir without luigid. A lease
    file (pipeline/lease.py), not flock, which NFS does not honour reliably: a holder that dies
    leaves it to be taken over once it expires (at once by a process of the same host).
    """
    path = stage_lease(paths, stage)
    atomic.makedirs(path.parent)
    with lease.hold(path, lease_seconds, waiting=lambda _holder: waiting()) as held:
        yield held


def run_once(paths: BatchPaths, stage: str, complete: Callable[[], bool], run: Callable[[], None],
             progress: Progress, lease_seconds: float = lease.DEFAULT_SECONDS) -> None:
    """``run()`` under the batch's lease for ``stage``; nothing when ``complete()`` says another
    process completed the stage meanwhile (two sites after a luigid restart, local schedulers, or
    hosts sharing base_dir). A lease taken over while ``run()`` works raises lease.LeaseLost in it."""
    what = f"{stage} of batch {paths.number}"

    def waiting() -> None:
        progress(0, 1, f"waiting: another process runs {what}{lease.held_by(lease.read(stage_lease(paths, stage)))}")

    with stage_lock(paths, stage, waiting, lease_seconds) as held, lease.stop_when_lost(held, what):
        if complete():
            progress(1, 1, f"{what} was completed by another process")
            return
        run()


def _identifiers(record: dict) -> frozenset[str]:
    return frozenset(record["documents"])


def claimed_identifiers(layout: Layout) -> set[str]:
    """Identifiers some batch already holds (listed in its batch.json, or lying in its folder)."""
    claimed: set[str] = set()
    for number in layout.batch_numbers():
        paths = BatchPaths(layout.batch_dir(number))
        try:  # read again only when it changed: B batches do not make B x B readings
            claimed.update(listing.read_json(paths.batch_record, _identifiers))
        except FileNotFoundError:
            pass
        claimed.update(i for i, _ in paths.pdfs())
    return claimed


def waiting_documents(layout: Layout) -> list[tuple[str, Path]]:
    """Downloaded PDFs (with their .meta.json, or from a legacy 02_ocr_pending) not yet in a batch,
    as (identifier, path), sorted. Each folder's part is worked out once per listing of it: every
    CreateBatch asks, and at 100,000 waiting documents doing it afresh cost most of a second each."""
    claimed = claimed_identifiers(layout)
    downloaded = os.path.join(str(layout.base), DOWNLOADED)
    complete = _complete_downloads(downloaded, layout.fanout_width)
    found: list[tuple[str, Path]] = []
    for entries in listing.walk(downloaded):
        found += entries.derived(complete)
    for entries in listing.walk(layout.base / PENDING_LEGACY):
        found += entries.derived(pdfs_listed)
    return sorted(item for item in found if item[0] not in claimed)


@functools.lru_cache(maxsize=64)  # base_dirs of one process: one, or a few in tests
def _complete_downloads(downloaded: str, width: int) -> Callable[[listing.Entries], list[tuple[str, Path]]]:
    """For the 01 of one base_dir: the PDFs of a listed folder that are waiting. One in its place
    (01/<ab>/<id>.pdf) waits once its .meta.json is there (before, it is still being downloaded);
    one elsewhere in 01 waits as it is. The same function each time, so listings keep its result."""

    def complete(entries: listing.Entries) -> list[tuple[str, Path]]:
        found = []
        for identifier, path in pdfs_listed(entries):
            in_place = (path.name == f"{identifier}.pdf" and entries.folder ==
                        os.path.join(downloaded, fanout_of(identifier, width)).rstrip(os.sep))
            if not in_place or f"{identifier}.meta.json" in entries.files:
                found.append((identifier, path))
        return found

    return complete


def describe(layout: Layout, identifier: str, path: Path, origin: str) -> dict:
    """Document facts for batch.json: from the download's .meta.json, else measured now."""
    meta_path = layout.downloaded_meta(identifier)
    if meta_path.exists():
        meta = atomic.read_json(meta_path)
        if "pages" in meta:
            return {"pages": meta["pages"], "size": meta["size"], "sha256": meta["sha256"], "source": meta["source"]}
    count = pdf.count_pages(path)
    return {"pages": count.pages, "size": path.stat().st_size, "sha256": atomic.sha256_file(path), "source": origin}


def _sources(layout: Layout, identifier: str, *paths: Path) -> list[Path]:
    return [*paths, layout.downloaded_pdf(identifier)]


def create_batch(layout: Layout, batch: str, *, max_documents: int, max_pages: int,
                 lease_seconds: float = lease.DEFAULT_SECONDS, status: Callable[[str], None] | None = None) -> dict:
    """Make batch ``batch`` from waiting documents, or adopt its folder when it already has PDFs."""
    paths = BatchPaths(layout.batch_dir(batch))
    with batch_lock(layout, lease_seconds, status):
        if paths.batch_record.exists():
            return atomic.read_json(paths.batch_record)
        adopted = bool(paths.pdfs()) or paths.results.is_dir()
        candidates = paths.pdfs() if adopted else waiting_documents(layout)
        documents: dict[str, dict] = {}
        quarantined: dict[str, str] = {}
        total_pages = 0
        for identifier, path in candidates:
            if len(documents) >= max_documents and not adopted:
                break
            origin = f"adopted from {paths.dir.name}" if adopted else str(path)
            try:
                info = describe(layout, identifier, path, origin)
            except FileNotFoundError:
                continue  # gone since 01 was listed (see pipeline/listing.py)
            except pdf.PdfError as exc:
                meta_path = layout.downloaded_meta(identifier)
                quarantine(layout, identifier, _sources(layout, identifier, path), exc.reason, str(exc),
                           also_remove=(meta_path,), stage="create_batch", batch=batch)
                quarantined[identifier] = exc.reason
                continue
            if not adopted and documents and total_pages + info["pages"] > max_pages:
                break
            if not adopted:
                try:
                    method = atomic.link_or_copy(path, paths.pdf(identifier), sync_dir=False)
                except FileNotFoundError:
                    continue  # gone since 01 was listed
                if method == "copy":
                    atomic.remove_files([path])  # another filesystem: a move, never two live copies
            documents[identifier] = info
            total_pages += info["pages"]
        if documents and not adopted:
            atomic.fsync_dir(paths.dir)  # the links are durable before batch.json names them
        record = {
            "batch": batch,
            "created_at": events.now_iso(),
            "adopted": adopted,
            "documents": documents,
            "quarantined": quarantined,
            "pages": total_pages,
        }
        atomic.write_json(paths.batch_record, record)
    events.log_event(layout.events, "batch_created", batch=batch, documents=len(documents),
                       pages=total_pages, adopted=adopted)
    return record


def next_batch_number(layout: Layout) -> str:
    """One more than the highest batch number present: numbers are never reused."""
    numbers = layout.batch_numbers()
    return f"{int(numbers[-1]) + 1:04d}" if numbers else "0001"


def open_batches(layout: Layout) -> list[str]:
    """Batches present and not finalized, in order."""
    return [b for b in layout.batch_numbers() if not BatchPaths(layout.batch_dir(b)).finalized.exists()]


def batches_to_open(layout: Layout, open_now: int, max_open: int, batch_size: int,
                    lease_seconds: float = lease.DEFAULT_SECONDS,
                    status: Callable[[str], None] | None = None) -> list[str]:
    """The numbers of the batches to make now, while fewer than ``max_open`` are open: one per full
    ``batch_size`` of waiting documents, or one for fewer. The rest (a remainder, or what the page
    limit left) is found by the next call: a batch planned for a remainder could come out empty once
    damaged documents among the waiting ones are quarantined. One look at 01 for all of them, so
    ProcessAll can ask for them at once.

    Counted under the batch creators' lease: a count taken before another host's batch claimed its
    documents, with a first number taken after, would plan one batch too many, made empty."""
    if open_now >= max_open:
        return []
    with batch_lock(layout, lease_seconds, status):
        waiting = len(waiting_documents(layout))
        first = int(next_batch_number(layout))
    count = min(max_open - open_now, max(1, waiting // max(1, batch_size))) if waiting else 0
    return [f"{first + n:04d}" for n in range(count)]


def existing_results(paths: BatchPaths) -> set[str]:
    """Identifiers that already have a record in the batch's results (older scripts' output too)."""
    if not paths.results.is_dir():
        return set()
    return olmocr_format.identifiers_in(olmocr_format.result_files(paths.results))

