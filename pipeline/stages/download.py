"""Fetch PDFs into 01_downloaded/<ab>/<id>.pdf with a .meta.json, from a folder or a list of URLs.

Each document is fetched into a temp file beside its destination, checked (a bad file goes to
quarantine, never into 01), then renamed into place; the .meta.json is written last and marks the
download complete. A document already downloaded, finalized or quarantined is not fetched again.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import gc
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import atomic, events, faults, lease, listing, pdf
from pipeline.layout import DOWNLOADED, PROCESSED, InvalidIdentifier, Layout, identifier_of
from pipeline.stages import batches
from pipeline.stages.quarantine import quarantine

if TYPE_CHECKING:
    from pipeline.executors.base import Progress


SKIPPED_PROGRESS_EVERY = 1000  # documents already here between progress reports


@dataclass(slots=True)  # not frozen: a source of millions of documents builds one per document
class SourceItem:
    identifier: str
    uri: str  # what the metadata records (credentials and query strings removed)
    fetch: Callable[[Path], None]  # writes the document's bytes to the given open path


@dataclass
class DownloadSummary:
    fetched: int = 0
    skipped: int = 0
    quarantined: int = 0
    rejected: int = 0
    failed: int = 0
    paused: str = ""


def redact(uri: str) -> str:
    """A URI safe for logs and manifests: no user:password, no query string (signed tokens)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _copy_from(path: str | Path) -> Callable[[Path], None]:
    def fetch(target: Path) -> None:
        shutil.copyfile(path, target)
    return fetch


