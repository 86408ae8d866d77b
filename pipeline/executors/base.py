"""How chunks run, whatever runs them: the executor protocol, its errors, and the one factory.

Both executors (pipeline.executors.local, pipeline.executors.slurm.executor) share one contract,
so OCRBatch does not care where chunks run:
    executor.run(batch_paths, chunks, progress) -> {chunk index: ChunkOutcome}
A chunk is done when its done marker exists, whatever the process or the scheduler said. A chunk
that fails is run again up to its retry limit (``max_retries``, the same policy on both executors);
after that its outcome says how it failed and the caller decides (pipeline.stages.bisect splits it).
Failed attempts are written to the event log, so a rerun goes on counting instead of starting over.
"""
from __future__ import annotations

import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import events
from pipeline.executors.slurm.states import COMPLETED
from pipeline.executors.walltime import WalltimeModel, capped, configured_walltime
from pipeline.layout import BatchPaths, Layout

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, SlurmConfig

Progress = Callable[[int, int, str], None]  # (chunks done, chunks total, status message)

# Event kinds of one failed attempt of a chunk, per executor; both count towards its retries.
FAILED_ATTEMPT_EVENTS = ("slurm_chunk_failed", "local_chunk_failed")
ATTEMPTS_RESET_EVENT = "chunk_attempts_reset"  # the listed chunks start counting afresh


class SlurmError(RuntimeError):
    """A SLURM command failed or answered something unreadable; the jobs themselves may be fine."""


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


class Executor(Protocol):
    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> dict[int, ChunkOutcome]: ...


def failed_attempts(log: Path, batch: str, *, forget: bool = True) -> dict[int, list[dict[str, Any]]]:
    """The logged failed attempts of every chunk of ``batch``, oldest first; with ``forget``, only
    those after the chunk's last reset."""
    found: dict[int, list[dict[str, Any]]] = {}
    for record in events.read(log):
        if record.get("batch") != batch:
            continue
        if record.get("event") in FAILED_ATTEMPT_EVENTS and "chunk" in record:
            found.setdefault(int(record["chunk"]), []).append(record)
        elif forget and record.get("event") == ATTEMPTS_RESET_EVENT:
            for chunk in record.get("chunks", []):
                found.pop(int(chunk), None)
    return found


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


# --- the factory: settings in, an executor out. The backends load when chosen (no cycle with them,
# and a local run never loads the SLURM client).

def planned_walltime(layout: Layout, ocr: OCRConfig, slurm: SlurmConfig) -> WalltimeModel:
    """The walltime model chunks ask for, so chunks.json shows each chunk's request.

    The cap needs the cluster: only a SLURM run asks it (a local run records the uncapped figure).
    """
    model = _configured_walltime(layout, slurm)
    if ocr.executor != "slurm":
        return model
    from pipeline.executors.slurm.client import SlurmClient

    return capped(model, SlurmClient(slurm.command_timeout).partition_max_time(slurm.partition or None))


def make_executor(layout: Layout, paths: BatchPaths, ocr: OCRConfig, slurm: SlurmConfig) -> Executor:
    """The executor [ocr] executor names, running the chunk job of ``paths``' batch."""
    from pipeline.engines import EngineSettings
    from pipeline.executors.jobscript import job_command

    command = job_command(paths.dir, ocr.engine, EngineSettings.from_config(ocr))
    if ocr.executor == "slurm":
        from pipeline.executors.slurm.client import SlurmClient
        from pipeline.executors.slurm.executor import SlurmExecutor

        return SlurmExecutor(
            layout, command, max_retries=slurm.max_retries, client=SlurmClient(slurm.command_timeout),
            partition=slurm.partition, account=slurm.account, gres=slurm.gres, cpus_per_task=slurm.cpus_per_task,
            mem=slurm.mem, extra_args=shlex.split(slurm.extra_args), directives=_lines(slurm.directives),
            env_setup=_lines(slurm.env_setup), array_throttle=slurm.array_throttle,
            walltime=_configured_walltime(layout, slurm), timeout_walltime_factor=slurm.timeout_walltime_factor,
            poll_initial=slurm.poll_initial_seconds, poll_max=slurm.poll_max_seconds, poll_growth=slurm.poll_growth,
            max_query_failures=slurm.max_query_failures, lost_after=slurm.lost_after_seconds,
            cancel_on_exit=slurm.cancel_on_exit,
        )
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor(layout, command, max_retries=slurm.max_retries, parallel=ocr.parallel_chunks)


def _configured_walltime(layout: Layout, slurm: SlurmConfig) -> WalltimeModel:
    fixed = WalltimeModel(slurm.walltime_base_seconds, slurm.walltime_seconds_per_page, slurm.walltime_buffer)
    return configured_walltime(fixed, slurm.walltime_model, layout.metrics, slurm.walltime_fit_min_chunks)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]
