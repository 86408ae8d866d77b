"""How chunks run, whatever runs them: the executor protocol and the one factory.

Both executors (pipeline.executors.local, pipeline.executors.slurm.executor) share one contract,
so OCRBatch does not care where chunks run:
    executor.run(batch_paths, chunks, progress) -> {chunk index: ChunkOutcome}
A chunk is done when its done marker exists, whatever the process or the scheduler said. A chunk
that fails is run again up to its retry limit (``max_retries``, the same policy on both executors);
after that its outcome says how it failed and the caller decides (pipeline.stages.bisect splits it).
Failed attempts are written to the event log, so a rerun goes on counting instead of starting over
(pipeline.executors.attempts, whose names callers import from here).

The factory builds either executor from the [ocr] and [slurm] settings the task read. The SLURM
modules load only when chosen: a local run never loads the SLURM client.
"""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Protocol

from pipeline.engines import EngineSettings
from pipeline.executors.attempts import (
    ATTEMPTS_RESET_EVENT,
    FAILED_ATTEMPT_EVENTS,
    ChunkOutcome,
    ChunkRun,
    Progress,
    describe_end,
    failed_attempts,
)
from pipeline.executors.jobscript import job_command
from pipeline.executors.local import LocalExecutor, parallel_chunks
from pipeline.executors.walltime import WalltimeModel, capped, configured_walltime
from pipeline.layout import BatchPaths, Layout

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, SlurmConfig

__all__ = [
    "ATTEMPTS_RESET_EVENT", "FAILED_ATTEMPT_EVENTS", "ChunkOutcome", "ChunkRun", "Executor", "Progress",
    "describe_end", "failed_attempts", "make_executor", "planned_walltime",
]


class Executor(Protocol):
    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> dict[int, ChunkOutcome]: ...


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
    command = job_command(paths.dir, ocr.engine, EngineSettings.from_config(ocr))
    if ocr.executor == "slurm":  # the SLURM modules (and sh) load only here
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
    parallel = parallel_chunks(ocr.parallel_chunks, ocr.engine, ocr.engine_workers, ocr.document_memory_mb)
    return LocalExecutor(layout, command, max_retries=slurm.max_retries, parallel=parallel)


def _configured_walltime(layout: Layout, slurm: SlurmConfig) -> WalltimeModel:
    fixed = WalltimeModel(slurm.walltime_base_seconds, slurm.walltime_seconds_per_page, slurm.walltime_buffer)
    return configured_walltime(fixed, slurm.walltime_model, layout.metrics, slurm.walltime_fit_min_chunks)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]
