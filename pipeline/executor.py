"""Executors run chunk jobs and wait for them. The local one runs the job script as subprocesses.

Both executors share one contract, so OCRBatch does not care where chunks run:
    executor.run(batch_paths, chunks, progress) -> None, or raises ChunkFailed
A chunk is done when its done marker exists, whatever the process or the scheduler said.
"""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from . import atomic, manifest
from .layout import BatchPaths, Layout

Progress = Callable[[int, int, str], None]  # (chunks done, chunks total, status message)


@dataclass(frozen=True)
class ChunkRun:
    index: int
    pages: int
    documents: int


class ChunkFailed(RuntimeError):
    """A chunk that did not produce its done marker; the message says which, why and where the log is."""


class Executor(Protocol):
    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> None: ...


def write_job_script(paths: BatchPaths, text: str, name: str = "job.sh") -> Path:
    script = paths.logs / name
    atomic.write_bytes(script, text.encode("utf-8"))
    os.chmod(script, 0o755)
    return script


@dataclass
class LocalExecutor:
    """Runs the rendered job script once per chunk, ``parallel`` at a time, on this machine."""

    layout: Layout
    script_text: str
    parallel: int = 1

    def _run_one(self, paths: BatchPaths, script: Path, chunk: ChunkRun) -> tuple[ChunkRun, int, float]:
        log = paths.chunk_log(chunk.index)
        atomic.makedirs(log.parent)
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(chunk.index)}
        started = time.monotonic()
        with open(log, "ab") as out:
            code = subprocess.call(["bash", str(script)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL)
        return chunk, code, time.monotonic() - started

    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> None:
        script = write_job_script(paths, self.script_text)
        done = 0
        failures = []
        progress(done, len(chunks), f"running {len(chunks)} chunks locally, {self.parallel} at a time")
        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            futures = [pool.submit(self._run_one, paths, script, c) for c in chunks]
            for future in as_completed(futures):
                chunk, code, seconds = future.result()
                marker = paths.done_marker(chunk.index)
                log = paths.chunk_log(chunk.index)
                manifest.append(self.layout.metrics, [{
                    "batch": paths.number, "chunk": chunk.index, "pages": chunk.pages, "executor": "local",
                    "state": "COMPLETED" if code == 0 and marker.exists() else "FAILED",
                    "exit_code": code, "elapsed": round(seconds, 3), "end": manifest.now_iso(),
                }])
                if code == 0 and marker.exists():
                    done += 1
                    progress(done, len(chunks), f"chunk {chunk.index} done in {seconds:.1f} s")
                else:
                    why = f"exit code {code}" if code else "exited 0 without writing its done marker"
                    failures.append(f"batch {paths.number} chunk {chunk.index}: {why}; log: {log}")
                    progress(done, len(chunks), f"chunk {chunk.index} FAILED ({why})")
        if failures:
            raise ChunkFailed(
                "OCR failed for " + "; ".join(failures)
                + ". Read the log, fix the cause, and run the same command again: done chunks are kept."
            )
