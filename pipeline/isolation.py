"""Work on untrusted documents in worker processes, each call under a time and a memory limit.

A decompression bomb, a ``/Kids`` cycle or a pathological content stream then costs its own
document: the worker that overruns is killed and replaced, and the caller gets a DocumentFailed
saying why. Workers are reused from document to document and forked from one server process that
has already imported the heavy modules, so a document costs a round trip, not an interpreter start.

    with Workers(Limits(seconds=120, memory_bytes=2 << 30)) as workers:
        for path, result in workers.map(extract, paths):
            ...  # result is extract(path), or a DocumentFailed
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

from pebble import ProcessExpired, ProcessPool

T = TypeVar("T")
R = TypeVar("R")

LOG_LINES = 20  # log lines of the failed call kept for the failure's excerpt
LOG_CHARS = 4000
CPU_MARGIN_SECONDS = 10  # the CPU limit is a backstop for a worker whose parent died; the wall clock rules
# Imported once in the server that forks the workers, so a new worker starts in milliseconds.
PRELOAD = ["pipeline.isolation", "pypdf"]


@dataclass(frozen=True)
class Limits:
    """Per call: wall-clock seconds and the worker's address space in bytes; 0 turns a limit off."""

    seconds: float = 120.0
    memory_bytes: int = 2 << 30


class DocumentFailed(Exception):
    """One document's work failed: ``error`` (a class name), a message and an excerpt of its log."""

    def __init__(self, error: str, message: str, log: str = "") -> None:
        super().__init__(error, message, log)
        self.error, self.message, self.log = error, message, log

    def __str__(self) -> str:
        return f"{self.error}: {self.message}"

    def entry(self, file: str) -> dict[str, str]:
        """The form a chunk's done marker lists it in."""
        return {"file": file, "error": self.error, "message": self.message, "log": self.log}


class WorkersBroken(RuntimeError):
    """Worker processes cannot start at all: a fault of the setup, not of any document."""


def available_cpus() -> int:
    """CPUs this process may use: a SLURM job's allocation, not the whole node."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext:
    # forkserver: workers are forked from a clean single-threaded server, never from a caller that
    # runs threads (forking those can deadlock), and without paying an interpreter start each.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _start_worker(memory_bytes: int) -> None:
    """Runs once in each new worker."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle


class _Recent(logging.Handler):
    """Keeps the last log lines of the current call (pypdf reports what it repaired through logging)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is not worth failing the document for
            pass


def _call(function: Callable[..., R], args: tuple, cpu_seconds: int) -> R:
    """Runs in the worker: the call under a CPU limit, its failure turned into a DocumentFailed."""
    if cpu_seconds:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(usage.ru_utime + usage.ru_stime) + cpu_seconds
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    recent = _Recent()
    root = logging.getLogger()
    root.addHandler(recent)
    try:
        return function(*args)
    except DocumentFailed:
        raise
    except MemoryError:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        raise DocumentFailed("MemoryLimit", f"needed more memory than the limit of {limit >> 20} MiB per document "
                             "(raise [ocr] document_memory_mb if the document is sound)",
                             _excerpt(recent.lines, "")) from None
    except Exception as exc:
        raise DocumentFailed(type(exc).__name__, _text(str(exc)) or repr(exc),
                             _excerpt(recent.lines, traceback.format_exc())) from None
    finally:
        root.removeHandler(recent)


def _text(value: str) -> str:
    """A message that can go into a JSON marker and a UTF-8 log whatever the document put in it."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _excerpt(lines: Iterable[str], trace: str) -> str:
    return _text("\n".join([*lines, trace.strip()]).strip())[-LOG_CHARS:]


def _failure(exc: BaseException, limits: Limits) -> DocumentFailed:
    """What a call's exception in the caller means for its document."""
    if isinstance(exc, DocumentFailed):
        return exc
    if isinstance(exc, FutureTimeout):
        return DocumentFailed("TimeLimit", f"still running after {limits.seconds:g} s; stopped "
                              "(raise [ocr] document_timeout if the document is sound)")
    if isinstance(exc, ProcessExpired):
        code = exc.exitcode
        if code == -signal.SIGXCPU:
            return DocumentFailed("TimeLimit", "used up its CPU time limit; stopped "
                                  "(raise [ocr] document_timeout if the document is sound)")
        name = signal.Signals(-code).name if code is not None and code < 0 and -code in signal.valid_signals() else None
        return DocumentFailed("WorkerDied", f"the worker process died ({name or f'exit status {code}'})"
                              + (", probably out of memory" if name == "SIGKILL" else ""))
    return DocumentFailed(type(exc).__name__, _text(str(exc)) or repr(exc))


class Workers:
    """A few worker processes for one stretch of work (a chunk); use as a context manager."""

    def __init__(self, limits: Limits, workers: int = 1) -> None:
        self.limits = limits
        self.workers = max(1, workers)
        self._pool: ProcessPool | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            # stop() kills workers still busy (an interruption); join() then reaps them.
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def _started(self) -> ProcessPool:
        if self._pool is None:
            self._pool = ProcessPool(max_workers=self.workers, initializer=_start_worker,
                                     initargs=(self.limits.memory_bytes,), context=_context())
        return self._pool

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R | DocumentFailed]]:
        """``(item, function(item))`` in the order of ``items``; a failed call yields a DocumentFailed.

        ``function`` must be importable by name (a module-level function): workers import it.
        """
        items = list(items)
        if not items:
            return
        pool = self._started()
        cpu = int(self.limits.seconds) + CPU_MARGIN_SECONDS if self.limits.seconds else 0
        timeout = self.limits.seconds or None
        futures = [(item, pool.schedule(_call, args=(function, (item,), cpu), timeout=timeout)) for item in items]
        try:
            for item, future in futures:
                try:
                    yield item, future.result()
                except BrokenProcessPool as exc:
                    raise WorkersBroken(
                        f"worker processes cannot start ({exc}); check that this Python imports pipeline and "
                        f"pypdf, and that the memory limit ({self.limits.memory_bytes >> 20} MiB) is not too small"
                    ) from exc
                except Exception as exc:
                    yield item, _failure(exc, self.limits)
        finally:
            for _, future in futures:
                future.cancel()
