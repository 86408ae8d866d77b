"""Chunks that fail as a whole are split in halves, recursively, down to single documents.

One document can crash the OCR program for its whole chunk (a segfault, OUT_OF_MEMORY, an
exception olmOCR does not catch). After its retries such a chunk is split in two halves that run
as chunks of their own; a half that fails again is split again; a single document that still fails
after its own retries is the culprit and is quarantined (reason ``ocr_failed``). The good halves
complete, so the batch completes.

Extra jobs: a half with more than one document gets no retry (its parent's attempts already showed
the failure persists), a single document gets the executor's retries, so one poison document in a
chunk of n costs at most 2 * ceil(log2 n) + max_retries jobs beyond the chunk's own attempts.

State lives in ``chunks/bisect.json``, written after the halves' chunk lists: every split (the new
chunks, with new indices after every index in use) and every single document that failed for good.
A rerun resumes from it: chunks that were split do not run again, done chunks never run twice.

When every chunk of a round fails, at least BROKEN_AFTER of them, and no chunk of the batch has
ever completed, the engine or the cluster is broken rather than documents (that many poison
documents, one in each chunk, is far less likely): nothing more is split or quarantined, the task
fails naming the logs, and the failed attempts are forgotten so that a rerun after the fix starts
them afresh. A round of fewer chunks goes on splitting: two poison documents in the two halves of
a batch's only chunk are found, and a broken engine costs a few more jobs before it is called so.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import atomic, events
from pipeline.executors.base import ATTEMPTS_RESET_EVENT, ChunkOutcome, ChunkRun, Executor, Progress, failed_attempts
from pipeline.executors.walltime import WalltimeModel
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import integrity
from pipeline.stages.quarantine import quarantine

REASON = "ocr_failed"
HALF_RETRIES = 0  # retries of a half with more than one document (a single document gets the executor's)
BROKEN_AFTER = 4  # chunks failing in one round, with none of the batch ever completed: the engine is broken


class EngineBroken(RuntimeError):
    """Every chunk failed and none completed: a problem of the engine or the cluster, not of a document."""


@dataclass
class Bisection:
    """The content of chunks/bisect.json."""

    chunks: list[dict[str, Any]] = field(default_factory=list)   # halves: index, split_of, root, documents, ...
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)  # single-document chunks that failed for good

    @property
    def split(self) -> set[int]:
        return {c["split_of"] for c in self.chunks}

    def family(self, roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``roots`` and every half split off them, in index order."""
        indices = {c["index"] for c in roots}
        return sorted([*roots, *(c for c in self.chunks if c["root"] in indices)], key=lambda c: c["index"])


# --- pure decisions ---------------------------------------------------------------------------

def halves(documents: list[str]) -> list[list[str]]:
    """The two halves of a chunk's documents (the first one gets the odd one)."""
    middle = (len(documents) + 1) // 2
    return [documents[:middle], documents[middle:]]


def to_run(family: list[dict[str, Any]], bisection: Bisection, done: set[int]) -> list[dict[str, Any]]:
    """Chunks of ``family`` still to run: not done, not split, not given up."""
    return [c for c in family
            if c["index"] not in done and c["index"] not in bisection.split and c["index"] not in bisection.failed]


def retries_of(chunk: dict[str, Any]) -> int | None:
    """The retry limit of a chunk: a planned chunk or a single document has the executor's (None)."""
    return HALF_RETRIES if "split_of" in chunk and len(chunk["documents"]) > 1 else None


def engine_broken(failed: int, anything_done: bool) -> bool:
    """BROKEN_AFTER or more chunks failed in one round and none of the batch has ever completed."""
    return failed >= BROKEN_AFTER and not anything_done


def split_chunk(chunk: dict[str, Any], first_index: int, pages: dict[str, int],
                model: WalltimeModel) -> list[dict[str, Any]]:
    """The two halves of a failed chunk, as chunk records numbered from ``first_index``."""
    children = []
    for offset, documents in enumerate(halves(chunk["documents"])):
        count = sum(pages.get(i, 0) for i in documents)
        children.append({"index": first_index + offset, "split_of": chunk["index"],
                         "root": chunk.get("root", chunk["index"]), "documents": documents, "pages": count,
                         "walltime_seconds": model.seconds(count)})
    return children


def failure_record(chunk: dict[str, Any], outcome: ChunkOutcome, engine: str) -> dict[str, Any]:
    return {"documents": chunk["documents"], "engine": engine, "state": outcome.state,
            "exit_code": outcome.exit_code, "log": outcome.log, "attempts": outcome.attempts,
            "message": outcome.message}


