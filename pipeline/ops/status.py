"""The operator's view of one base_dir: documents, pages and disk per stage, open batches and their
chunks, throughput, the time to finish the backlog, and the problems that need a person.

``python -m pipeline status [--json]`` and ``luigi --module pipeline Status`` print it. It must stay
fast on a base_dir of millions of documents, so it counts directory entries (os.scandir) and reads
only a few records per batch:

- exact (counted files): documents in 01_downloaded (PDFs not held by an open batch), PDFs in each
  open batch folder, 04_ocr_completed and 05_processed documents, quarantined documents, disk used
  per stage (st_blocks; a PDF hard-linked into 01 and its batch counts once, in 01), free bytes and
  inodes (os.statvfs). 04, 05 and quarantine are counted per fan-out folder and kept in
  _manifests/status_cache.json, keyed by the folder's mtime: only folders that changed since the
  last Status are listed again (the first Status on a large base_dir takes longer);
- from records: pages of waiting documents (their .meta.json: 01 is bounded by backpressure),
  documents and pages of open batches (batch.json), pages in 05 (each batch's finalized.json or
  finalize_report.json), pages in 04 (those plus the 04 documents of open batches), quarantine
  reasons and pages (each .reason.json), chunks (chunks.json, retries, bisect.json, done markers);
- from the event log: failed attempts, SLURM submissions, failures of batch tasks, last progress.
  Running and pending chunks: on SLURM the state of each chunk's last job (one sacct call); with
  the local executor a chunk runs while an OCRBatch of its batch holds its lease (on any host) and
  the chunk's log was written after its last failed attempt;
- throughput from _manifests/metrics.ndjson: pages of the chunks whose job ended (COMPLETED) within
  the last hour, day and week, divided by the window's hours (or by the hours since the first
  recorded chunk began, when the site is younger than the window). The time to finish is the backlog's
  pages (chunks of open batches not done, unplanned batches, waiting documents) at the last day's
  rate, or the last week's when the day saw none.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import atomic, events, lease
from pipeline.executors.records import attempts, completed_chunks
from pipeline.executors.slurm.client import SlurmClient
from pipeline.executors.slurm.parse import SlurmError, task_key
from pipeline.layout import (
    DOWNLOADED,
    MANIFESTS,
    OCR_COMPLETED,
    PENDING_LEGACY,
    PROCESSED,
    PROCESSING,
    QUARANTINE,
    BatchPaths,
    Layout,
    fanout_of,
)
from pipeline.stages import batches, bisect

FAILED_EVENT = events.BATCH_FAILED_EVENT  # a batch stage (OCRBatch, SplitResults, Finalize, ...) raised
PROGRESS_EVENTS = events.PROGRESS_EVENTS
WINDOWS = {"hour": 1, "day": 24, "week": 168}


class NeedsAPerson(RuntimeError):
    """The Status task's failure: the one line says what is wrong and what to do."""


@dataclass(frozen=True)
class Thresholds:
    """When a number needs a person ([status] in luigi.cfg)."""

    disk_percent: float = 90.0    # bytes or inodes used on base_dir's volume above this
    stalled_hours: float = 6.0    # no progress for this long while work waits
    stale_job_hours: float = 24.0  # a job (or local chunk) pending or running this long


def record_failure(layout: Layout, batch: str, task: str, exception: BaseException) -> None:
    """Log that a batch stage failed, so Status shows the batch as failed until it moves again."""
    message = " ".join(f"{type(exception).__name__}: {exception}".split())[:500]
    events.log_event(layout.events, FAILED_EVENT, batch=batch, task=task, message=message)


# --- walking the stage folders ------------------------------------------------------------------

@dataclass
class _Usage:
    files: int = 0
    bytes: int = 0


