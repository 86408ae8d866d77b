"""The local executor: runs the chunk job script as subprocesses on this machine, ``parallel`` at a time.

Each process gets its chunk's index as SLURM_ARRAY_TASK_ID, as an array element would. Same contract
and retry policy as the SLURM executor (pipeline.executors.base).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import atomic, events
from pipeline.executors.attempts import ChunkOutcome, ChunkRun, Progress, attempt_count, describe_end, failed_attempts
from pipeline.executors.jobscript import render, write_job_script
from pipeline.executors.records import local_record
from pipeline.executors.slurm.states import COMPLETED, FAILED
from pipeline.isolation import available_cpus
from pipeline.layout import BatchPaths, Layout

# What one chunk job is planned to need when [ocr] document_memory_mb sets no figure (its own
# process and the engine's); the automatic parallel_chunks starts no more chunks than memory holds.
CHUNK_MEMORY_MIB = 1024
# Engines that spread one chunk over all cores themselves when [ocr] engine_workers = 0.
SPREADING_ENGINES = ("tesseract", "text")


def automatic_parallel(engine: str, engine_workers: int, cpus: int, available_mib: int,
                       document_memory_mb: int) -> int:
    """Chunks run at once when [ocr] parallel_chunks = 0 (automatic).

    olmocr: 1 (one GPU model at a time). tesseract or text with engine_workers = 0: 2, as each chunk
    already keeps every core busy; the second overlaps the first's start and write-out. Otherwise a
    chunk uses engine_workers cores (1 for a command): as many chunks as the cores take, and no
    more than the available memory holds at document_memory_mb per worker (CHUNK_MEMORY_MIB a chunk
    when that is 0). Always at least 1.
    """
    if engine == "olmocr":
        return 1
    if engine_workers <= 0 and engine in SPREADING_ENGINES:
        return max(1, min(2, cpus))
    per_chunk = max(1, engine_workers) if engine != "command" else 1
    memory = per_chunk * document_memory_mb if document_memory_mb > 0 else CHUNK_MEMORY_MIB
    return max(1, min(cpus // per_chunk, available_mib // max(1, memory)))


def available_memory_mib() -> int:
    """Memory available to new processes (Linux: MemAvailable), in MiB; the total where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20


def parallel_chunks(configured: int, engine: str, engine_workers: int, document_memory_mb: int) -> int:
    """[ocr] parallel_chunks as set, or the automatic figure for this machine when it is 0."""
    if configured > 0:
        return configured
    return automatic_parallel(engine, engine_workers, available_cpus(), available_memory_mib(), document_memory_mb)


def exit_code_text(returncode: int) -> str:
    """A process's return code as SLURM's 'code:signal' (a negative code is a death by signal)."""
    return f"0:{-returncode}" if returncode < 0 else f"{returncode}:0"


@dataclass
class LocalExecutor:
    """Runs ``command`` (the chunk job, ``--chunk N`` appended by the job script) once per chunk."""

    layout: Layout
    command: list[str]
    max_retries: int = 2
    parallel: int = 1

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
        done = paths.done_marker(chunk.index).exists()
        events.append(self.layout.metrics, [local_record(paths.number, chunk.index, chunk.pages, code, done,
                                                         time.monotonic() - started, events.now_iso())])
        return code

    def _run_one(self, paths: BatchPaths, script: Path, chunk: ChunkRun, earlier: list[dict[str, Any]],
                 progress: Callable[[str], None]) -> ChunkOutcome:
        limit = self.max_retries if chunk.max_retries is None else chunk.max_retries
        log = str(paths.chunk_log(chunk.index))
        failures = len(earlier)
        state, exit_code = (earlier[-1].get("state", FAILED), earlier[-1].get("exit_code")) if earlier else ("", None)
        while failures <= limit:
            code = self._attempt(paths, script, chunk, failures + 1)
            if paths.done_marker(chunk.index).exists():
                return ChunkOutcome(chunk.index, True, failures + 1, log=log)
            failures += 1
            state, exit_code = (COMPLETED if code == 0 else FAILED), exit_code_text(code)
            events.log_event(self.layout.events, "local_chunk_failed", batch=paths.number, chunk=chunk.index,
                             state=state, exit_code=exit_code, attempt=failures, log=log)
            if failures <= limit:
                progress(f"chunk {chunk.index} ended {describe_end(state, exit_code)}; "
                         f"running it again (attempt {failures + 1})")
        what = describe_end(state, exit_code)
        progress(f"chunk {chunk.index} FAILED: {what}")
        return ChunkOutcome(chunk.index, False, failures, state, exit_code, log, (
            f"batch {paths.number} chunk {chunk.index}: ended {what} after {attempt_count(failures)}; log: {log}"))

    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> dict[int, ChunkOutcome]:
        script = write_job_script(paths, render(batch=paths.number, command=self.command))
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
                    tell(f"chunk {outcome.index} done ({attempt_count(outcome.attempts)})")
        return outcomes
