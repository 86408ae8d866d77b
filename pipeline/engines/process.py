"""Engine programs: the one bounded subprocess runner and the one command-template expander.

A program runs without a shell; a timeout or an interruption ends it together with every process
it started (olmOCR starts a vLLM server), not only the first one.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from pipeline.engines import EngineFailed

TERMINATE_GRACE_SECONDS = 20.0
_PLACEHOLDER = re.compile(r"\{(\w*)\}")
T = TypeVar("T")


class TimedOut(EngineFailed):
    """The program was still running when its time was up; it and its processes were ended."""

    def __init__(self, program: str, seconds: float) -> None:
        super().__init__(f"{program} still running after {seconds:.0f} s; stopped")
        self.seconds = seconds


def run_bounded(
    args: list[str], *, timeout: float | None, cwd: Path | None = None, log: Path | None = None,
    own_group: bool = True, stop: threading.Event | None = None,
) -> int:
    """Run ``args`` (no shell) and return its exit status; raises TimedOut after ``timeout`` seconds
    (None or 0: no limit), OSError when it cannot start.

    Output goes to our stdout/stderr, or both into the file ``log``. With ``own_group`` the program
    gets a process group of its own, ended as a group. Without it, it stays in ours, so whatever
    stops us (Ctrl-C, a kill of our process group) stops it too, and it is ended with its process
    tree: a document command of a cloud shard must not outlive a RunShard that was killed.
    Once ``stop`` is set the program is ended the same way and Stopped raised.
    """
    with open(log, "wb") if log is not None else contextlib.nullcontext() as out:
        process = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT if out else None, start_new_session=own_group)
        wait = process.wait if stop is None else partial(_wait_unless, process, args[0], stop)
        return _bounded(process, wait, args[0], timeout, own_group)


class Stopped(EngineFailed):
    """The program was ended because its work is no longer wanted (a cloud document's claim was lost)."""


def _wait_unless(process: subprocess.Popen, program: str, stop: threading.Event, timeout: float | None) -> int:
    """``process.wait(timeout)`` that raises Stopped (the caller ends the program) once ``stop`` is set."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        try:
            return process.wait(timeout=max(0.0, left))
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        if stop.is_set():
            raise Stopped(f"{program} stopped: its work is no longer wanted")


def run_captured(
    args: list[str], *, timeout: float | None, env: dict[str, str] | None = None, own_group: bool = True,
) -> tuple[int, bytes, bytes]:
    """Like run_bounded, for a program whose output is the result: (exit status, stdout, stderr)."""
    process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=own_group)
    out, err = _bounded(process, process.communicate, args[0], timeout, own_group)
    return process.returncode, out, err


def _bounded(process: subprocess.Popen, wait: Callable[..., T], program: str, timeout: float | None,
             own_group: bool) -> T:
    """``wait(timeout=...)`` for ``process``; on a timeout or an interruption, end it and its processes."""
    try:
        return wait(timeout=timeout or None)
    except subprocess.TimeoutExpired:
        end(process, own_group)
        raise TimedOut(program, timeout or 0) from None
    except BaseException:
        end(process, own_group)
        raise


def end(process: subprocess.Popen, own_group: bool = True) -> None:
    """SIGTERM the program and its processes, SIGKILL what is left after the grace time."""
    if own_group:
        _end_group(process)
    else:
        _end_tree(process)


def _end_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    # The group outlives its leader when a child ignored SIGTERM: the group id is still ours to end.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _end_tree(process: subprocess.Popen) -> None:
    import psutil

    try:
        # Found before the leader ends: its children are orphaned then, and no longer found from it.
        others = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        others = []
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    process.terminate()
    for member in others:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    # psutil checks each process's start time: a pid reused meanwhile is never signalled.
    _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.kill()  # a no-op when it has ended
    process.wait()


def expand(template: list[str], values: dict[str, str], *, strict: bool = False) -> list[str]:
    """Fill ``{name}`` placeholders inside each argument in one pass (a value is never expanded again).

    An unknown ``{name}`` is left as it is, or raises ValueError when ``strict``; other braces
    (JSON in an argument) are always left alone.
    """
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return values[name]
        if strict:
            raise ValueError(f"unknown placeholder {{{name}}} in the command; use {', '.join(values)}")
        return match.group(0)

    return [_PLACEHOLDER.sub(fill, arg) for arg in template]