class _Walker:
    """Disk used per stage (st_blocks), each inode once."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    def add(self, entry: os.DirEntry, usage: _Usage) -> None:
        info = entry.stat(follow_symlinks=False)
        if info.st_nlink > 1:
            key = (info.st_dev, info.st_ino)
            if key in self.seen:
                return
            self.seen.add(key)
        usage.files += 1
        usage.bytes += info.st_blocks * 512

    def walk(self, root: str, usage: _Usage) -> None:
        """Every file under ``root`` into ``usage`` (no symlink is followed)."""
        try:
            entries = list(os.scandir(root))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                self.walk(entry.path, usage)
            else:
                self.add(entry, usage)


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fanout_folders(root: str) -> list[str]:
    """The <ab> folders of a stage and the stage itself (fan-out off, or files left at its top)."""
    return [root, *(e.path for e in _entries(root) if e.is_dir(follow_symlinks=False))]


def _read(path: str | Path) -> Any:
    """A JSON record, or None when it is missing or unreadable (Status reports, never fails on one)."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except (OSError, ValueError):
        return None


def _documents(record: Any) -> dict[str, int]:
    """identifier -> pages of a batch.json (0 where a page count is missing)."""
    documents = record.get("documents") if isinstance(record, dict) else None
    if not isinstance(documents, dict):
        return {}
    return {str(i): _pages_of(d) or 0 for i, d in documents.items()}


def _pages_of(meta: Any) -> int | None:
    pages = meta.get("pages") if isinstance(meta, dict) else None
    return pages if isinstance(pages, int) else None


# --- 04, 05 and quarantine: counted once per change of their fan-out folders -------------------------

CACHE_NAME = "status_cache.json"
_SETTLE_SECONDS = 5.0  # a folder changed this recently may change again within its mtime's granularity


def _count_folder(stage: str, folder: str) -> dict[str, Any]:
    """Documents, files, bytes (and for quarantine reasons and pages) of one fan-out folder."""
    usage, documents, pages, reasons = _Usage(), 0, 0, Counter[str]()
    for entry in _entries(folder):
        if entry.is_dir(follow_symlinks=False):
            if stage == PROCESSED:  # one folder per document
                documents += 1
                for inner in _entries(entry.path):
                    usage.files += 1
                    usage.bytes += inner.stat(follow_symlinks=False).st_blocks * 512
            continue
        usage.files += 1
        usage.bytes += entry.stat(follow_symlinks=False).st_blocks * 512
        if stage == OCR_COMPLETED and entry.name.endswith(".ocr.jsonl"):
            documents += 1
        elif stage == QUARANTINE and entry.name.endswith(".reason.json"):
            documents += 1
            record = _read(entry.path)
            record = record if isinstance(record, dict) else {}
            reasons[str(record.get("reason", "unreadable reason file"))] += 1
            pages += _pages_of(record.get("download")) or 0
    return {"documents": documents, "files": usage.files, "bytes": usage.bytes, "pages": pages,
            "reasons": dict(reasons)}


class FolderCache:
    """Counts per fan-out folder of 04, 05 and quarantine in _manifests/status_cache.json, keyed by the
    folder's mtime: adding, renaming or removing a document's entry changes it, so an unchanged folder
    is not listed again. Documents' own files never change once written (a rerun changes no byte)."""

    def __init__(self, path: Path, now: float) -> None:
        self.path, self.now = path, now
        cached = _read(path)
        self.folders: dict[str, Any] = cached.get("folders", {}) if isinstance(cached, dict) else {}
        self.changed = False

    def stage(self, base: str, stage: str, width: int) -> dict[str, Any]:
        root = os.path.join(base, stage)
        folders = [e.path for e in _entries(root) if e.is_dir(follow_symlinks=False)] if width else [root]
        total: dict[str, Any] = {"documents": 0, "files": 0, "bytes": 0, "pages": 0, "reasons": Counter[str]()}
        if width:  # files at the top of a fanned-out stage do not belong there, but use space
            for entry in _entries(root):
                if not entry.is_dir(follow_symlinks=False):
                    total["files"] += 1
                    total["bytes"] += entry.stat(follow_symlinks=False).st_blocks * 512
        for folder in folders:
            key = os.path.relpath(folder, base)
            try:
                mtime = os.stat(folder).st_mtime_ns
            except FileNotFoundError:
                continue
            counts = self.folders.get(key)
            if not counts or counts.get("mtime_ns") != mtime:
                counts = {"mtime_ns": mtime, **_count_folder(stage, folder)}
                if mtime / 1e9 < self.now - _SETTLE_SECONDS:
                    self.folders[key] = counts
                    self.changed = True
            for name in ("documents", "files", "bytes", "pages"):
                total[name] += counts[name]
            total["reasons"].update(counts["reasons"])
        return total

    def save(self) -> None:
        """Write the cache when it changed; a base_dir Status cannot write to only costs time."""
        if self.changed:
            try:
                atomic.write_json(self.path, {"folders": self.folders}, sync_dir=False)
            except OSError:
                pass


