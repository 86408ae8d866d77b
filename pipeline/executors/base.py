"""Executors run chunk jobs and wait for them. The local one runs the job script as subprocesses.

Both executors share one contract, so OCRBatch does not care where chunks run:
    executor.run(batch_paths, chunks, progress) -> {chunk index: ChunkOutcome}
A chunk is done when its done marker exists, whatever the process or the scheduler said. A chunk
that fails is run again up to its retry limit (``max_retries``, the same policy on both executors);
after that its outcome says how it failed and the caller decides (pipeline.stages.bisect splits it).
Failed attempts are written to the event log, so a rerun goes on counting instead of starting over.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import atomic, events
from pipeline.layout import BatchPaths, Layout
from pipeline.stages.chunks import WalltimeModel

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, SlurmConfig

Progress = Callable[[int, int, str], None]  # (chunks done, chunks total, status message)

# Event kinds of one failed attempt of a chunk, per executor; both count towards its retries.
FAILED_ATTEMPT_EVENTS = ("slurm_chunk_failed", "local_chunk_failed")
ATTEMPTS_RESET_EVENT = "chunk_attempts_reset"  # the listed chunks start counting afresh


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
    state: str = "COMPLETED"      # SLURM's final state, or FAILED/COMPLETED for a local process
    exit_code: str | None = None  # 'code:signal' as SLURM writes it
    log: str = ""
    message: str = ""             # for a failure: batch, chunk, job, state, exit code, attempts, log


class Executor(Protocol):
    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> dict[int, ChunkOutcome]: ...


def write_job_script(paths: BatchPaths, text: str, name: str = "job.sh") -> Path:
    script = paths.logs / name
    atomic.write_bytes(script, text.encode("utf-8"))
    os.chmod(script, 0o755)
    return script


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


def exit_code_text(returncode: int) -> str:
    """A process's return code as SLURM's 'code:signal' (a negative code is a death by signal)."""
    return f"0:{-returncode}" if returncode < 0 else f"{returncode}:0"


def describe_end(state: str, exit_code: str | None) -> str:
    """'FAILED (exit code 1:0)', 'killed by SIGABRT', 'COMPLETED without writing its done marker'."""
    if state == "COMPLETED":
        return "COMPLETED without writing its done marker"
    code, _, sig = (exit_code or "").partition(":")
    if code == "0" and sig not in ("", "0"):
        try:
            return f"{state} (killed by {signal.Signals(int(sig)).name})"
        except ValueError:
            return f"{state} (killed by signal {sig})"
    return f"{state} (exit code {exit_code or 'unknown'})"


@dataclass
class LocalExecutor:
    """Runs the rendered job script once per chunk, ``parallel`` at a time, on this machine."""

    layout: Layout
    script_text: str
    parallel: int = 1
    max_retries: int = 2

    def _attempt(self, paths: BatchPaths, script: Path, chunk: ChunkRun, attempt: int) -> int:
        log = paths.chunk_log(chunk.index)
        atomic.makedirs(log.parent)
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(chunk.index)}
        started = time.monotonic()
        with open(log, "ab") as out:  # every attempt appends: earlier ones stay readable
            out.write(f"--- attempt {attempt} of chunk {chunk.index} ---\n".encode())
            out.flush()
            code = subprocess.call(["bash", str(script)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        done = paths.done_marker(chunk.index).exists()
        events.append(self.layout.metrics, [{
            "batch": paths.number, "chunk": chunk.index, "pages": chunk.pages, "executor": "local",
            "state": "COMPLETED" if code == 0 and done else "FAILED",
            "exit_code": code, "elapsed": round(seconds, 3), "end": events.now_iso(),
        }])
        return code

    def _run_one(self, paths: BatchPaths, script: Path, chunk: ChunkRun, earlier: list[dict[str, Any]],
                 progress: Callable[[str], None]) -> ChunkOutcome:
        limit = self.max_retries if chunk.max_retries is None else chunk.max_retries
        log = str(paths.chunk_log(chunk.index))
        failures = len(earlier)
        state, exit_code = (earlier[-1].get("state", "FAILED"), earlier[-1].get("exit_code")) if earlier else ("", None)
        while failures <= limit:
            code = self._attempt(paths, script, chunk, failures + 1)
            if paths.done_marker(chunk.index).exists():
                return ChunkOutcome(chunk.index, True, failures + 1, log=log)
            failures += 1
            state, exit_code = ("COMPLETED" if code == 0 else "FAILED"), exit_code_text(code)
            events.log_event(self.layout.events, "local_chunk_failed", batch=paths.number, chunk=chunk.index,
                               state=state, exit_code=exit_code, attempt=failures, log=log)
            if failures <= limit:
                progress(f"chunk {chunk.index} ended {describe_end(state, exit_code)}; "
                         f"running it again (attempt {failures + 1})")
        what = describe_end(state, exit_code)
        progress(f"chunk {chunk.index} FAILED: {what}")
        return ChunkOutcome(chunk.index, False, failures, state, exit_code, log, (
            f"batch {paths.number} chunk {chunk.index}: ended {what} after {failures} "
            f"attempt{'s' if failures > 1 else ''}; log: {log}"))

    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> dict[int, ChunkOutcome]:
        script = write_job_script(paths, self.script_text)
        earlier = failed_attempts(self.layout.events, paths.number)
        outcomes: dict[int, ChunkOutcome] = {}
        todo = []
        for chunk in chunks:
            if paths.done_marker(chunk.index).exists():
                outcomes[chunk.index] = ChunkOutcome(chunk.index, True, 0, log=str(paths.chunk_log(chunk.index)))
            else:
                todo.append(chunk)
        total = len(chunks)
        lock = threading.Lock()

        def tell(message: str) -> None:
            with lock:
                progress(sum(o.done for o in outcomes.values()), total, message)

        tell(f"running {len(todo)} chunks locally, {self.parallel} at a time")
        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            futures = [pool.submit(self._run_one, paths, script, c, earlier.get(c.index, []), tell) for c in todo]
            for future in as_completed(futures):
                outcome = future.result()
                with lock:
                    outcomes[outcome.index] = outcome
                if outcome.done:
                    tell(f"chunk {outcome.index} done ({outcome.attempts} attempt{'s' if outcome.attempts > 1 else ''})")
        return outcomes


def planned_walltime(layout: Layout, ocr: OCRConfig, slurm: SlurmConfig) -> WalltimeModel:
    """The model the SLURM executor asks for, so chunks.json shows each chunk's walltime request."""
    from pipeline.executors.slurm.executor import capped, configured_walltime

    model = configured_walltime(layout)
    # The cap needs the cluster: only a SLURM run asks it (a local run records the uncapped figure).
    return capped(model, slurm.partition) if ocr.executor == "slurm" else model


def make_executor(layout: Layout, paths: BatchPaths, ocr: OCRConfig, slurm: SlurmConfig) -> Executor:
    """The executor [ocr] executor names, running the chunk job of ``paths``' batch."""
    from pipeline.engines import EngineSettings
    from pipeline.executors.jobscript import job_command, render

    command = job_command(paths.dir, ocr.engine, EngineSettings.from_config(ocr))
    if ocr.executor == "slurm":
        from pipeline.executors.slurm.executor import SlurmExecutor

        return SlurmExecutor.from_config(layout, command)
    return LocalExecutor(layout, render(batch=paths.number, command=command), ocr.parallel_chunks,
                         slurm.max_retries)
