"""Page counts of every PDF under a prefix, without staging files: the master CSV ``key,size,pages,error``.

S3 objects are read with ranged GETs of just the tail and the objects that lead to
/Root/Pages/Count. Parts of ``chunk_size`` keys are written beside the output as they finish,
after a snapshot of the listing, so a rerun resumes at the missing parts.
"""
from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import pdf
from pipeline.cloud import Progress, no_progress, s3

MASTER_COLUMNS = ("key", "size", "pages", "error")
PART_COLUMNS = (*MASTER_COLUMNS, "method", "bytes_fetched", "requests")
LISTING_COLUMNS = ("key", "size", "etag")


def csv_bytes(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def list_documents(storage: s3.Storage, source: str, suffix: str) -> list[s3.Listed]:
    """Objects under ``source`` whose name ends in ``suffix`` (any case; '' = all), in key order."""
    return [
        item for item in storage.list(s3.folder(source))
        if not item.name.endswith("/") and item.name.lower().endswith(suffix.lower())
    ]


def listing_bytes(items: list[s3.Listed]) -> bytes:
    return csv_bytes(({"key": i.uri, "size": i.size, "etag": i.etag} for i in items), LISTING_COLUMNS)


def parse_listing(data: bytes) -> list[s3.Listed]:
    return [s3.Listed(r["key"], "", int(r["size"]), r["etag"]) for r in csv_rows(data)]


def parts_folder(output: str) -> str:
    """Where CountPages keeps the listing snapshot and its parts: beside the master CSV."""
    stem = output[:-4] if output.lower().endswith(".csv") else output
    return stem + "_parts"


def part_ranges(total: int, chunk_size: int) -> list[tuple[int, int]]:
    if chunk_size < 1:
        raise ValueError("--chunk-size must be at least 1")
    return [(start, min(total, start + chunk_size)) for start in range(0, total, chunk_size)]


def part_name(start: int, end: int) -> str:
    # The range in the name: a rerun with another --chunk-size never mistakes a part for its own.
    return f"part_{start:09d}_{end:09d}.csv"


@dataclass
class CountRow:
    key: str
    size: int
    pages: int | None = None
    error: str = ""
    method: str = ""
    bytes_fetched: int = 0
    requests: int = 0


def count_document(storage: s3.Storage, item: s3.Listed, block_size: int = 4096) -> CountRow:
    """Count one document's pages; bad files get an error, S3 failures (after retries) raise S3Error."""
    row = CountRow(item.uri, item.size)
    source: pdf.FileSource | s3.RangedSource | None = None
    try:
        if s3.is_s3(item.uri):
            bucket, key = s3.split(item.uri)
            source = s3.RangedSource(storage.client, bucket, key, item.size, etag=item.etag, block_size=block_size)
            result = pdf.count_source(source)
        else:
            source = pdf.FileSource(item.uri)
            result = pdf.count_source(source, Path(item.uri))
        row.pages, row.method = result.pages, result.method
    except pdf.PdfError as exc:
        row.pages, row.error = exc.pages, f"{exc.reason}: {exc}"  # a locked file keeps its count
    except FileNotFoundError:
        row.error = "missing: deleted after it was listed"
    except s3.S3Error as exc:
        if exc.code in ("NoSuchKey", "404"):
            row.error = "missing: deleted after it was listed"
        elif exc.code in ("PreconditionFailed", "412"):
            row.error = "changed: replaced after it was listed; delete the parts folder and rerun"
        else:
            raise
    finally:
        if isinstance(source, s3.RangedSource):
            row.bytes_fetched, row.requests = source.bytes_fetched, source.requests
            source.close()
        elif source is not None:
            row.bytes_fetched = source.bytes_read
            source.close()
    return row


def count_documents(
    pool: ThreadPoolExecutor,
    storage: s3.Storage,
    items: list[s3.Listed],
    block_size: int,
    on_progress: Callable[[int], None] = lambda finished: None,
    interval: float = 2.0,
) -> list[CountRow]:
    """Rows in ``items`` order; the first S3 failure cancels the rest and is raised.

    ``on_progress(finished)`` runs in the calling thread (Luigi's status calls are not thread-safe).
    """
    futures = [pool.submit(count_document, storage, item, block_size) for item in items]
    pending: set[Future[CountRow]] = set(futures)
    while pending:
        finished, pending = wait(pending, timeout=interval, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for future in pending:
                future.cancel()
            raise failed[0].exception()  # type: ignore[misc]
        on_progress(len(futures) - len(pending))
    return [f.result() for f in futures]


def part_bytes(rows: list[CountRow]) -> bytes:
    return csv_bytes((asdict(r) for r in rows), PART_COLUMNS)


def master_bytes(parts: list[bytes]) -> bytes:
    """The master CSV: every part's rows in order, ``key,size,pages,error`` only."""
    return csv_bytes((row for part in parts for row in csv_rows(part)), MASTER_COLUMNS)


@dataclass
class CountStats:
    """What one count_pages run did: documents in the listing, and this run's reads."""

    documents: int
    parts: int
    counted: int  # documents counted by this run (the others were in parts already written)
    bytes_fetched: int
    requests: int
    size: int  # bytes of the documents this run counted
    seconds: float


def count_pages(
    storage: s3.Storage,
    source: str,
    output: str,
    *,
    max_workers: int = 32,
    chunk_size: int = 2000,
    suffix: str = ".pdf",
    block_size: int = 4096,
    progress: Progress = no_progress,
) -> CountStats:
    """Write the master CSV ``output`` for every document under ``source``, resuming at missing parts.

    The listing is snapshotted first (``listing.csv`` in the parts folder), so a rerun counts the
    same documents in the same parts, and only the parts not yet written.
    """
    parts = parts_folder(output)
    listing_uri = s3.join(parts, "listing.csv")
    snapshot = storage.read_optional(listing_uri)
    if snapshot is None:
        progress(0, f"listing {source}", force=True)
        items = list_documents(storage, source, suffix)
        storage.write_bytes(listing_uri, listing_bytes(items))
    else:
        items = parse_listing(snapshot)
    ranges = part_ranges(len(items), chunk_size)
    existing = storage.names(s3.folder(parts))
    missing = [r for r in ranges if part_name(*r) not in existing]
    total = len(items)
    finished = total - sum(end - start for start, end in missing)
    progress(100 * finished / max(1, total),
             f"{total:,} documents in {len(ranges)} parts, {len(missing)} to count", force=True)
    started, already = time.monotonic(), finished
    fetched = requests = size = 0

    def report(done: int) -> None:
        rate = (finished + done - already) / max(1e-9, time.monotonic() - started)
        progress(100 * (finished + done) / max(1, total),
                 f"{finished + done:,}/{total:,} documents, {rate:,.0f}/s, {fetched:,} bytes fetched")

    written: dict[tuple[int, int], bytes] = {}
    with ThreadPoolExecutor(max_workers, thread_name_prefix="count") as pool:
        for start, end in missing:
            rows = count_documents(pool, storage, items[start:end], block_size, report)
            written[start, end] = part_bytes(rows)
            storage.write_bytes(s3.join(parts, part_name(start, end)), written[start, end])
            finished += end - start
            fetched += sum(r.bytes_fetched for r in rows)
            requests += sum(r.requests for r in rows)
            size += sum(r.size for r in rows)
            report(0)
        master = list(pool.map(lambda r: written.get(r) or storage.read_bytes(s3.join(parts, part_name(*r))), ranges))
    storage.write_bytes(output, master_bytes(master))
    seconds = time.monotonic() - started
    share = f" ({100 * fetched / size:.2f}% of {size:,})" if size else ""
    progress(100, f"{total:,} documents counted; this run fetched {fetched:,} bytes{share} "
                  f"in {requests:,} requests, {seconds:.1f} s", force=True)
    return CountStats(total, len(ranges), finished - already, fetched, requests, size, seconds)
