"""OCRBatch's work: the planned chunks, a retry chunk for PDFs the engine dropped, bisection of
chunks that fail as a whole (pipeline.stages.bisect), and the batch's OCR marker. Also the run
again of done chunks whose results turn out cut short or gone."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline import atomic, events
from pipeline.executors.base import Progress, make_executor, planned_walltime
from pipeline.layout import BatchPaths, Layout, identifier_of
from pipeline.stages import bisect, integrity
from pipeline.stages import chunks as planning

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, SlurmConfig


def context(layout: Layout, paths: BatchPaths, ocr: OCRConfig, slurm: SlurmConfig,
            say: Callable[[str], None]) -> bisect.Context:
    """What running chunks of the batch needs: the executor, page counts, walltime model, engine."""
    pages = {i: d["pages"] for i, d in atomic.read_json(paths.batch_record)["documents"].items()}
    return bisect.Context(make_executor(layout, paths, ocr, slurm), layout, paths, pages,
                          planned_walltime(layout, ocr, slurm), ocr.engine, say)


class Counts:
    """Progress of a pass: each executor update with its label, and the messages between updates
    (a chunk split, a document quarantined) with the chunk counts last shown."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.last = (0, 1)

    def labelled(self, label: str) -> Progress:
        def progress(done: int, total: int, message: str) -> None:
            self.last = (done, total)
            self.progress(done, total, f"{label}: {message}")
        return progress

    def say(self, message: str) -> None:
        self.progress(*self.last, message)


def ocr_batch(layout: Layout, paths: BatchPaths, ocr: OCRConfig, slurm: SlurmConfig,
              progress: Progress) -> dict[str, Any]:
    """Run every chunk of the batch on the executor [ocr] names (see run_ocr); reports the end."""
    counts = Counts(progress)
    record = run_ocr(context(layout, paths, ocr, slurm, counts.say), slurm.max_retries, counts.labelled)
    progress(1, 1, describe(record))
    return record


def redo_untrusted(layout: Layout, paths: BatchPaths, have: set[str], ocr: OCRConfig, slurm: SlurmConfig,
                   progress: Progress, status: Callable[[str], None]) -> bool:
    """Run again the done chunks whose marker vouches for a document without a whole record in the
    results (``have``: identifiers with one); True when any ran. ``status`` gets the messages
    between chunk counts."""
    untrusted = integrity.untrusted_markers(paths, bisect.settled_chunks(paths), have)
    if not untrusted:
        return False
    integrity.withdraw(layout, paths, untrusted)
    redo = [c for c in bisect.all_chunks(paths) if c["index"] in untrusted]
    bisect.run_with_bisection(context(layout, paths, ocr, slurm, status), redo,
                              lambda done, total, message: progress(done, total, f"chunks run again: {message}"))
    return True


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
        missing = [(i, [identifier_of(m) for m in names])
                   for i, names in missing_of(ctx, bisect.load(paths).family(plan))]
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
