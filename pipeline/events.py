"""The append-only NDJSON logs (_manifests/events.ndjson, metrics.ndjson): whole lines under concurrency,
and the event log's compaction, so that it stays small and its readers stay fast.

Compaction moves the first X bytes of the live log into gzip segments under ``_manifests/events/``
and writes a snapshot of the facts readers need (``snapshot.json``: per batch the last submission of
each chunk, its failed attempts and resets, the last batch failure; the log's first time and last
progress), then replaces the live log with its tail. Durable steps, each one atomic (temp + fsync +
rename), so a kill at any instant loses nothing and counts nothing twice:

1. segments ``segment_NNNNNN.ndjson.gz`` hold bytes [0, X) of live log generation G (whole lines);
   a segment the snapshot does not list is ignored (and replaced by the next compaction);
2. the snapshot names the segments and says "covers generation G up to byte X": from here readers
   skip the first X bytes of a live log of generation G;
3. under the log's exclusive lock the live log is replaced by a header line (generation G + 1) and
   its bytes from X on; readers of generation G + 1 skip nothing. A compaction that finds step 2 done
   and step 3 not finishes step 3 first.

Appenders hold a shared lock on the live log while they write and check that it is still the file at
the path, so no line goes to a replaced log. Readers need no lock: they pair the live log they opened
with a snapshot that matches its generation (retrying when a compaction moved on in between).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline import atomic, faults

# Event kinds whose facts the snapshot keeps (the executors, bisection and Status fold them).
SUBMITTED_EVENT = "slurm_submitted"
FAILED_ATTEMPT_EVENTS = ("slurm_chunk_failed", "local_chunk_failed")  # one failed attempt of a chunk
ATTEMPTS_RESET_EVENT = "chunk_attempts_reset"  # the listed chunks start counting afresh
BATCH_FAILED_EVENT = "batch_task_failed"       # a batch stage raised; Status shows it until the batch moves
PROGRESS_EVENTS = ("chunk_done", "split", "finalized", "batch_finalized")
HEADER_EVENT = "events_compacted"  # first line of a live log that follows a compaction; not an event

SEGMENTS = "events"                # folder beside the live log
SNAPSHOT = "snapshot.json"
SEGMENT_BYTES = 256 << 20          # raw bytes per segment at most (memory of one compressed segment)
_BLOCK = 8 << 20
_KINDS = (SUBMITTED_EVENT, *FAILED_ATTEMPT_EVENTS, ATTEMPTS_RESET_EVENT, BATCH_FAILED_EVENT, "chunk_done",
          "batch_finalized")
# As append writes them (json.dumps' separators): a search for these skips the per-document lines unparsed.
_WANTED = re.compile(rb'"event": "(?:%s)"' % b"|".join(re.escape(k.encode()) for k in _KINDS))
_PROGRESS = [b'"event": "%s"' % k.encode() for k in PROGRESS_EVENTS]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def append(path: Path, records: list[dict[str, Any]], *, sync: bool = True) -> None:
    """Append records as lines in one O_APPEND write, so concurrent writers never interleave lines.

    The write holds a shared lock on the log and goes to the file still at ``path``: a compaction
    replaces the log only under the exclusive lock."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
    atomic.makedirs(Path(path).parent)
    what = f"{Path(path).name}:{records[0].get('event', '')}"  # names the point for fault injection
    faults.point("events.append.before", what)
    with _locked(path, fcntl.LOCK_SH) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a killed writer left a torn line: keep these records off it
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    faults.point("events.append.after", what)


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[int]:
    """The log at ``path`` opened for appending under a flock, after a compaction's replacement if any."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                yield fd
                return
        finally:
            os.close(fd)  # also releases the lock


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """Build one event record (``event`` is the kind, ``time`` an ISO timestamp)."""
    return {"event": kind, "time": now_iso(), **fields}


def log_event(path: Path, kind: str, **fields: Any) -> None:
    append(path, [event(kind, **fields)])


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one NDJSON file; a torn last line (killed writer) or a bad line is skipped.

    For the event log, ``records`` also reads what compaction moved into segments."""
    try:
        handle = open(path, "rb")  # bytes: a line torn inside a UTF-8 character is one bad line, no error
    except FileNotFoundError:
        return
    with handle:
        yield from _records(handle)


