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
   its whole lines from X on; readers of generation G + 1 skip nothing. A compaction that finds step
   2 done and step 3 not finishes step 3 first.

Appenders hold a shared lock on the live log while they write and check that it is still the file at
the path, so on one host no line goes to a replaced log. Readers need no lock: they pair the live log
they opened with a snapshot that matches its generation (retrying when a compaction moved on in
between).

Several hosts on one base_dir (NFS): flock is not honoured across hosts, so

- one compaction at a time is a lease (pipeline/lease.py: ``events/compact.lease``, O_EXCL-created,
  renewed, taken over when stale); a compaction whose lease was taken over stops before its snapshot
  and before its step 3;
- an appender on another host may have checked the live log just before step 3 and write to it
  after: step 3 keeps the replaced log as ``events/retired_GGGGGG.ndjson`` (a hard link, synced
  before the replacement) and the new header lists it under ``pending`` with the byte its copied
  tail ended. The lines after that byte (late lines) are read by every reader, after the segments
  and before the live log. Once a retired log has not changed for LATE_GRACE seconds (by the file
  server's clock), a compaction moves its late lines into a segment of their own, lists it in
  ``consumed`` in the snapshot (readers skip it from then on) and deletes the file: killed before
  the snapshot, the late lines are still read from the retired log; after it, from the segment.

Limits that remain on a shared filesystem: an append that takes longer than LATE_GRACE between its
check of the live log and its close (a host frozen mid-append) is lost if its retired log was moved
into a segment meanwhile; a late line is read after the segments, so its place among the lines other
hosts logged at about the same time can differ from the order of writing (no line is lost or read
twice); O_APPEND is not atomic across NFS clients, so two hosts appending at the very same instant
can overwrite each other's bytes, compaction or not; a retired log keeps the replaced log's bytes
on disk until a compaction after LATE_GRACE, at a later OCRBatch or ProcessAll start, deletes it.
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

from pipeline import atomic, faults, lease

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
    consumed: list[str]        # retired logs still named by a live header whose late lines a segment holds


def _load_snapshot(folder: Path) -> _Snapshot | None:
    try:
        value = atomic.read_json(folder / SNAPSHOT)
    except FileNotFoundError:
        return None
    return _Snapshot(value["generation"], value["offset"], value["segments"], value["facts"],
                     value.get("consumed", []))


def _header(first_line: bytes) -> dict[str, Any]:
    """The live log's header record ({} for a log never compacted)."""
    record = _parse(first_line)
    if record is not None and record.get("event") == HEADER_EVENT and isinstance(record.get("generation"), int):
        return record
    return {}


def _read_header(handle: IO[bytes]) -> dict[str, Any]:
    handle.seek(0)
    return _header(handle.readline())


def _pending(header: dict[str, Any], snapshot: _Snapshot | None) -> dict[str, int]:
    """The retired logs (see compaction) whose late lines no segment holds yet: name -> the byte the
    late lines begin."""
    consumed = set(snapshot.consumed) if snapshot is not None else set()
    return {name: int(copied) for name, copied in header.get("pending", {}).items() if name not in consumed}


@dataclass(frozen=True)
class _View:
    snapshot: _Snapshot | None
    handle: IO[bytes] | None       # the live log
    skip: int                      # its byte where the records after the snapshot begin
    late: list[tuple[IO[bytes], int]]  # each pending retired log open, with the byte its late lines begin


@contextlib.contextmanager
def _live(path: Path) -> Iterator[_View]:
    """The snapshot, the live log and the retired logs' late lines, paired (see _View)."""
    folder = Path(path).parent / SEGMENTS
    generation, snapshot = 0, None
    for _ in range(20):  # a compaction between opening the log and reading the snapshot: pair them again
        with contextlib.ExitStack() as stack:
            try:
                handle: IO[bytes] | None = stack.enter_context(open(path, "rb"))
            except FileNotFoundError:
                handle = None
            snapshot = _load_snapshot(folder)
            header = _read_header(handle) if handle is not None else {}
            generation = int(header.get("generation", 0))
            if snapshot is None and generation == 0:
                skip = 0
            elif (snapshot is not None and handle is not None and generation == snapshot.generation
                  and os.fstat(handle.fileno()).st_size >= snapshot.offset):
                skip = snapshot.offset
            elif snapshot is not None and (handle is None or generation == snapshot.generation + 1):
                skip = 0
            else:
                continue
            try:
                late: list[tuple[IO[bytes], int]] = [(stack.enter_context(open(folder / name, "rb")), copied)
                                                     for name, copied in _pending(header, snapshot).items()]
            except FileNotFoundError:
                continue  # a compaction moved its late lines into a segment meanwhile
            yield _View(snapshot, handle, skip, late)
            return
    raise LogMismatch(f"{path} (generation {generation}) does not follow {folder / SNAPSHOT} (generation "
                      f"{snapshot.generation if snapshot else 'none'}): the log or the snapshot was replaced by "
                      "hand; put back the files that belong together, then rerun")


def facts(path: Path) -> Facts:
    """What the event log at ``path`` says (see Facts), from the snapshot, the late lines of retired
    logs and the live log's tail: the same whether or not, and however often, the log was compacted."""
    with _live(path) as view:
        found = Facts.from_json(view.snapshot.facts) if view.snapshot is not None else Facts()
        for handle, start in view.late:
            for data in _blocks(handle, start, None):
                found.scan(data, first=False)
        if view.handle is not None:
            for n, data in enumerate(_blocks(view.handle, view.skip, None)):
                found.scan(data, first=n == 0 and view.skip == 0)
    return found


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of the event log at ``path``: its segments, the late lines of retired logs, then
    the live log (oldest first, but for late lines, see the module's docstring)."""
    with _live(path) as view:
        folder = Path(path).parent / SEGMENTS
        for segment in view.snapshot.segments if view.snapshot is not None else []:
            with gzip.open(folder / segment["name"], "rb") as lines:
                yield from _records(lines)
        for handle, start in [*view.late, *([(view.handle, view.skip)] if view.handle is not None else [])]:
            handle.seek(start)
            yield from _records(handle)


# --- compaction -----------------------------------------------------------------------------------

COMPACT_LEASE = "compact.lease"    # in the segments' folder: one compaction at a time, across hosts
RETIRED = "retired_"               # retired_GGGGGG.ndjson: the live log of generation G, replaced
LATE_GRACE = 2 * lease.DEFAULT_SECONDS  # seconds a retired log stays unchanged before its late lines go


@dataclass(frozen=True)
class Compacted:
    segments: list[str]   # the segments written
    bytes: int            # live log bytes moved into them
    tail: int             # bytes left in the live log


def _retired_logs(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if e.name.startswith(RETIRED)]
    except FileNotFoundError:
        return []


def compact(path: Path, *, min_bytes: int = 0,
            progress: Callable[[str], None] = lambda message: None) -> Compacted | None:
    """Compact the event log at ``path`` when its live part holds at least ``min_bytes``, and move the
    late lines of retired logs left unchanged for LATE_GRACE into a segment (see the module's
    docstring). Returns None when there was nothing to do or another process, on any host, is
    compacting it."""
    path = Path(path)
    folder = path.parent / SEGMENTS
    try:
        if path.stat().st_size < max(min_bytes, 1) and not _retired_logs(folder):
            return None  # checked first: a small log gets no lease file and no folder
    except FileNotFoundError:
        return None
    atomic.makedirs(folder)
    held = lease.try_acquire(folder / COMPACT_LEASE, lease.DEFAULT_SECONDS)
    if held is None:
        return None  # another process compacts this log now
    try:
        return _compact(path, folder, min_bytes, progress, held)
    finally:
        held.release()


class _Segments:
    """Whole lines packed into gzip segments of at most SEGMENT_BYTES raw bytes each."""

    def __init__(self, folder: Path, listed: int, report: Callable[[list[dict[str, Any]]], None]):
        self.folder, self.listed, self.report = folder, listed, report
        self.written: list[dict[str, Any]] = []
        self._parts: list[bytes] = []
        self._raw = 0
        self._packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
        self._generation = 0

    def add(self, data: bytes, generation: int) -> None:
        if self._raw and (self._raw + len(data) > SEGMENT_BYTES or generation != self._generation):
            self.flush()
        self._generation = generation
        self._parts.append(self._packer.compress(data))
        self._raw += len(data)

    def flush(self) -> None:
        if not self._raw:
            return
        name = f"segment_{self.listed + len(self.written) + 1:06d}.ndjson.gz"
        atomic.write_bytes(self.folder / name, b"".join(self._parts) + self._packer.flush(), sync_dir=False)
        self.written.append({"name": name, "bytes": self._raw, "generation": self._generation})
        self._parts, self._raw, self._packer = [], 0, zlib.compressobj(6, zlib.DEFLATED, 31)
        self.report(self.written)


def _lost(held: lease.Lease, path: Path, progress: Callable[[str], None]) -> bool:
    """True when this compaction hung past its lease: another one may run now, so this one stops
    (what it wrote is ignored and redone, as after a kill)."""
    if held.lost.is_set():
        progress(f"compaction of {path} stopped: its lease {held.path} was taken over by another process")
    return held.lost.is_set()


def _compact(path: Path, folder: Path, min_bytes: int, progress: Callable[[str], None],
             held: lease.Lease) -> Compacted | None:
    snapshot = _load_snapshot(folder)
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        generation = int(_read_header(handle).get("generation", 0))
    if snapshot is not None and generation == snapshot.generation:
        faults.point("events.compact", "finish an earlier swap")
        _swap(path, folder, snapshot)  # an earlier compaction was killed after its snapshot
        generation += 1
    elif (snapshot is None) != (generation == 0) or (snapshot and generation != snapshot.generation + 1):
        raise LogMismatch(f"{path} (generation {generation}) does not follow {folder / SNAPSHOT}: put back the "
                          "files that belong together, then rerun")
    with open(path, "rb") as handle:
        header = _read_header(handle)
    known = list(snapshot.segments) if snapshot is not None else []
    pending = _pending(header, snapshot)
    _remove_unlisted(folder, {s["name"] for s in known} | set(pending))
    found = Facts.from_json(snapshot.facts) if snapshot is not None else Facts()
    segments = _Segments(folder, len(known), lambda written: progress(
        f"compacting {path}: {sum(s['bytes'] for s in written):,} bytes into {len(written)} segments"))
    consumed = _take_late_lines(folder, pending, found, segments)
    segments.flush()  # late lines in segments of their own
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        end = _last_line_end(handle, size)
        handle.seek(0)
        whole = size >= max(min_bytes, 1) and end > (len(handle.readline()) if generation else 0)
        if whole:
            progress(f"compacting {path}: {end:,} bytes into segments")
            for n, data in enumerate(_blocks(handle, 0, end, min(_BLOCK, SEGMENT_BYTES))):
                found.scan(data, first=n == 0 and generation == 0)
                segments.add(data, generation)
            segments.flush()
    if not segments.written and not consumed:
        return None  # nothing but the header, or too small, and no retired log ready
    atomic.fsync_dir(folder)
    faults.point("events.compact", "segments written")
    if _lost(held, path, progress):
        return None
    listed = set(header.get("pending", {}))  # what a reader of this live log may still open
    covers = (generation, end) if whole or snapshot is None else (snapshot.generation, snapshot.offset)
    new = _Snapshot(*covers, known + segments.written, found.to_json(),
                    [n for n in [*(snapshot.consumed if snapshot else []), *consumed] if n in listed])
    atomic.write_json(folder / SNAPSHOT, {"generation": new.generation, "offset": new.offset,
                                          "segments": new.segments, "facts": new.facts, "consumed": new.consumed})
    faults.point("events.compact", "snapshot written")
    tail = size  # the live log as it is, unless replaced below
    if whole:
        if _lost(held, path, progress):
            return None
        tail = _swap(path, folder, new)
        faults.point("events.compact", "log replaced")
        with open(path, "rb") as handle:
            header = _read_header(handle)
    _remove_unlisted(folder, {s["name"] for s in new.segments} | set(_pending(header, new)))
    names = [s["name"] for s in segments.written]
    progress(f"compacted {path}: {end if whole else 0:,} bytes of the log and {len(consumed)} retired logs "
             f"into {', '.join(names) or 'no segment'}; {tail:,} bytes left in the log")
    return Compacted(names, end if whole else 0, tail)


def _take_late_lines(folder: Path, pending: dict[str, int], found: Facts, segments: _Segments) -> list[str]:
    """Add to ``segments`` the late lines of each pending retired log unchanged for LATE_GRACE (by the
    file server's clock: the compaction's lease file was written just now); returns their names."""
    now = os.stat(folder / COMPACT_LEASE).st_mtime
    taken = []
    for name, copied in pending.items():
        try:
            handle = open(folder / name, "rb")
        except FileNotFoundError:
            raise LogMismatch(f"{folder / name}, named by the event log's header, is gone: put back "
                              "the files that belong together, then rerun") from None
        with handle:
            info = os.fstat(handle.fileno())
            if info.st_mtime > now - LATE_GRACE:
                continue  # a host may still be appending to it
            end = _last_line_end(handle, info.st_size)  # after it: a line its writer never finished
            for data in _blocks(handle, copied, max(end, copied)):
                found.scan(data, first=False)
                segments.add(data, int(name[len(RETIRED):].split(".")[0]))
        taken.append(name)
    if taken:
        faults.point("events.compact.late", ", ".join(taken))
    return taken


def _remove_unlisted(folder: Path, listed: set[str]) -> None:
    """Segments of a compaction killed before its snapshot (their lines are still in the live log), and
    retired logs whose late lines a segment holds."""
    for entry in os.scandir(folder):
        if entry.name.startswith(("segment_", RETIRED)) and entry.name not in listed:
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


def _swap(path: Path, folder: Path, snapshot: _Snapshot) -> int:
    """Replace the live log by a header of the next generation and its whole lines from
    ``snapshot.offset`` on, under the exclusive lock (no append in between on this host). The old
    log stays as retired log ``retired_<generation>.ndjson``: a host whose lock was not honoured may
    still append to it, and the header names it with the byte its late lines begin. Returns the
    tail's bytes."""
    name = f"{RETIRED}{snapshot.generation:06d}.ndjson"
    with _locked(path, fcntl.LOCK_EX) as fd:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size - snapshot.offset, snapshot.offset) if size > snapshot.offset else b""
        tail = data[:data.rfind(b"\n") + 1]
        first = os.pread(fd, 1 << 16, 0)
        pending = {**_pending(_header(first[:first.find(b"\n") + 1]), snapshot), name: snapshot.offset + len(tail)}
        moved = [s["name"] for s in snapshot.segments if s["generation"] == snapshot.generation]
        header = json.dumps({"event": HEADER_EVENT, "generation": snapshot.generation + 1, "time": now_iso(),
                             "segments": moved, "pending": pending}, sort_keys=True) + "\n"
        retired = folder / name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(retired)  # linked by a swap killed before its replacement
        os.link(path, retired)
        atomic.fsync_dir(folder)
        atomic.write_bytes(path, header.encode() + tail)
    return len(tail)