# --- the event log ---------------------------------------------------------------------------------

def scan_events(path: Path) -> tuple[dict[str, events.BatchFacts], str | None]:
    """(what the log says per batch, the time of the last progress event); without any progress event,
    the time of the log's first event (when work began to wait). From the compaction snapshot and the
    live log's tail (pipeline.events.facts), whose per-document lines cost no JSON parsing."""
    found = events.facts(path)
    return found.batches, found.last_progress or found.first_time or None


def _time(iso: str) -> _dt.datetime:
    moment = _dt.datetime.fromisoformat(iso)
    return moment if moment.tzinfo else moment.astimezone()


def _hours(now: _dt.datetime, iso: str | None) -> float | None:
    return (now - _time(iso)).total_seconds() / 3600 if iso else None


# --- open batches -----------------------------------------------------------------------------------

def _batch_events(facts: events.BatchFacts) -> _BatchEvents:
    return _BatchEvents(facts.failed_attempts(), facts.reset, facts.submissions, facts.failure)


@dataclass
class _BatchEvents:
    failed_attempts: dict[int, list[dict[str, Any]]]
    reset: set[int]                     # chunks of the last reset (engine or cluster broken)
    submissions: dict[int, dict[str, Any]]
    failure: dict[str, Any] | None      # the last batch_task_failed not followed by other events


def _stage_of(paths: BatchPaths, names: set[str]) -> str:
    if "finalize_report.json" in names:
        return "finalizing"
    if "split_report.json" in names:
        return "split"
    if paths.ocr_marker.exists():
        return "ocr done"
    if "chunks.json" in names:
        return "ocr"
    return "created" if "batch.json" in names else "not adopted yet"


def _chunk_states(paths: BatchPaths, log: _BatchEvents, slurm_states: dict[str, Any] | None,
                  now: _dt.datetime, stale_hours: float) -> tuple[dict[str, Any], list[str]]:
    """Chunk counts of one planned batch, and its stale jobs (one line each)."""
    chunks = bisect.settled_chunks(paths)
    done_names = {e.name for e in _entries(str(paths.workspace / "done"))}
    ocr_running = slurm_states is None and lease.is_held(batches.stage_lease(paths, "OCRBatch"))
    counts = Counter[str]()
    todo_pages = 0
    stale = []
    for chunk in chunks:
        index = chunk["index"]
        if paths.done_marker(index).name in done_names:
            counts["done"] += 1
            continue
        todo_pages += int(chunk.get("pages", 0))
        failed = index in log.reset or bool(log.failed_attempts.get(index))
        state = "failed" if failed else "pending"
        if slurm_states is not None:
            submission = log.submissions.get(index)
            job = slurm_states.get(task_key(str(submission["job_id"]), index)) if submission else None
            if job is not None and index not in log.reset:
                if job.outcome == "waiting":
                    state = "running" if job.state == "RUNNING" else "pending"
                    age = _hours(now, submission.get("time")) if submission else None
                    if age is not None and age > stale_hours:
                        stale.append(f"batch {paths.number} chunk {index}: job {job.job_id}_{index} {job.state} "
                                     f"for {age:.0f} hours")
                else:  # ended FAILED, TIMEOUT, ... or COMPLETED without its done marker
                    state = "failed"
        elif ocr_running and paths.chunk_log(index).exists():
            log_time = paths.chunk_log(index).stat().st_mtime
            last_failure = max((_time(a["time"]).timestamp() for a in log.failed_attempts.get(index, [])
                                if isinstance(a.get("time"), str)), default=0.0)
            if log_time > last_failure:
                state = "running"
                idle = (now.timestamp() - log_time) / 3600
                if idle > stale_hours:
                    stale.append(f"batch {paths.number} chunk {index}: its process wrote nothing to "
                                 f"{paths.chunk_log(index)} for {idle:.0f} hours")
        counts[state] += 1
    result = {"total": len(chunks), **{k: counts[k] for k in ("done", "running", "pending", "failed")},
              "pages_to_do": todo_pages}
    return result, stale


