"""Per-chunk job metrics (_manifests/metrics.ndjson) and what they tell: the time a job needs to start,
the seconds a page takes, throughput, and how long the waiting work will take.

The executors write the records (pipeline.executors.records says which); everything here is a pure
function of them, except ``waiting_work``, which looks at the stage folders, and ``write_summary``,
which also reads back from SLURM the ends of jobs nobody watched.
"""
from __future__ import annotations

import datetime as _dt
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import atomic, events, pdf
from pipeline.executors.records import Attempt, attempts, completed_chunks
from pipeline.executors.slurm.client import SlurmClient
from pipeline.executors.slurm.executor import record_missing_ends
from pipeline.executors.slurm.parse import SlurmError
from pipeline.executors.walltime import Fit, fit_startup, samples
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import batches, bisect

# --- the summary ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Waiting:
    """Work not done yet, in pages."""

    chunk_pages: list[int]      # every chunk of an open batch without its done marker
    unplanned_pages: int = 0    # documents of open batches that have no chunk plan yet
    documents: int = 0          # documents waiting in 01_downloaded
    document_pages: int = 0


def _time(iso: str) -> _dt.datetime:
    """An aware datetime; sacct writes the cluster's local time without an offset."""
    moment = _dt.datetime.fromisoformat(iso)
    return moment if moment.tzinfo else moment.astimezone()


def _interval(run: Attempt) -> tuple[_dt.datetime, _dt.datetime] | None:
    """(start, end) of an attempt; a local run records only its end, so start = end - elapsed."""
    if not run.end:
        return None
    end = _time(run.end)
    if run.start:
        return _time(run.start), end
    if run.elapsed is not None:
        return end - _dt.timedelta(seconds=run.elapsed), end
    return None