def job_bound(roots: list[dict[str, Any]], bisection: Bisection, max_retries: int) -> int:
    """Most extra jobs the splits of ``roots`` may cost: 2 * ceil(log2 n) + max_retries per poison
    document found in a half, n being the document count of the planned chunk it came from."""
    size = {c["index"]: len(c["documents"]) for c in roots}
    return sum(2 * math.ceil(math.log2(size[c["root"]])) + max_retries
               for c in bisection.chunks if c["index"] in bisection.failed and c["root"] in size)


def jobs_spent(halves_: list[dict[str, Any]], failures: dict[int, int], done: set[int]) -> int:
    """Jobs the halves took: their failed attempts, and one for each that completed."""
    return sum(failures.get(c["index"], 0) + (c["index"] in done) for c in halves_)


# --- durable state ----------------------------------------------------------------------------

def plan_file(paths: BatchPaths) -> Path:
    return paths.dir / "chunks" / "bisect.json"


def load(paths: BatchPaths) -> Bisection:
    if not plan_file(paths).exists():
        return Bisection()
    data = atomic.read_json(plan_file(paths))
    return Bisection(data["chunks"], {int(k): v for k, v in data["failed"].items()})


def save(paths: BatchPaths, bisection: Bisection) -> None:
    atomic.write_json(plan_file(paths), {"chunks": bisection.chunks,
                                    "failed": {str(k): v for k, v in sorted(bisection.failed.items())}})


def indices_in_use(paths: BatchPaths) -> set[int]:
    """Every chunk index of the batch: planned, retry and halves."""
    found: set[int] = set()
    for plan in (paths.chunk_plan, paths.retry_plan):
        if plan.exists():
            found |= {c["index"] for c in atomic.read_json(plan)["chunks"]}
    return found | {c["index"] for c in load(paths).chunks}


def all_chunks(paths: BatchPaths) -> list[dict[str, Any]]:
    """Every chunk record of the batch (planned, retry, halves) in index order."""
    found: list[dict[str, Any]] = []
    for plan in (paths.chunk_plan, paths.retry_plan):
        if plan.exists():
            found += atomic.read_json(plan)["chunks"]
    return sorted(found + load(paths).chunks, key=lambda c: c["index"])


def settled_chunks(paths: BatchPaths) -> list[dict[str, Any]]:
    """The chunks that end with a done marker: every chunk but those split or given up."""
    bisection = load(paths)
    return [c for c in all_chunks(paths) if c["index"] not in bisection.split and c["index"] not in bisection.failed]


def documents_in_flight(paths: BatchPaths) -> frozenset[str]:
    """Documents listed by a chunk of the batch still to run: a settled chunk without its done marker.
    Their PDFs must stay while the batch's OCR runs, even when a record of them exists (a job killed
    after writing its results and before its done marker runs again)."""
    return frozenset(identifier for chunk in settled_chunks(paths)
                     if not paths.done_marker(chunk["index"]).exists() for identifier in chunk["documents"])


# --- the loop ---------------------------------------------------------------------------------

@dataclass
class Context:
    """What one OCRBatch pass needs besides its chunks."""

    executor: Executor
    layout: Layout
    paths: BatchPaths
    pages: dict[str, int]        # identifier -> pages, from batch.json
    model: WalltimeModel
    engine: str
    say: Callable[[str], None]   # one progress message


def run_with_bisection(ctx: Context, roots: list[dict[str, Any]], progress: Progress) -> None:
    """Run ``roots`` and the halves of those that fail, until each is done, split or given up; then
    quarantine the single documents that failed."""
    paths = ctx.paths
    while True:
        bisection = load(paths)
        family = bisection.family(roots)
        done = {c["index"] for c in all_chunks(paths) if paths.done_marker(c["index"]).exists()}
        todo = to_run(family, bisection, done)
        if not todo:
            break
        integrity.repair_chunk_lists(ctx.layout, paths, todo)
        outcomes = ctx.executor.run(paths, [ChunkRun(c["index"], c["pages"], len(c["documents"]), retries_of(c))
                                            for c in todo], progress)
        events.append(ctx.layout.events, [
            events.event("chunk_done", batch=paths.number, chunk=c["index"], pages=c["pages"],
                           missing=atomic.read_json(paths.done_marker(c["index"]))["missing"])
            for c in todo if outcomes[c["index"]].done
        ])
        failed = [(c, outcomes[c["index"]]) for c in todo if not outcomes[c["index"]].done]
        if not failed:
            continue
        anything_done = any(paths.done_marker(c["index"]).exists() for c in all_chunks(paths))
        if engine_broken(len(failed), anything_done):
            forget_attempts(ctx.layout, paths, [c["index"] for c, _ in failed])
            raise EngineBroken(
                f"OCR failed for every chunk of batch {paths.number} ({len(failed)} failed, none completed): "
                "this points at the engine or the cluster rather than at a document, so nothing was split or "
                "quarantined. " + "; ".join(o.message for _, o in failed)
                + ". Read the logs, fix the cause, and run the same command again."
            )
        record_failures(ctx, bisection, failed)
    quarantine_failed(ctx, load(paths))