# --- the whole view --------------------------------------------------------------------------------

def _throughput(layout: Layout, now: _dt.datetime) -> dict[str, float]:
    """Pages/hour per window: pages of chunks that completed within it, over its hours, or over the
    hours since the first recorded chunk began when that is shorter (a site that just started)."""
    runs = attempts(events.read(layout.metrics))
    starts = []
    for run in runs:
        if run.start:
            starts.append(_time(run.start))
        elif run.end:  # a local run records only its end and elapsed time
            starts.append(_time(run.end) - _dt.timedelta(seconds=float(run.elapsed or 0)))
    ended = [(r.pages, _time(r.end)) for r in completed_chunks(runs) if r.end]
    active = (now - min(starts)).total_seconds() / 3600 if starts else 0.0
    rates = {}
    for name, hours in WINDOWS.items():
        span = min(float(hours), active)
        pages = sum(p for p, end in ended if (now - end).total_seconds() <= hours * 3600)
        rates[name] = pages / span if span > 0 else 0.0
    return rates


def collect(layout: Layout, *, thresholds: Thresholds = Thresholds(), slurm: SlurmClient | None = None,
            now: _dt.datetime | None = None, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The status of ``layout``'s base_dir (see the module's docstring for where each number comes
    from). ``slurm``: the client of a SLURM site (one sacct call for every job of the open batches),
    None for the local executor. ``now`` is for tests and reports of a given moment. ``progress``
    gets a message as each part is counted (the first Status of a large base_dir takes a while)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    base = str(layout.base)
    walker = _Walker()
    notes: list[str] = []
    stages: dict[str, dict[str, Any]] = {}

    # 03 first: the documents open batches hold are not waiting in 01, whose PDFs they hard-link.
    batch_infos = []
    held: set[str] = set()
    finalized_pages = 0
    records_by_id: dict[str, int] = {}
    for number in layout.batch_numbers():
        paths = BatchPaths(layout.batch_dir(number))
        names = {e.name for e in _entries(str(paths.dir))}
        if "finalized.json" in names:
            finalized_pages += _pages_of(_read(paths.finalized)) or 0
            continue
        documents = _documents(_read(paths.batch_record))
        held.update(documents)
        records_by_id.update(documents)
        if "finalize_report.json" in names:
            finalized_pages += _pages_of(_read(paths.finalize_report)) or 0
        pdfs = sum(1 for n in names if n.lower().endswith(".pdf"))
        held.update(n[:-4] for n in names if n.lower().endswith(".pdf"))
        batch_infos.append((number, paths, names, documents, pdfs))

    # 01 (and a legacy 02): PDFs not held by an open batch; pages from their .meta.json.
    waiting = waiting_pages = pages_unknown = 0
    usage01 = _Usage()
    for stage in (DOWNLOADED, PENDING_LEGACY):
        for folder in _fanout_folders(os.path.join(base, stage)):
            entries = _entries(folder)
            names = {e.name for e in entries}
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    continue
                walker.add(entry, usage01)
                name = entry.name
                if not name.lower().endswith(".pdf") or name[:-4] in held:
                    continue
                waiting += 1
                pages = _pages_of(_read(os.path.join(folder, f"{name[:-4]}.meta.json"))) if (
                    f"{name[:-4]}.meta.json" in names) else None
                if pages is None:
                    pages_unknown += 1
                else:
                    waiting_pages += pages
    stages[DOWNLOADED] = {"documents": waiting, "pages": waiting_pages, "pages_unknown": pages_unknown,
                          "files": usage01.files, "bytes": usage01.bytes}

    # open batches
    progress(f"{DOWNLOADED} and {len(batch_infos)} open batches counted; reading the event log")
    batch_events, last_progress = scan_events(layout.events)
    per_batch = {number: _batch_events(facts) for number, facts in batch_events.items()}
    slurm_states: dict[str, Any] | None = None
    if slurm is not None:
        jobs = {str(s["job_id"]) for number, *_ in batch_infos
                for s in per_batch.get(number, _BatchEvents({}, set(), {}, None)).submissions.values()}
        try:
            slurm_states = slurm.query(jobs) if jobs else {}
        except SlurmError as exc:
            notes.append(f"SLURM did not answer, running and pending are not told apart: {exc}")
            slurm_states = {}
    batches_out = []
    stale: list[str] = []
    failures: list[str] = []
    backlog_pages = waiting_pages
    usage03 = _Usage()
    walker.walk(os.path.join(base, PROCESSING), usage03)  # finalized batches' folders use space too
    for number, paths, names, documents, pdfs in batch_infos:
        log = per_batch.get(number, _BatchEvents({}, set(), {}, None))
        pages = sum(documents.values())
        info: dict[str, Any] = {"batch": number, "stage": _stage_of(paths, names), "documents": len(documents),
                                "pages": pages, "pdfs": pdfs, "chunks": None, "failure": None}
        if "chunks.json" in names:
            try:
                chunks, stale_here = _chunk_states(paths, log, slurm_states, now, thresholds.stale_job_hours)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged plan: OCRBatch redoes or names it
                notes.append(f"batch {number}: its chunk plan cannot be read ({type(exc).__name__}: {exc})")
                chunks, stale_here = None, []
            info["chunks"] = chunks
            stale += stale_here
            if chunks is not None and "split_report.json" not in names:
                backlog_pages += chunks["pages_to_do"]
        else:
            backlog_pages += pages
        if log.failure is not None:
            info["failure"] = {k: log.failure.get(k) for k in ("task", "time", "message")}
            failures.append(f"batch {number}: {log.failure.get('task')} failed at {log.failure.get('time')}: "
                            f"{log.failure.get('message')}; fix the cause, then run luigi --module pipeline "
                            f"Finalize --batch {number}")
        batches_out.append(info)
    stages[PROCESSING] = {"documents": sum(b["documents"] for b in batches_out),
                          "pages": sum(b["pages"] for b in batches_out), "batches": len(batches_out),
                          "files": 0, "bytes": 0}

    # 04, 05 and quarantine: per fan-out folder, from the cache while the folder is unchanged.
    cache = FolderCache(layout.manifests / CACHE_NAME, time.time())
    totals = {}
    for stage in (OCR_COMPLETED, PROCESSED, QUARANTINE):
        progress(f"counting {stage}")
        totals[stage] = cache.stage(base, stage, layout.fanout_width)
    cache.save()
    completed_root = os.path.join(base, OCR_COMPLETED)
    completed_open = sum(p for i, p in records_by_id.items() if os.path.exists(
        os.path.join(completed_root, fanout_of(i, layout.fanout_width), f"{i}.ocr.jsonl")))
    stages[OCR_COMPLETED] = {"documents": totals[OCR_COMPLETED]["documents"],
                             "pages": finalized_pages + completed_open,
                             "files": totals[OCR_COMPLETED]["files"], "bytes": totals[OCR_COMPLETED]["bytes"]}
    stages[PROCESSED] = {"documents": totals[PROCESSED]["documents"], "pages": finalized_pages,
                         "files": totals[PROCESSED]["files"], "bytes": totals[PROCESSED]["bytes"]}
    quarantined = totals[QUARANTINE]
    stages[QUARANTINE] = {"documents": quarantined["documents"], "pages": quarantined["pages"],
                          "reasons": dict(sorted(quarantined["reasons"].items())), "files": quarantined["files"],
                          "bytes": quarantined["bytes"]}
    usagem = _Usage()
    walker.walk(os.path.join(base, MANIFESTS), usagem)
    stages[MANIFESTS] = {"files": usagem.files, "bytes": usagem.bytes}
    stages[PROCESSING].update(files=usage03.files, bytes=usage03.bytes)

    volume = os.statvfs(base)
    disk: dict[str, Any] = {
        "total_bytes": volume.f_blocks * volume.f_frsize, "free_bytes": volume.f_bavail * volume.f_frsize,
        "total_inodes": volume.f_files, "free_inodes": volume.f_favail,
    }
    disk["used_percent"] = _percent(disk["total_bytes"], volume.f_bfree * volume.f_frsize)
    disk["inodes_used_percent"] = _percent(disk["total_inodes"], volume.f_ffree)

    rates = _throughput(layout, now)
    rate = rates["day"] or rates["week"]
    backlog_documents = waiting + sum(b["documents"] for b in batches_out)
    backlog = {"documents": backlog_documents, "pages": backlog_pages,
               "rate_window": "day" if rates["day"] else "week" if rates["week"] else None,
               "hours_to_finish": round(backlog_pages / rate, 2) if rate and backlog_pages else
               (0.0 if not backlog_pages else None)}

    problems = []
    full = [f"{used:.1f}% of its {what}" for what, used in (("space", disk["used_percent"]),
                                                             ("inodes", disk["inodes_used_percent"]))
            if used is not None and used > thresholds.disk_percent]
    if full:
        problems.append(f"disk: the volume of {base} has used {' and '.join(full)} (threshold "
                        f"{thresholds.disk_percent:g}%): free space (finalize open batches, move 05_processed "
                        "away) or raise [status] disk_threshold_percent")
    idle = _hours(now, last_progress)
    if backlog_documents and idle is not None and idle > thresholds.stalled_hours:
        problems.append(f"stalled: no progress for {idle:.1f} hours (last at {last_progress}) while "
                        f"{backlog_documents} documents wait: check that cron runs ProcessAll and read its log")
    problems += failures
    problems += [f"stale job: {line}; check it (squeue, sacct, the chunk's log), cancel it if stuck, then run "
                 "ProcessAll again" for line in stale]
    return {
        "base_dir": base, "time": now.isoformat(timespec="seconds"), "stages": stages, "disk": disk,
        "batches": batches_out,
        "throughput": {"source": "completed chunks in metrics.ndjson",
                       "pages_per_hour": {k: round(v, 1) for k, v in rates.items()}},
        "backlog": backlog, "last_progress": last_progress,
        "thresholds": {"disk_threshold_percent": thresholds.disk_percent, "stalled_hours": thresholds.stalled_hours,
                       "stale_job_hours": thresholds.stale_job_hours},
        "notes": notes, "problems": problems,
    }


