"""Run summaries for people: what was finalized, quarantined and how fast."""
from __future__ import annotations

from collections import Counter

from pipeline import atomic
from pipeline.layout import QUARANTINE, BatchPaths, Layout


def batches_since(layout: Layout, started_at: str) -> list[str]:
    """Batches still open, or finalized at or after ``started_at`` (ISO time): this run's work."""
    found = []
    for number in layout.batch_numbers():
        marker = BatchPaths(layout.batch_dir(number)).finalized
        if not marker.exists() or atomic.read_json(marker)["finished_at"] >= started_at:
            found.append(number)
    return found


def collection_summary(layout: Layout, batches: list[str], elapsed_seconds: float, since: str = "") -> dict:
    """Totals over the given batches' finalize reports, and what was quarantined since ``since``."""
    finalized = pages = 0
    open_batches = []
    for number in batches:
        paths = BatchPaths(layout.batch_dir(number))
        if paths.finalized.exists():
            report = atomic.read_json(paths.finalized)
            finalized += report["finalized"]
            pages += report["pages"]
        else:
            open_batches.append(number)
    reasons: Counter[str] = Counter()
    quarantined = []
    quarantine_root = layout.base / QUARANTINE
    for reason_file in sorted(quarantine_root.rglob("*.reason.json")) if quarantine_root.is_dir() else []:
        record = atomic.read_json(reason_file)
        if record.get("time", "") < since:
            continue
        reasons[record["reason"]] += 1
        quarantined.append({"identifier": record["identifier"], "reason": record["reason"],
                            "message": record.get("message", "")})
    hours = elapsed_seconds / 3600
    return {
        "documents_finalized": finalized,
        "pages": pages,
        "quarantined": quarantined,
        "quarantine_reasons": dict(reasons),
        "open_batches": open_batches,
        "elapsed_seconds": round(elapsed_seconds, 1),
        "pages_per_hour": round(pages / hours) if hours > 0 else 0,
        "results": str(layout.base / "05_processed"),
    }


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def status_line(summary: dict, batches: list[str]) -> str:
    """What a run did, in one line (ProcessAll's last status in the visualizer): ``summary`` is
    collection_summary over ``batches``, the batches the run touched."""
    finalized = len(batches) - len(summary["open_batches"])
    line = (f"done: {_count(finalized, 'batch', 'batches')} finalized, "
            f"{_count(summary['documents_finalized'], 'document', 'documents')}, "
            f"{_count(summary['pages'], 'page', 'pages')}, {len(summary['quarantined'])} quarantined")
    if summary["open_batches"]:
        line += f"; still open: {', '.join(summary['open_batches'])}"
    return line


def format_summary(summary: dict) -> str:
    lines = [
        f"documents finalized: {summary['documents_finalized']}",
        f"pages:               {summary['pages']}",
        f"quarantined:         {len(summary['quarantined'])}"
        + "".join(f"\n    {q['identifier']}: {q['reason']} ({q['message']})" for q in summary["quarantined"]),
        f"elapsed:             {summary['elapsed_seconds']} s",
        f"pages/hour:          {summary['pages_per_hour']}",
        f"results:             {summary['results']}",
    ]
    if summary["open_batches"]:
        lines.append(f"open batches:        {', '.join(summary['open_batches'])}")
    return "\n".join(lines)

