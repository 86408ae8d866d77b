"""A chunk's run and how it ended, shared by both executors: its outcome, its failed attempts (counted
across runs through the event log), and the words that describe an end.
"""
from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import events
from pipeline.executors.slurm.states import COMPLETED

Progress = Callable[[int, int, str], None]  # (chunks done, chunks total, status message)

# Event kinds of one failed attempt of a chunk, per executor; both count towards its retries.
FAILED_ATTEMPT_EVENTS = events.FAILED_ATTEMPT_EVENTS
ATTEMPTS_RESET_EVENT = events.ATTEMPTS_RESET_EVENT  # the listed chunks start counting afresh


@dataclass(frozen=True)
class ChunkRun:
    index: int
    pages: int
    documents: int
    max_retries: int | None = None  # None: the executor's own limit


@dataclass(frozen=True)
class ChunkOutcome:
    """How one chunk ended: done (its marker exists) or failed after every attempt it had."""

    index: int
    done: bool
    attempts: int                 # attempts so far, earlier runs' included (0: done before this run)
    state: str = COMPLETED        # SLURM's final state, or FAILED/COMPLETED for a local process
    exit_code: str | None = None  # 'code:signal' as SLURM writes it
    log: str = ""
    message: str = ""             # for a failure: batch, chunk, job, state, exit code, attempts, log


def failed_attempts(log: Path, batch: str, *, forget: bool = True) -> dict[int, list[dict[str, Any]]]:
    """The logged failed attempts of every chunk of ``batch``, oldest first; with ``forget``, only
    those after the chunk's last reset."""
    return events.facts(log).batch(batch).failed_attempts(forget=forget)


def describe_end(state: str, exit_code: str | None) -> str:
    """'FAILED (exit code 1:0)', 'killed by SIGABRT', 'COMPLETED without writing its done marker'."""
    if state == COMPLETED:
        return "COMPLETED without writing its done marker"
    code, _, sig = (exit_code or "").partition(":")
    if code == "0" and sig not in ("", "0"):
        try:
            return f"{state} (killed by {signal.Signals(int(sig)).name})"
        except ValueError:
            return f"{state} (killed by signal {sig})"
    return f"{state} (exit code {exit_code or 'unknown'})"


def attempt_count(attempts: int) -> str:
    """'1 attempt', '2 attempts'."""
    return f"{attempts} attempt{'s' if attempts > 1 else ''}"