def _percent(total: int, free: int) -> float | None:
    return round(100 * (total - free) / total, 1) if total else None


# --- for people --------------------------------------------------------------------------------------

def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(hours: float | None) -> str:
    if hours is None:
        return "unknown (no chunk completed in the last week)"
    days, rest = divmod(hours, 24)
    return f"{int(days)}d {rest:.1f}h" if days else f"{rest:.1f}h"


def last_line(status: dict[str, Any]) -> str | None:
    """The one line naming what needs a person, or None when nothing does."""
    problems = status["problems"]
    if not problems:
        return None
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems need a person (listed above); the first: {problems[0]}"


def format_status(status: dict[str, Any]) -> str:
    """The plain-text view: the same numbers as the JSON."""
    stages, disk = status["stages"], status["disk"]
    lines = [f"base_dir {status['base_dir']} at {status['time']}", "",
             f"{'stage':<20} {'documents':>10} {'pages':>12} {'files':>10} {'disk used':>12}"]
    for name, row in stages.items():
        documents = f"{row['documents']:,}" if "documents" in row else "-"
        pages = f"{row['pages']:,}" if "pages" in row else "-"
        if row.get("pages_unknown"):
            pages += f" (+{row['pages_unknown']} unknown)"
        lines.append(f"{name:<20} {documents:>10} {pages:>12} {row['files']:>10,} {_size(row['bytes']):>12}")
        for reason, count in row.get("reasons", {}).items():
            lines.append(f"    {reason:<16} {count:>10,}")
    lines.append(f"free: {_size(disk['free_bytes'])} of {_size(disk['total_bytes'])} ({disk['used_percent']}% used), "
                 f"{disk['free_inodes']:,} of {disk['total_inodes']:,} inodes ({disk['inodes_used_percent']}% used)")
    lines += ["", f"open batches: {len(status['batches'])}"]
    if status["batches"]:
        lines.append(f"{'batch':<6} {'stage':<16} {'documents':>9} {'pages':>9} {'pdfs':>6} "
                     f"{'chunks':>6} {'done':>5} {'running':>7} {'pending':>7} {'failed':>6}")
        for b in status["batches"]:
            c = b["chunks"] or {}
            counts = " ".join(f"{c[k]:>{w}}" if c else f"{'-':>{w}}" for k, w in
                              (("total", 6), ("done", 5), ("running", 7), ("pending", 7), ("failed", 6)))
            lines.append(f"{b['batch']:<6} {b['stage']:<16} {b['documents']:>9,} {b['pages']:>9,} {b['pdfs']:>6,} "
                         f"{counts}")
    rates, backlog = status["throughput"]["pages_per_hour"], status["backlog"]
    lines += ["", "pages/hour: " + ", ".join(f"{rates[k]:,.1f} over the last {k}" for k in WINDOWS)
              + f" ({status['throughput']['source']})",
              f"backlog: {backlog['documents']:,} documents, {backlog['pages']:,} pages to OCR; "
              f"time to finish: {_duration(backlog['hours_to_finish'])}"
              + (f" at the last {backlog['rate_window']}'s rate" if backlog["rate_window"] else ""),
              f"last progress: {status['last_progress'] or 'none recorded'}"]
    lines += [f"note: {n}" for n in status["notes"]]
    if len(status["problems"]) > 1:
        lines += [f"problem: {p}" for p in status["problems"]]
    return "\n".join(lines)