def _pages_per_hour(runs: list[Attempt]) -> float | None:
    """Pages of ``runs`` over the wall-clock span from the first start to the last end."""
    spans = [s for s in map(_interval, runs) if s]
    if not spans:
        return None
    hours = (max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds() / 3600
    return sum(r.pages for r in runs) / hours if hours > 0 else None


def peak_concurrency(runs: Iterable[Attempt]) -> int:
    """Most attempts that were running at the same moment."""
    changes = sorted((moment, step) for s in map(_interval, runs) if s and s[1] > s[0]
                     for moment, step in ((s[0], 1), (s[1], -1)))  # an end sorts before a start at the same time
    running = peak = 0
    for _, step in changes:
        running += step
        peak = max(peak, running)
    return peak


def _stats(values: list[float]) -> dict[str, float] | None:
    return {"mean": sum(values) / len(values), "max": max(values)} if values else None


def throughput(chunks: list[Attempt]) -> dict[str, Any]:
    """Pages/hour over the whole span, and per UTC day (by the day each chunk ended)."""
    by_day: dict[str, list[Attempt]] = {}
    for run in chunks:
        interval = _interval(run)
        if interval:
            by_day.setdefault(interval[1].astimezone(_dt.timezone.utc).date().isoformat(), []).append(run)
    per_hour = _pages_per_hour(chunks)
    return {
        "pages_per_hour": per_hour,
        "pages_per_day": per_hour * 24 if per_hour is not None else None,
        "by_day": {day: {"chunks": len(rs), "pages": sum(r.pages for r in rs), "pages_per_hour": _pages_per_hour(rs)}
                   for day, rs in sorted(by_day.items())},
    }


def walltime_ratio(chunks: list[Attempt]) -> dict[str, float] | None:
    """Requested over actual walltime: summed over chunks, and the chunk that came closest to its limit."""
    pairs = [(float(r.walltime_requested), float(r.elapsed)) for r in chunks if r.walltime_requested and r.elapsed]
    if not pairs:
        return None
    return {"overall": sum(w for w, _ in pairs) / sum(e for _, e in pairs), "min": min(w / e for w, e in pairs)}


def rate(fit: Fit | None, chunks: list[Attempt]) -> dict[str, Any] | None:
    """What a chunk costs for the projection: the fit, else the plain average seconds per page."""
    if fit is not None and fit.seconds_per_page > 0:
        return {"source": "fit", "startup_seconds": max(0.0, fit.startup_seconds),
                "seconds_per_page": fit.seconds_per_page}
    pages = sum(r.pages for r in chunks)
    if not pages:
        return None
    return {"source": "average", "startup_seconds": 0.0,
            "seconds_per_page": sum(float(r.elapsed or 0) for r in chunks) / pages}


def projection(waiting: Waiting, cost: dict[str, Any] | None, at_once: int,
               pages_per_chunk: int) -> dict[str, Any]:
    """Seconds until the waiting work is done: every chunk's startup + seconds/page x pages, ``at_once``
    chunks at a time. Pages without a chunk yet count as ``pages / pages_per_chunk`` chunks, rounded up."""
    later = waiting.unplanned_pages + waiting.document_pages
    chunks = len(waiting.chunk_pages) + math.ceil(later / pages_per_chunk)
    pages = sum(waiting.chunk_pages) + later
    seconds = None
    if cost is not None:
        seconds = (chunks * cost["startup_seconds"] + pages * cost["seconds_per_page"]) / at_once
    return {"chunks": chunks, "pages": pages, "pages_in_open_chunks": sum(waiting.chunk_pages),
            "unplanned_pages": waiting.unplanned_pages, "documents_downloaded": waiting.documents,
            "pages_downloaded": waiting.document_pages, "projected_seconds": seconds}


def summarize(runs: list[Attempt], waiting: Waiting, *, pages_per_chunk: int,
              parallel: int | None = None) -> dict[str, Any]:
    """The figures MetricsSummary writes and prints (times in seconds).

    ``parallel`` is how many chunks run at once when the configuration says so; without it the most
    attempts seen running together is used, and one when nothing ran yet.
    """
    chunks = completed_chunks(runs)
    pages_done = sum(r.pages for r in chunks)
    elapsed = [float(r.elapsed or 0) for r in chunks]
    fit = fit_startup(samples(chunks))
    cost = rate(fit, chunks)
    observed = peak_concurrency(runs)
    at_once: dict[str, Any] = ({"chunks": parallel, "source": "config"} if parallel else
               {"chunks": observed, "source": "observed"} if observed else {"chunks": 1, "source": "unknown"})
    return {
        "chunks_done": len(chunks),
        "pages_done": pages_done,
        "attempts": len(runs),
        "states": dict(sorted(Counter(r.state or "UNFINISHED" for r in runs).items())),
        "timeouts": sum(1 for r in runs if r.state == "TIMEOUT"),
        "elapsed_seconds": _stats(elapsed),
        "walltime_requested_seconds": _stats([float(r.walltime_requested) for r in chunks if r.walltime_requested]),
        "seconds_per_page": sum(elapsed) / pages_done if pages_done else None,
        **throughput(chunks),
        "walltime_ratio": walltime_ratio(chunks),
        "fit": {"startup_seconds": fit.startup_seconds, "seconds_per_page": fit.seconds_per_page,
                "samples": fit.samples} if fit else None,
        "rate": cost,
        "parallel_chunks": at_once,
        "waiting": projection(waiting, cost, at_once["chunks"], pages_per_chunk),
        "chunks": [{"batch": r.batch, "chunk": r.chunk, "pages": r.pages, "job_id": r.job_id,
                    "elapsed": r.elapsed, "walltime_requested": r.walltime_requested} for r in chunks],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def _number(value: float | None, digits: int = 2) -> str:
    return "unknown" if value is None else f"{value:,.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary for people, one figure a line."""
    elapsed, requested = summary["elapsed_seconds"] or {}, summary["walltime_requested_seconds"] or {}
    ratio, fit, rate = summary["walltime_ratio"] or {}, summary["fit"], summary["rate"]
    waiting, at_once = summary["waiting"], summary["parallel_chunks"]
    lines = [
        f"chunks done:              {summary['chunks_done']}" + (
            f" ({summary['attempts']} job attempts: " + ", ".join(f"{n} {s}" for s, n in summary["states"].items())
            + ")" if summary["attempts"] else ""),
        f"pages done:               {summary['pages_done']}",
        f"elapsed per chunk:        mean {_duration(elapsed.get('mean'))}, max {_duration(elapsed.get('max'))}",
        f"walltime requested/chunk: mean {_duration(requested.get('mean'))}, max {_duration(requested.get('max'))}",
        f"requested/actual ratio:   {_number(ratio.get('overall'))} overall, "
        f"{_number(ratio.get('min'))} for the chunk closest to its limit",
        f"TIMEOUTs:                 {summary['timeouts']}",
        f"seconds per page:         {_number(summary['seconds_per_page'])}",
        f"pages/hour:               {_number(summary['pages_per_hour'], 0)} "
        f"({_number(summary['pages_per_day'], 0)} pages/day)",
    ]
    lines += [f"    {day} (UTC):       {d['pages']} pages in {d['chunks']} chunks, "
              f"{_number(d['pages_per_hour'], 0)} pages/hour" for day, d in summary["by_day"].items()]
    lines.append(
        f"job startup overhead:     {_number(fit['startup_seconds'], 1)} s + {_number(fit['seconds_per_page'], 3)} "
        f"s/page (least squares over {fit['samples']} chunks)" if fit else
        "job startup overhead:     unknown (needs completed chunks of at least two sizes)")
    lines.append(
        f"waiting:                  {waiting['pages']} pages in ~{waiting['chunks']} chunks "
        f"({waiting['documents_downloaded']} documents in 01_downloaded)")
    lines.append(
        f"projected time to finish: {_duration(waiting['projected_seconds'])} with {at_once['chunks']} chunks "
        f"at once ({at_once['source']})" + (f", {rate['source']} rate" if rate else ", no completed chunk yet"))
    return "\n".join(lines)


# --- the waiting work (reads the stage folders) -----------------------------------------------

def _pdf_pages(path: Path) -> int:
    try:
        return pdf.count_pages(path).pages
    except (pdf.PdfError, OSError):
        return 0  # a bad PDF is quarantined when its batch is made; it adds no OCR time


def waiting_work(layout: Layout) -> Waiting:
    """Chunks of open (not finalized) batches without done marker, and documents waiting in 01_downloaded."""
    chunk_pages: list[int] = []
    unplanned = 0
    for number in layout.batch_numbers():
        paths = BatchPaths(layout.batch_dir(number))
        if paths.finalized.exists():
            continue
        if paths.chunk_plan.exists():
            chunk_pages += [c["pages"] for c in bisect.settled_chunks(paths)
                            if not paths.done_marker(c["index"]).exists()]
        elif paths.batch_record.exists():
            unplanned += sum(d["pages"] for d in atomic.read_json(paths.batch_record)["documents"].values())
        else:  # a batch folder of the older scripts, not adopted yet
            unplanned += sum(_pdf_pages(p) for _, p in paths.pdfs())
    documents = batches.waiting_documents(layout)
    pages = 0
    for identifier, path in documents:
        meta = layout.downloaded_meta(identifier)
        known = atomic.read_json(meta).get("pages") if meta.exists() else None
        pages += known if isinstance(known, int) else _pdf_pages(path)
    return Waiting(chunk_pages, unplanned, len(documents), pages)


# --- the summary of a site --------------------------------------------------------------------

def write_summary(layout: Layout, output: Path, *, pages_per_chunk: int, parallel: int | None,
                  slurm: SlurmClient | None) -> tuple[dict[str, Any], str]:
    """Summarize this base_dir's metrics into ``output`` (JSON); returns the summary and a note for people.

    With ``slurm`` (a SLURM site), the ends of jobs nobody watched are read back first (one sacct
    call); when SLURM cannot answer, those jobs stay unmeasured and the note says why.
    """
    note = ""
    if slurm is not None:
        try:
            added = record_missing_ends(layout, slurm)
            note = f"; {added} job ends read back from sacct" if added else ""
        except SlurmError as exc:
            note = f"; jobs without end records stay unmeasured ({exc})"
    summary = summarize(attempts(events.read(layout.metrics)), waiting_work(layout),
                        pages_per_chunk=pages_per_chunk, parallel=parallel)
    atomic.write_json(output, {**summary, "time": events.now_iso()})
    return summary, note
