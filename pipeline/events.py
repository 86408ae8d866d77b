"""The append-only NDJSON logs (_manifests/events.ndjson, metrics.ndjson): whole lines under concurrency."""
from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import atomic, faults


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def append(path: Path, records: list[dict[str, Any]], *, sync: bool = True) -> None:
    """Append records as lines in one O_APPEND write, so concurrent writers never interleave lines."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
    atomic.makedirs(Path(path).parent)
    what = f"{Path(path).name}:{records[0].get('event', '')}"  # names the point for fault injection
    faults.point("events.append.before", what)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a killed writer left a torn line: keep these records off it
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    faults.point("events.append.after", what)


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """Build one event record (``event`` is the kind, ``time`` an ISO timestamp)."""
    return {"event": kind, "time": now_iso(), **fields}


def log_event(path: Path, kind: str, **fields: Any) -> None:
    append(path, [event(kind, **fields)])


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Records of an NDJSON file; a torn last line (killed writer) or a bad line is skipped."""
    try:
        handle = open(path, "rb")  # bytes: a line torn inside a UTF-8 character is one bad line, no error
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record