# --- the command line --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline status [--json]``: 0 when fine, 1 with the problem as the last line."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="The OCR pipeline's command line "
                                     "tools that need no Luigi scheduler")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help="documents, pages and disk per stage, open batches, "
                                        "throughput, problems (luigi.cfg from LUIGI_CONFIG_PATH)")
    status_parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    from pipeline.config import OCRConfig, PipelineConfig, SlurmConfig, StatusConfig

    settings = PipelineConfig()
    layout = Layout(Path(settings.base_dir).expanduser().absolute(), settings.shard_width)
    if not layout.base.is_dir():
        print(f"ERROR: base_dir {layout.base} does not exist: set [pipeline] base_dir in the file "
              "LUIGI_CONFIG_PATH names", file=sys.stderr)
        return 2
    slurm = SlurmClient(SlurmConfig().command_timeout) if OCRConfig().executor == "slurm" else None
    limits = StatusConfig()
    thresholds = Thresholds(limits.disk_threshold_percent, limits.stalled_hours, limits.stale_job_hours)
    started = time.monotonic()

    def progress(message: str) -> None:  # only when it takes long enough for someone to wonder
        if time.monotonic() - started > 2:
            print(f"status: {message}", file=sys.stderr, flush=True)

    result = collect(layout, thresholds=thresholds, slurm=slurm, progress=progress)
    print(json.dumps(result, indent=2) if args.json else format_status(result), flush=True)
    line = last_line(result)
    if line:
        print(f"ERROR: {line}", file=sys.stderr, flush=True)
        return 1
    return 0