def record_failures(ctx: Context, bisection: Bisection, failed: list[tuple[dict[str, Any], ChunkOutcome]]) -> None:
    """Split each failed chunk of several documents, give up single ones; one durable write."""
    paths = ctx.paths
    next_index = max(indices_in_use(paths), default=-1) + 1
    records = []
    for chunk, outcome in failed:
        if len(chunk["documents"]) == 1:
            bisection.failed[chunk["index"]] = failure_record(chunk, outcome, ctx.engine)
            continue
        children = split_chunk(chunk, next_index, ctx.pages, ctx.model)
        next_index += len(children)
        for child in children:
            integrity.write_chunk_list(paths, child)  # before bisect.json names them
        bisection.chunks += children
        records.append(events.event(
            "chunk_split", batch=paths.number, chunk=chunk["index"], state=outcome.state,
            exit_code=outcome.exit_code, attempts=outcome.attempts, log=outcome.log,
            documents=len(chunk["documents"]), halves=[c["index"] for c in children]))
        ctx.say(f"chunk {chunk['index']} failed as a whole ({outcome.state}); split into chunks "
                f"{', '.join(str(c['index']) for c in children)} to find the document that fails")
    save(paths, bisection)
    events.append(ctx.layout.events, records)


def quarantine_failed(ctx: Context, bisection: Bisection) -> list[str]:
    """Quarantine every single document that failed for good and is not quarantined yet."""
    layout, paths = ctx.layout, ctx.paths
    quarantined = []
    for index, failure in sorted(bisection.failed.items()):
        [identifier] = failure["documents"]
        if layout.quarantine_reason(identifier).exists():
            continue
        meta = layout.downloaded_meta(identifier)
        download = atomic.read_json(meta) if meta.exists() else None
        quarantine(layout, identifier, [paths.pdf(identifier), layout.downloaded_pdf(identifier)], REASON,
                   f"{identifier}.pdf: the OCR engine {failure['engine']} failed on this document alone: "
                   f"{failure['message']}",
                   also_remove=(meta,), batch=paths.number, chunk=index, engine=failure["engine"],
                   state=failure["state"], exit_code=failure["exit_code"], log=failure["log"],
                   attempts=failure["attempts"], download=download)
        ctx.say(f"{identifier}: quarantined ({REASON}: {failure['state']}, log {failure['log']})")
        quarantined.append(identifier)
    return quarantined


def forget_attempts(layout: Layout, paths: BatchPaths, chunks: list[int]) -> None:
    events.log_event(layout.events, ATTEMPTS_RESET_EVENT, batch=paths.number, chunks=chunks)


def summary(paths: BatchPaths, layout: Layout, roots: list[dict[str, Any]], max_retries: int) -> dict[str, Any]:
    """What bisection cost for ``roots``: the chunks split, the halves, their jobs, the bound, the culprits."""
    bisection = load(paths)
    indices = {c["index"] for c in roots}
    halves_ = [c for c in bisection.chunks if c["root"] in indices]
    failures = {i: len(a) for i, a in failed_attempts(layout.events, paths.number, forget=False).items()}
    done = {c["index"] for c in halves_ if paths.done_marker(c["index"]).exists()}
    culprits = {bisection.failed[c["index"]]["documents"][0]: c["index"] for c in halves_
                if c["index"] in bisection.failed}
    culprits.update({bisection.failed[c["index"]]["documents"][0]: c["index"] for c in roots
                     if c["index"] in bisection.failed})
    return {
        "split": sorted({c["split_of"] for c in halves_}),
        "halves": len(halves_),
        "extra_jobs": jobs_spent(halves_, failures, done),
        "job_bound": job_bound(roots, bisection, max_retries),
        "quarantined": dict(sorted(culprits.items())),
    }
