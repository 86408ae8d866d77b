"""Fault injection for the kill tests: stop the process at the n-th occurrence of a named point.

The durable-write primitives (atomic renames and deletes, event-log appends, S3 puts) call
``point(name, detail)``. With the environment unset this is one global check and nothing else.

    PIPELINE_FAULT_DIR=/some/folder    count and trace every point reached, across processes
    PIPELINE_PAUSE_AT=<pattern>:<n>    the process reaching the n-th point whose
                                       "<point> <detail>" matches the fnmatch pattern stops
                                       itself ('*' = any point; 'atomic.delete.before */01_*')

Every process that inherits the environment (luigi, its chunk jobs, their engines) shares one
counter in the fault folder, under a file lock, so "the n-th point" is one global sequence.
Each point reached is appended to ``trace.tsv`` (sequence, pid, point, detail). The process that
hits the pause writes ``paused.json`` (pid, process group, point, detail, n) and sends itself
SIGSTOP, so a test can then SIGKILL exactly what it wants: that process, its luigi parent, or the
whole process group, at a known instant rather than after a sleep.
"""
from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FAULT_DIR = "PIPELINE_FAULT_DIR"
PAUSE_AT = "PIPELINE_PAUSE_AT"
COUNTER, TRACE, PAUSED = "counter", "trace.tsv", "paused.json"


@dataclass(frozen=True)
class Settings:
    folder: Path
    pattern: str | None = None  # None: trace only
    occurrence: int = 0


def parse_pause(spec: str) -> tuple[str, int]:
    """'<pattern>:<n>' -> (pattern, n); n counts from 1."""
    pattern, sep, count = spec.rpartition(":")
    if not sep or not pattern or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{PAUSE_AT}={spec!r}: expected '<point pattern>:<n>' with n >= 1, e.g. 'atomic.*:3'")
    return pattern, int(count)


def from_env(env: Mapping[str, str]) -> Settings | None:
    folder = env.get(FAULT_DIR)
    if not folder:
        if env.get(PAUSE_AT):
            raise ValueError(f"{PAUSE_AT} needs {FAULT_DIR} (where the counter and paused.json go)")
        return None
    if env.get(PAUSE_AT):
        pattern, occurrence = parse_pause(env[PAUSE_AT])
        return Settings(Path(folder), pattern, occurrence)
    return Settings(Path(folder))


_settings: Settings | None = None
_lock = threading.Lock()


def configure(env: Mapping[str, str] | None = None) -> Settings | None:
    """Read the settings from ``env`` (default: os.environ); done once at import."""
    global _settings
    _settings = from_env(os.environ if env is None else env)
    return _settings


def point(name: str, detail: object = "") -> None:
    """A named instant (e.g. 'atomic.rename.before'); ``detail`` says which file or record."""
    if _settings is not None:
        _reach(_settings, name, str(detail))


def _reach(settings: Settings, name: str, detail: str) -> None:
    matches = settings.pattern is not None and fnmatch.fnmatchcase(f"{name} {detail}", settings.pattern)
    with _lock, open(settings.folder / COUNTER, "a+b") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        counts = counter.read().split()
        seen, matched = (int(counts[0]), int(counts[1])) if len(counts) == 2 else (0, 0)
        seen += 1
        matched += matches
        counter.seek(0)
        counter.truncate()
        counter.write(f"{seen} {matched}\n".encode())
        counter.flush()
        line = "\t".join((str(seen), str(os.getpid()), name, detail.replace("\t", " ").replace("\n", " ")))
        with open(settings.folder / TRACE, "a", encoding="utf-8", errors="surrogateescape") as trace:
            trace.write(line + "\n")
        pause = matches and matched == settings.occurrence
        if pause:
            record = {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "point": name,
                      "detail": detail, "occurrence": matched, "sequence": seen, "argv": sys.argv}
            tmp = settings.folder / f".{PAUSED}.{os.getpid()}"
            tmp.write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8",
                           errors="surrogateescape")
            os.replace(tmp, settings.folder / PAUSED)
    if pause:  # outside the lock, so the other processes go on while this one waits for its kill
        os.kill(os.getpid(), signal.SIGSTOP)


configure()