def _http_get(url: str, timeout: float) -> Callable[[Path], None]:
    def fetch(target: Path) -> None:
        headers = {"User-Agent": "ocr-pipeline"}
        parts = urllib.parse.urlsplit(url)
        plain = url
        if parts.username is not None:  # urllib cannot fetch user:password@host: send them as Basic auth
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
            plain = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        request = urllib.request.Request(plain, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except Exception as exc:  # some messages quote the URL (http.client.InvalidURL): no secret in them
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the local disk, not the server: reported as such by fetch_checked
            message = str(exc)
            for secret in (parts.query, parts.password, urllib.parse.unquote(parts.password or "")):
                message = message.replace(secret, "***") if secret else message
            raise OSError(f"{type(exc).__name__}: {message}") from None
    return fetch


def _pdf_files(folder: str) -> Iterator[tuple[str, bool]]:
    """(path, is a symlink) of the files (or links to files) named *.pdf under ``folder``; symlinked
    folders are not entered. One scandir per folder: no stat per file but for symlinks."""
    with os.scandir(folder) as scan:
        entries = list(scan)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _pdf_files(entry.path)
        elif entry.name[-4:].lower() == ".pdf" and entry.is_file():
            yield entry.path, entry.is_symlink()


def iter_folder(folder: Path) -> Iterator[SourceItem | InvalidIdentifier]:
    root = str(Path(folder).resolve())
    # In path order (folder by folder, as sorted Paths): a separator sorts before any character.
    found = sorted(_pdf_files(root), key=lambda item: item[0].replace(os.sep, "\0"))
    for path, link in found:
        try:
            yield SourceItem(identifier_of(path.rpartition(os.sep)[2]), os.path.realpath(path) if link else path,
                             _copy_from(path))
        except InvalidIdentifier as exc:
            yield exc


def iter_url_list(url_list: Path, timeout: float) -> Iterator[SourceItem | InvalidIdentifier]:
    for line in Path(url_list).read_text(encoding="utf-8").splitlines():
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            yield InvalidIdentifier(f"{redact(url)!r} is not an http(s) URL")
            continue
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        try:
            yield SourceItem(identifier_of(name), redact(url), _http_get(url, timeout))
        except InvalidIdentifier as exc:
            yield exc


def iter_source(source: str, timeout: float = 60.0) -> Iterator[SourceItem | InvalidIdentifier]:
    """Items of a source: a local folder, a text file of http(s) URLs, or an s3:// prefix."""
    if source.startswith("s3://"):
        from pipeline.cloud import s3

        yield from s3.iter_download_items(source)
        return
    path = Path(source)
    if path.is_dir():
        yield from iter_folder(path)
    elif path.is_file():
        yield from iter_url_list(path, timeout)
    else:
        raise FileNotFoundError(f"download source {source!r} is neither a folder, a URL list nor s3://")


class Present:
    """The documents a download pass finds already here, downloaded (a .meta.json in 01) or finalized
    (a folder in 05), from one listing per fan-out folder: a rerun over a large source asks this of
    every document, and the listings cost far less than stats. Not in it: the answer is
    fetch_checked's (quarantined documents: it tidies their leftovers)."""

    def __init__(self, layout: Layout) -> None:
        base = os.fspath(layout.base)
        # 01 before 05, the way documents move (Finalize writes 05 before it deletes from 01): a
        # document finalized between the two listings is still seen.
        self.downloaded = {name[:-len(".meta.json")] for folder in _fanouts(os.path.join(base, DOWNLOADED),
                                                                            layout.fanout_width)
                           for name in listing.entries(folder).files if name.endswith(".meta.json")}
        # A 05 folder is made only by Finalize, for a document of one of its batches: one still without
        # its metadata (Finalize killed midway) is that batch's to finish, never to be fetched again.
        self.finalized = {name for folder in _fanouts(os.path.join(base, PROCESSED), layout.fanout_width)
                          for name in listing.entries(folder).folders}

    def __contains__(self, identifier: object) -> bool:
        return identifier in self.downloaded or identifier in self.finalized


def _fanouts(stage: str, width: int) -> list[str]:
    """The <ab> folders of a stage (the stage itself when fan-out is off)."""
    return [os.path.join(stage, name) for name in listing.entries(stage).folders] if width else [stage]


@dataclass(slots=True)
class Fetched:
    """A document fetched and checked, its bytes durable in ``part`` beside their place in 01."""

    item: SourceItem
    part: Path
    meta: dict[str, Any]


def part_prefix(identifier: str) -> str:
    """How the temp files of a document's PDF in 01 begin (they end with .part)."""
    return f".{identifier}."


def fetch_checked(layout: Layout, item: SourceItem) -> Fetched | str:
    """Fetch one document into a temp file beside its place in 01 (fsynced) and check it; returns
    what ``commit`` needs, or 'skipped' (already downloaded, finalized or quarantined) or
    'quarantined' (not a sound PDF). ``prepare_folders`` has made its folder and removed the
    leftovers of its earlier attempts."""
    dest = layout.downloaded_pdf(item.identifier)
    prefix = part_prefix(item.identifier)
    if layout.is_known(item.identifier):
        if layout.quarantine_reason(item.identifier).exists():
            # quarantined by a run killed before it removed its temp file
            atomic.remove_leftovers(dest.parent, prefix, ".part")
        return "skipped"
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=prefix, suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with atomic.reporting_disk_full(dest):
            item.fetch(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        meta: dict[str, Any] = {
            "identifier": item.identifier,
            "source": item.uri,
            "size": tmp.stat().st_size,
            "sha256": atomic.sha256_file(tmp),
            "downloaded_at": events.now_iso(),
        }
        try:
            count = pdf.count_pages(tmp)
        except pdf.PdfError as exc:
            quarantine(layout, item.identifier, [tmp], exc.reason, str(exc), stage="download", download=meta)
            return "quarantined"
        meta.update(pages=count.pages, page_count_method=count.method, encrypted=count.encrypted)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Fetched(item, tmp, meta)


def commit(layout: Layout, fetched: list[Fetched], flushers: Executor) -> list[Path]:
    """Move fetched documents into 01: every PDF renamed into place and their folders synced once
    (each PDF durable before any .meta.json), then the .meta.json files written, which mark the
    downloads complete. Returns the folders of those (not synced: until then a power cut can only
    make a document look not yet downloaded, so it is fetched again)."""
    renamed = 0
    try:
        for done in fetched:
            dest = layout.downloaded_pdf(done.item.identifier)
            faults.point("download.rename.before", dest)
            os.replace(done.part, dest)
            renamed += 1
    finally:
        for done in fetched[renamed:]:
            done.part.unlink(missing_ok=True)
    atomic.fsync_dirs({layout.downloaded_pdf(done.item.identifier).parent for done in fetched})
    written = atomic.write_many([(layout.downloaded_meta(done.item.identifier), atomic.dumps_json(done.meta))
                                 for done in fetched], flushers)
    return [path.parent for path in written]


def prepare_folders(layout: Layout, identifiers: Iterable[str]) -> list[Path]:
    """fetch_checked's preparation for many documents at once: their 01 folders made and the temp files
    of killed earlier attempts (the PDF's .part, the .meta.json's) removed, one listing per folder (a
    folder of thousands of waiting documents is not listed again for each). Returns the folders that
    gained an entry (not synced)."""
    temps: list[atomic.TempNames] = []
    for identifier in identifiers:
        meta = layout.downloaded_meta(identifier)
        temps += [(meta.parent, part_prefix(identifier), ".part"), atomic.temp_names(meta)]
    return atomic.prepare(temps)


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


def fetch_unless_full(layout: Layout, item: SourceItem, min_free_gb: float) -> Fetched | str:
    """fetch_checked of a prepared document (``prepare_folders``), or 'paused' when the free space is
    below the threshold as this download starts: the pool runs several downloads at once, and those
    queued behind them must not fill the disk."""
    if free_gb(layout.base) < min_free_gb:
        return "paused"
    return fetch_checked(layout, item)


COMMIT_GROUP = 64  # fetched documents moved into 01 with one folder sync


def download_all(
    layout: Layout,
    items: Iterable[SourceItem | InvalidIdentifier],
    *,
    workers: int,
    max_waiting: int,
    waiting_now: int,
    min_free_gb: float,
    progress: Callable[[DownloadSummary], None] = lambda s: None,
) -> DownloadSummary:
    """Fetch every new item, ``workers`` at a time, pausing when backpressure says so."""
    summary = DownloadSummary()
    atomic.makedirs(layout.base)
    records: list[dict] = []
    unsynced: set[Path] = set()  # folders of .meta.json files written, synced together at the end
    disk_full: list[atomic.DiskFull] = []
    low_space = f"less than {min_free_gb} GB free on {layout.base} ([backpressure] min_free_gb)"
    present = Present(layout)
    items = list(items)
    named = [i.identifier for i in items if not isinstance(i, InvalidIdentifier)]
    here = {identifier for identifier in named if identifier in present}
    unsynced.update(prepare_folders(layout, (identifier for identifier in named if identifier not in here)))

    fetched: list[Fetched] = []  # checked, not yet moved into 01

    def move_fetched(flushers: Executor) -> None:
        group = fetched[:]
        fetched.clear()
        try:
            unsynced.update(commit(layout, group, flushers))
        except atomic.DiskFull as exc:  # every other document would fail the same way: stop
            disk_full.append(exc)
            summary.fetched -= len(group)
            records.extend(events.event("download_failed", identifier=done.item.identifier, source=done.item.uri,
                                        message=str(exc)[:500]) for done in group)
            return
        records.extend(events.event("downloaded", identifier=done.item.identifier, source=done.item.uri)
                       for done in group)

    def settle(item: SourceItem, future: Future[Fetched | str], flushers: Executor) -> None:
        try:
            outcome = future.result()
        except atomic.DiskFull as exc:
            disk_full.append(exc)
            records.append(events.event("download_failed", identifier=item.identifier, source=item.uri,
                                         message=str(exc)[:500]))
            return
        except Exception as exc:  # one unreachable document must not stop the others
            summary.failed += 1
            records.append(events.event("download_failed", identifier=item.identifier, source=item.uri,
                                         message=str(exc)[:500]))
            print(f"download: {item.uri}: failed ({exc}); it is fetched again on the next run", flush=True)
            progress(summary)
            return
        if isinstance(outcome, Fetched):
            summary.fetched += 1
            fetched.append(outcome)
            if len(fetched) >= COMMIT_GROUP:
                move_fetched(flushers)
        elif outcome == "quarantined":
            summary.quarantined += 1
        elif outcome == "paused":
            summary.paused = low_space
        else:
            summary.skipped += 1
        progress(summary)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as flushers:
        pending: list[tuple[SourceItem, Future[Fetched | str]]] = []
        for item in items:
            if isinstance(item, InvalidIdentifier):
                summary.rejected += 1
                records.append(events.event("rejected", message=str(item)))
                print(f"download: skipped: {item}", flush=True)
                continue
            if disk_full or summary.paused:
                break
            if item.identifier in here:  # a rerun over a large source: no thread per document
                summary.skipped += 1
                if summary.skipped % SKIPPED_PROGRESS_EVERY == 0:
                    progress(summary)
                continue
            if waiting_now + summary.fetched + len(pending) >= max_waiting:
                summary.paused = f"{max_waiting} documents are waiting for OCR ([backpressure] max_waiting_documents)"
                break
            if free_gb(layout.base) < min_free_gb:
                summary.paused = low_space
                break
            pending.append((item, pool.submit(fetch_unless_full, layout, item, min_free_gb)))
            if len(pending) >= workers * 4:
                item0, future = pending.pop(0)
                settle(item0, future, flushers)
        for item, future in pending:
            settle(item, future, flushers)
        if fetched:
            move_fetched(flushers)
    atomic.fsync_dirs(unsynced)
    if summary.paused:
        records.append(events.event("backpressure", message=summary.paused))
    if disk_full:
        with contextlib.suppress(OSError):  # the log may not fit either; the error below still says it all
            events.append(layout.events, records)
        raise disk_full[0]
    events.append(layout.events, records)
    return summary


def describe(summary: DownloadSummary) -> str:
    """The terminal and visualizer line of a finished download pass."""
    return (f"download: {summary.fetched} fetched, {summary.skipped} already present, "
            f"{summary.quarantined} quarantined, {summary.rejected} rejected names, "
            f"{summary.failed} failed{'; paused: ' + summary.paused if summary.paused else ''}")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused: listing a source of a million documents makes several
    million objects (none in a reference cycle), and each full collection meanwhile would go over all
    of those made so far, doubling the listing's time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


DOWNLOAD_LEASE = "download.lease"  # in _manifests: one download pass at a time per base_dir


@contextlib.contextmanager
def download_lock(layout: Layout, lease_seconds: float, status: Callable[[str], None]) -> Iterator[None]:
    """One download pass at a time into a base_dir, across hosts sharing it without luigid: two passes
    at once would fetch the same new documents twice, and each pass's preparation removes the temp
    files of the documents it is about to fetch, which may be the other's live downloads. A lease
    file (pipeline/lease.py, as for the batches' stages); the pass that waits then finds what the
    other fetched already present."""
    path = layout.manifests / DOWNLOAD_LEASE
    atomic.makedirs(path.parent)

    def waiting(holder: lease.Holder | None) -> None:
        message = f"waiting: another process downloads into {layout.base}{lease.held_by(holder)}"
        print(f"download: {message}", flush=True)
        status(message)

    with lease.hold(path, lease_seconds, waiting=waiting) as held, lease.stop_when_lost(held, "Download"):
        yield


def download_pass(layout: Layout, source: str, record: Path, *, timeout: float, workers: int, max_waiting: int,
                  min_free_gb: float, progress: Progress, status: Callable[[str], None],
                  lease_seconds: float = lease.DEFAULT_SECONDS) -> DownloadSummary:
    """Download: one pass over ``source`` (see download_all) under the base_dir's download lease; its
    summary is written to ``record``."""
    if not source:
        raise ValueError("no download source: set [download] source in luigi.cfg or pass --source")
    with download_lock(layout, lease_seconds, status):
        return _download_pass(layout, source, record, timeout=timeout, workers=workers, max_waiting=max_waiting,
                              min_free_gb=min_free_gb, progress=progress, status=status)


def _download_pass(layout: Layout, source: str, record: Path, *, timeout: float, workers: int, max_waiting: int,
                   min_free_gb: float, progress: Progress, status: Callable[[str], None]) -> DownloadSummary:
    waiting = len(batches.waiting_documents(layout))
    status(f"listing {redact(source)}")
    with _collector_paused():
        items = list(iter_source(source, timeout))

    def counted(s: DownloadSummary) -> None:
        done = s.rejected + s.fetched + s.skipped + s.quarantined + s.failed
        progress(done, len(items), f"{s.fetched} fetched, {s.skipped} already present, "
                                   f"{s.quarantined} quarantined, {s.failed} failed")

    summary = download_all(layout, items, workers=workers, max_waiting=max_waiting, waiting_now=waiting,
                           min_free_gb=min_free_gb, progress=counted)
    atomic.write_json(record, {"source": redact(source), **vars(summary)})
    progress(1, 1, describe(summary))
    return summary