def _records(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        record = _parse(line)
        if record is not None and record.get("event") != HEADER_EVENT:
            yield record


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a torn line of a killed writer
    return record if isinstance(record, dict) else None


# --- what readers need, folded from the log ---------------------------------------------------------

@dataclass
class BatchFacts:
    """What the log says about one batch's chunks."""

    submissions: dict[int, dict[str, Any]] = field(default_factory=dict)  # last slurm_submitted per chunk
    failed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # every failed attempt, oldest first
    reset_at: dict[int, int] = field(default_factory=dict)  # failed attempts before the chunk's last reset
    reset: set[int] = field(default_factory=set)  # chunks of the last reset not submitted or failed since
    failure: dict[str, Any] | None = None  # the last batch_task_failed not followed by another batch event

    def failed_attempts(self, *, forget: bool = True) -> dict[int, list[dict[str, Any]]]:
        """Failed attempts per chunk, oldest first; with ``forget`` only those after its last reset."""
        found = {c: a[self.reset_at.get(c, 0) if forget else 0:] for c, a in self.failed.items()}
        return {c: a for c, a in found.items() if a}


@dataclass
class Facts:
    batches: dict[str, BatchFacts] = field(default_factory=dict)
    first_time: str | None = None     # time of the log's first line ("" when it has none); None: empty log
    last_progress: str | None = None  # time of the last progress event logged

    def batch(self, batch: str) -> BatchFacts:
        return self.batches.get(batch) or BatchFacts()

    def fold(self, record: dict[str, Any]) -> None:
        batch, kind = record.get("batch"), record.get("event")
        if not isinstance(batch, str) or kind not in _KINDS:
            return
        state = self.batches.setdefault(batch, BatchFacts())
        if kind == BATCH_FAILED_EVENT:
            state.failure = record
            return
        state.failure = None  # the batch moved after its failure: a rerun is at work
        try:
            if kind in FAILED_ATTEMPT_EVENTS and "chunk" in record:
                chunk = int(record["chunk"])
                state.failed.setdefault(chunk, []).append(record)
                state.reset.discard(chunk)
            elif kind == ATTEMPTS_RESET_EVENT:
                chunks = [int(c) for c in record.get("chunks", [])]
                for chunk in chunks:
                    state.reset_at[chunk] = len(state.failed.get(chunk, []))
                state.reset = set(chunks)
            elif kind == SUBMITTED_EVENT:
                for chunk in [int(c) for c in record.get("chunks", [])]:
                    state.submissions[chunk] = record
                    state.reset.discard(chunk)
        except (TypeError, ValueError):
            return  # a chunk that is not a number: no reader could use the record

    def scan(self, data: bytes, *, first: bool) -> None:
        """Fold the wanted records of ``data`` (whole lines) without parsing the others; ``first``: it
        starts the log."""
        if first and self.first_time is None and data:
            record = _parse(data[:data.find(b"\n")])
            self.first_time = str(record.get("time", "")) if record else ""
        for match in _WANTED.finditer(data):
            record = _parse(_line(data, match.start()))
            if record is not None:
                self.fold(record)
        end = len(data)
        while (at := max(data.rfind(p, 0, end) for p in _PROGRESS)) >= 0:  # the block's last progress line
            record = _parse(_line(data, at))
            if record is not None and record.get("event") in PROGRESS_EVENTS and isinstance(record.get("time"), str):
                self.last_progress = record["time"]
                break
            end = data.rfind(b"\n", 0, at) + 1

    def to_json(self) -> dict[str, Any]:
        batches = {}
        for number, state in self.batches.items():
            shared: dict[int, tuple[dict[str, Any], list[int]]] = {}  # one submission, many chunks
            for chunk, record in state.submissions.items():
                shared.setdefault(id(record), (record, []))[1].append(chunk)
            batches[number] = {"submissions": list(shared.values()), "failed": list(state.failed.items()),
                               "reset_at": list(state.reset_at.items()), "reset": sorted(state.reset),
                               "failure": state.failure}
        return {"batches": batches, "first_time": self.first_time, "last_progress": self.last_progress}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Facts:
        facts = cls(first_time=value["first_time"], last_progress=value["last_progress"])
        for number, state in value["batches"].items():
            facts.batches[number] = BatchFacts(
                submissions={c: record for record, chunks in state["submissions"] for c in chunks},
                failed={c: a for c, a in state["failed"]}, reset_at={c: n for c, n in state["reset_at"]},
                reset=set(state["reset"]), failure=state["failure"])
        return facts


def _line(data: bytes, at: int) -> bytes:
    start = data.rfind(b"\n", 0, at) + 1
    end = data.find(b"\n", at)
    return data[start:end if end >= 0 else len(data)]


def _blocks(handle: IO[bytes], start: int, end: int | None, block: int = _BLOCK) -> Iterator[bytes]:
    """Whole lines of ``handle`` from byte ``start`` to ``end`` (None: its end), in blocks of about ``block``."""
    handle.seek(start)
    position, carry = start, b""
    while True:
        size = block if end is None else min(block, end - position)
        read = handle.read(size) if size > 0 else b""
        position += len(read)
        data = carry + read
        if not read:
            if data:
                yield data
            return
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        carry = data[cut:]


# --- snapshot + live tail -------------------------------------------------------------------------

class LogMismatch(RuntimeError):
    """The live log and the snapshot of its compacted part do not belong together."""


@dataclass(frozen=True)
class _Snapshot:
    generation: int            # the live log generation it covers
    offset: int                # up to this byte
    segments: list[dict[str, Any]]
    facts: dict[str, Any]


def _load_snapshot(folder: Path) -> _Snapshot | None:
    try:
        value = atomic.read_json(folder / SNAPSHOT)
    except FileNotFoundError:
        return None
    return _Snapshot(value["generation"], value["offset"], value["segments"], value["facts"])


def _generation(handle: IO[bytes]) -> int:
    handle.seek(0)
    record = _parse(handle.readline())
    if record is not None and record.get("event") == HEADER_EVENT and isinstance(record.get("generation"), int):
        return int(record["generation"])
    return 0


@contextlib.contextmanager
def _live(path: Path) -> Iterator[tuple[_Snapshot | None, IO[bytes] | None, int]]:
    """(snapshot, the live log open, the byte of it where the records after the snapshot begin)."""
    folder = Path(path).parent / SEGMENTS
    for _ in range(20):  # a compaction between opening the log and reading the snapshot: pair them again
        try:
            handle: IO[bytes] | None = open(path, "rb")
        except FileNotFoundError:
            handle = None
        try:
            snapshot = _load_snapshot(folder)
            generation = _generation(handle) if handle is not None else 0
            if snapshot is None and generation == 0:
                skip = 0
            elif (snapshot is not None and handle is not None and generation == snapshot.generation
                  and os.fstat(handle.fileno()).st_size >= snapshot.offset):
                skip = snapshot.offset
            elif snapshot is not None and (handle is None or generation == snapshot.generation + 1):
                skip = 0
            else:
                continue
            yield snapshot, handle, skip
            return
        finally:
            if handle is not None:
                handle.close()
    raise LogMismatch(f"{path} (generation {generation}) does not follow {folder / SNAPSHOT} (generation "
                      f"{snapshot.generation if snapshot else 'none'}): the log or the snapshot was replaced by "
                      "hand; put back the files that belong together, then rerun")


def facts(path: Path) -> Facts:
    """What the event log at ``path`` says (see Facts), from the snapshot and the live log's tail:
    the same whether or not, and however often, the log was compacted."""
    with _live(path) as (snapshot, handle, skip):
        found = Facts.from_json(snapshot.facts) if snapshot is not None else Facts()
        if handle is not None:
            for n, data in enumerate(_blocks(handle, skip, None)):
                found.scan(data, first=n == 0 and skip == 0)
    return found


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of the event log at ``path``, oldest first: its segments, then the live log."""
    with _live(path) as (snapshot, handle, skip):
        folder = Path(path).parent / SEGMENTS
        for segment in snapshot.segments if snapshot is not None else []:
            with gzip.open(folder / segment["name"], "rb") as lines:
                yield from _records(lines)
        if handle is not None:
            handle.seek(skip)
            yield from _records(handle)


# --- compaction -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compacted:
    segments: list[str]   # the segments written
    bytes: int            # live log bytes moved into them
    tail: int             # bytes left in the live log


def compact(path: Path, *, min_bytes: int = 0,
            progress: Callable[[str], None] = lambda message: None) -> Compacted | None:
    """Compact the event log at ``path`` when its live part holds at least ``min_bytes`` (see the
    module's docstring for the steps). Returns None when there was nothing to do or another process
    is compacting it."""
    path = Path(path)
    folder = path.parent / SEGMENTS
    try:
        if path.stat().st_size < max(min_bytes, 1):
            return None  # checked first: a small log gets no lock file and no folder
    except FileNotFoundError:
        return None
    atomic.makedirs(folder)
    lock = os.open(folder / "compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another process compacts this log now
        return _compact(path, folder, min_bytes, progress)
    finally:
        os.close(lock)


def _compact(path: Path, folder: Path, min_bytes: int, progress: Callable[[str], None]) -> Compacted | None:
    snapshot = _load_snapshot(folder)
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        generation = _generation(handle)
    if snapshot is not None and generation == snapshot.generation:
        faults.point("events.compact", "finish an earlier swap")
        _swap(path, snapshot)  # an earlier compaction was killed after its snapshot
        generation += 1
    elif (snapshot is None) != (generation == 0) or (snapshot and generation != snapshot.generation + 1):
        raise LogMismatch(f"{path} (generation {generation}) does not follow {folder / SNAPSHOT}: put back the "
                          "files that belong together, then rerun")
    known = list(snapshot.segments) if snapshot is not None else []
    _remove_unlisted(folder, {s["name"] for s in known})
    found = Facts.from_json(snapshot.facts) if snapshot is not None else Facts()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < max(min_bytes, 1):
            return None
        end = _last_line_end(handle, size)
        handle.seek(0)
        if end <= (len(handle.readline()) if generation else 0):
            return None  # nothing but the header
        progress(f"compacting {path}: {end:,} bytes into segments")
        written: list[dict[str, Any]] = []
        parts: list[bytes] = []
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
        raw = 0

        def write_segment() -> None:
            name = f"segment_{len(known) + len(written) + 1:06d}.ndjson.gz"
            atomic.write_bytes(folder / name, b"".join(parts) + packer.flush(), sync_dir=False)
            written.append({"name": name, "bytes": raw, "generation": generation})
            progress(f"compacting {path}: {sum(s['bytes'] for s in written):,} of {end:,} bytes")

        for n, data in enumerate(_blocks(handle, 0, end, min(_BLOCK, SEGMENT_BYTES))):
            if raw and raw + len(data) > SEGMENT_BYTES:
                write_segment()
                parts, raw, packer = [], 0, zlib.compressobj(6, zlib.DEFLATED, 31)
            found.scan(data, first=n == 0 and generation == 0)
            parts.append(packer.compress(data))
            raw += len(data)
        write_segment()
    atomic.fsync_dir(folder)
    faults.point("events.compact", "segments written")
    new = _Snapshot(generation, end, known + written, found.to_json())
    atomic.write_json(folder / SNAPSHOT, {"generation": new.generation, "offset": new.offset,
                                          "segments": new.segments, "facts": new.facts})
    faults.point("events.compact", "snapshot written")
    tail = _swap(path, new)
    faults.point("events.compact", "log replaced")
    names = [s["name"] for s in written]
    progress(f"compacted {path}: {end:,} bytes into {', '.join(names)}; {tail:,} bytes left in the log")
    return Compacted(names, end, tail)


def _remove_unlisted(folder: Path, listed: set[str]) -> None:
    """Segments of a compaction killed before its snapshot (their lines are still in the live log)."""
    for entry in os.scandir(folder):
        if entry.name.startswith("segment_") and entry.name not in listed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _last_line_end(handle: IO[bytes], size: int) -> int:
    """The byte after the last newline of the first ``size`` bytes (0: none)."""
    position = size
    while position > 0:
        start = max(0, position - (1 << 16))
        handle.seek(start)
        at = handle.read(position - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        position = start
    return 0


def _swap(path: Path, snapshot: _Snapshot) -> int:
    """Replace the live log by a header of the next generation and its bytes from ``snapshot.offset``
    on, under the exclusive lock (no append in between). Returns the tail's bytes."""
    header = json.dumps({"event": HEADER_EVENT, "generation": snapshot.generation + 1, "time": now_iso(),
                         "segments": [s["name"] for s in snapshot.segments]}, sort_keys=True) + "\n"
    with _locked(path, fcntl.LOCK_EX) as fd:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, size - snapshot.offset, snapshot.offset) if size > snapshot.offset else b""
        atomic.write_bytes(path, header.encode() + tail)
    return len(tail)
