"""Engine programs: the one bounded subprocess runner and the one command-template expander.

A program runs without a shell, in a process group of its own, so a timeout or an interruption
ends everything it started (olmOCR starts a vLLM server), not only the first process.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from pipeline.engines import EngineFailed

TERMINATE_GRACE_SECONDS = 20.0
_PLACEHOLDER = re.compile(r"\{(\w*)\}")


class TimedOut(EngineFailed):
    """The program was still running when its time was up; its whole process group was ended."""

    def __init__(self, program: str, seconds: float) -> None:
        super().__init__(f"{program} still running after {seconds:.0f} s; stopped")
        self.seconds = seconds


def run_bounded(args: list[str], *, timeout: float | None, cwd: Path | None = None, log: Path | None = None) -> int:
    """Run ``args`` (no shell) and return its exit status; raises TimedOut after ``timeout`` seconds
    (None or 0: no limit), OSError when it cannot start.

    Output goes to our stdout/stderr, or both into the file ``log``.
    """
    with open(log, "wb") if log is not None else contextlib.nullcontext() as out:
        process = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT if out else None, start_new_session=True)
        try:
            return process.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            end_group(process)
            raise TimedOut(args[0], timeout or 0) from None
        except BaseException:
            end_group(process)
            raise


def end_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after the grace time, and SIGKILL what the leader left behind."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    # The group outlives its leader when a child ignored SIGTERM: the group id is still ours to end.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
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
