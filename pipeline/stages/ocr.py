"""OCRBatch's work: the planned chunks, a retry chunk for PDFs the engine dropped, bisection of
chunks that fail as a whole (pipeline.stages.bisect), and the batch's OCR marker."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline import atomic, events
from pipeline.executors.base import Progress
from pipeline.layout import identifier_of
from pipeline.stages import bisect, integrity
from pipeline.stages import chunks as planning


def missing_of(ctx: bisect.Context, family: list[dict[str, Any]]) -> list[tuple[int, list[str]]]:
    """(chunk, PDF names its results miss) for every done chunk of ``family``."""
    found = []
    for chunk in family:
        marker = ctx.paths.done_marker(chunk["index"])
        if marker.exists():
            found.append((chunk["index"], atomic.read_json(marker)["missing"]))
    return found


def run_ocr(ctx: bisect.Context, max_retries: int, progress: Callable[[str], Progress]) -> dict[str, Any]:
    """Run every chunk of the batch to its end; returns the OCR marker's record (also written).

    ``progress(label)`` gives the progress callback of one pass.
    """
    paths = ctx.paths
    plan = atomic.read_json(paths.chunk_plan)["chunks"]
    bisect.run_with_bisection(ctx, plan, progress("chunks"))
    if not paths.retry_plan.exists():
        first = max(bisect.indices_in_use(paths), default=-1) + 1
        missing = [(i, [identifier_of(m) for m in names]) for i, names in missing_of(ctx, bisect.load(paths).family(plan))]
        retries = planning.retry_chunks(missing, ctx.pages, first, ctx.model)
        for chunk in retries:
            integrity.write_chunk_list(paths, chunk)
        atomic.write_json(paths.retry_plan, {"chunks": retries})
    retries = atomic.read_json(paths.retry_plan)["chunks"]
    bisect.run_with_bisection(ctx, retries, progress("retry of missing PDFs"))
    still_missing = sorted(i for _, missing in missing_of(ctx, bisect.load(paths).family(retries)) for i in missing)
    bisection = bisect.summary(paths, ctx.layout, plan + retries, max_retries)
    record = {
        "batch": paths.number,
        "chunks": len(plan),
        "retry_chunks": [c["index"] for c in retries],
        "missing_after_retry": still_missing,
        "bisection": bisection,
    }
    if bisection["split"] or bisection["quarantined"]:
        events.log_event(ctx.layout.events, "bisection_done", batch=paths.number, **bisection)
    atomic.write_json(paths.ocr_marker, record)
    return record


def describe(record: dict[str, Any]) -> str:
    """The terminal and visualizer line of a finished OCR pass."""
    b = record["bisection"]
    text = f"OCR done: {record['chunks']} chunks; {len(record['missing_after_retry'])} PDFs without result after retry"
    if b["split"]:
        text += (f"; {len(b['split'])} chunks failed as a whole and were split into {b['halves']} halves "
                 f"({b['extra_jobs']} extra jobs, bound {b['job_bound']})")
    if b["quarantined"]:
        text += f"; {len(b['quarantined'])} documents quarantined ({bisect.REASON}): {', '.join(b['quarantined'])}"
    return text
