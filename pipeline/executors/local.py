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
from pipeline.layout import BatchPaths, Layout


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
