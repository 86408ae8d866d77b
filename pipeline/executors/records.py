"""The per-chunk job records of _manifests/metrics.ndjson: built here for both executors, read back here.

A SLURM attempt adds a submission record when its job is submitted (batch, chunk, pages,
walltime_requested, job_id, attempt, submitted_at) and an end record when SLURM reports the job
ended (state, exit_code, elapsed, start, end). A local attempt adds one record when its process
ended. States are SLURM's names (pipeline.executors.slurm.states), for local runs too.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.executors.slurm.states import COMPLETED, FAILED


def submission_record(batch: str, chunk: int, pages: int, job_id: str, walltime: int, attempt: int,
                      submitted_at: str) -> dict[str, Any]:
    """The record of one chunk's SLURM submission."""
    return {
        "batch": batch, "chunk": chunk, "pages": pages, "executor": "slurm", "walltime_requested": walltime,
        "job_id": job_id, "attempt": attempt, "submitted_at": submitted_at,
    }


def end_record(batch: str, chunk: int, pages: int, job_id: str, state: str, exit_code: str | None,
               elapsed: int | None, start: str | None, end: str | None) -> dict[str, Any]:
    """The record a SLURM job's end adds (the executor, and MetricsSummary for jobs nobody watched)."""
    return {
        "batch": batch, "chunk": chunk, "pages": pages, "executor": "slurm", "job_id": job_id,
        "state": state, "exit_code": exit_code, "elapsed": elapsed, "start": start, "end": end,
    }


def local_record(batch: str, chunk: int, pages: int, returncode: int, done: bool, elapsed: float,
                 end: str) -> dict[str, Any]:
    """The record of one local attempt: COMPLETED when the process exited 0 with its done marker."""
    return {
        "batch": batch, "chunk": chunk, "pages": pages, "executor": "local",
        "state": COMPLETED if returncode == 0 and done else FAILED,
        "exit_code": returncode, "elapsed": round(elapsed, 3), "end": end,
    }


@dataclass(frozen=True)
class Attempt:
    """One run of one chunk: its submit and end records together (a local run has only the end)."""

    batch: str
    chunk: int
    pages: int
    executor: str = ""
    job_id: str | None = None
    walltime_requested: int | None = None
    submitted_at: str | None = None
    state: str | None = None        # None while no end record exists
    exit_code: str | None = None
    elapsed: float | None = None
    start: str | None = None
    end: str | None = None

    @property
    def completed(self) -> bool:
        return self.state == COMPLETED and self.elapsed is not None


def attempts(records: Iterable[dict[str, Any]]) -> list[Attempt]:
    """Submit and end records merged per (batch, chunk, job id); a field set later wins.

    Records without a job id (local runs) are attempts of their own. A second end record of the same
    job (written by a rerun that measured it again) changes nothing.
    """
    merged: dict[tuple[str, int, object], dict[str, Any]] = {}
    for number, record in enumerate(records):
        if "batch" not in record or "chunk" not in record:
            continue
        job = record.get("job_id")
        key = (str(record["batch"]), int(record["chunk"]), str(job) if job else number)
        merged.setdefault(key, {}).update({k: v for k, v in record.items() if v is not None})
    return [
        Attempt(
            batch=str(f["batch"]), chunk=int(f["chunk"]), pages=int(f.get("pages") or 0),
            executor=str(f.get("executor", "")), job_id=str(f["job_id"]) if f.get("job_id") else None,
            walltime_requested=f.get("walltime_requested"), submitted_at=f.get("submitted_at"),
            state=f.get("state"), exit_code=str(f["exit_code"]) if "exit_code" in f else None,
            elapsed=f.get("elapsed"), start=f.get("start"), end=f.get("end"),
        )
        for f in merged.values()
    ]


def unmeasured(runs: list[Attempt]) -> list[Attempt]:
    """SLURM attempts submitted but without an end record (the watcher was stopped before they ended)."""
    return [a for a in runs if a.executor == "slurm" and a.job_id and a.state is None]


def completed_chunks(runs: Iterable[Attempt]) -> list[Attempt]:
    """The last completed attempt of every chunk, in batch and chunk order."""
    done = {(r.batch, r.chunk): r for r in runs if r.completed}
    return [done[key] for key in sorted(done)]
