"""A lock that works on a shared filesystem (NFS included): a lease file in the folder it guards.

flock is not honoured reliably on NFS, and a lock held by a dead host is never released. A lease is
a file created with O_CREAT | O_EXCL (one creator wins, on NFS too) holding its holder (host, pid,
the pid's start time, a random token) and an expiry, renewed in place every ``seconds / 3`` by a
thread while the holder runs. Protocol:

- **acquire**: O_EXCL-create the file and write the holder into it. Who loses waits and polls.
- **renew**: open the file by its path, check the token is ours, overwrite the content in place
  (same fixed size, through the same descriptor) with a later expiry. The file is never replaced by
  a rename, so a renewal can never put back a lease that someone else took over: if a taker moved
  the file meanwhile, the write lands in the moved file, which the taker then sees has changed.
- **stale**: a lease is stale when its expiry has passed (hosts' clocks must agree to within
  ``seconds * 2/3``), when its content has not changed during a whole lease as the waiter itself
  measured (clock skew, or a creator that died before writing), or when its holder ran on this
  host and that process is gone.
- **take over**: one taker at a time, under a guard file (``<lease>.takeover``, O_EXCL-created,
  removed at once). Under the guard the taker reads the lease again: unchanged from the stale
  content it judged, it renames it to a name only it uses, compares what it moved with what it
  judged (the same bytes mean it removed exactly that lease: delete it, then O_EXCL-create anew,
  which another waiter may still win); different bytes (renewed in that instant) are put back with
  os.link, which never overwrites. Without the guard, a taker that judged the previous, stale file
  could move a fresh holder's file aside for an instant, and a third process could create its own
  lease in that gap: two holders. A guard left by a taker that died is stale after ``seconds``.
- **release**: the same move aside under the guard, then delete when the token is ours.
- **lost**: a renewal that finds the file gone or another token sets ``lost``, stops renewing and
  calls ``on_lost``. Within ``stop_when_lost`` that raises LeaseLost in the main thread at once
  (a signal, so a sleep or a wait for a subprocess is cut short too): the guarded work fails there
  and then, and its next run finds it done by the taker, or does what is left. Off the main thread
  LeaseLost is raised when the block ends.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_SECONDS = 120.0
_SIZE = 512  # every lease file is padded to this size: a renewal overwrites it whole, in place


class LeaseLost(RuntimeError):
    """Another process took over this process's lease: it must stop the guarded work."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_started: str   # the process's start time (/proc/<pid>/stat): a reused pid is another process
    token: str
    started: float     # time.time() when acquired
    expires: float     # time.time() after which the lease is stale unless renewed
    renewals: int

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} (since {time.strftime('%H:%M:%S', time.localtime(self.started))})"


def held_by(holder: Holder | None) -> str:
    """The end of a waiting message: ' (host H pid P (since T))', or '' when the holder is unknown."""
    return f" ({holder.describe()})" if holder else ""


def _process_started(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _alive_here(holder: Holder) -> bool:
    """False only when the holder ran on this host and its process is gone (or its pid reused)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_started(holder.pid)
    return not (holder.pid_started and started and started != holder.pid_started)


def _encode(holder: Holder) -> bytes:
    data = json.dumps(asdict(holder), sort_keys=True).encode()
    return data + b" " * (_SIZE - len(data)) if len(data) < _SIZE else data


def _decode(content: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(content))
    except (ValueError, TypeError):
        return None  # empty (its creator has not written yet, or died first) or half overwritten


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read(path: Path) -> Holder | None:
    """The lease's holder as written in its file, or None (no file, or not readable yet)."""
    content = _read(path)
    return None if content is None else _decode(content)


def is_held(path: Path) -> bool:
    """True when the lease file exists with an unexpired expiry and a live holder (as far as seen here)."""
    holder = read(path)
    return holder is not None and holder.expires > time.time() and _alive_here(holder)


def _move_aside(path: Path, token: str, keep: Callable[[bytes], bool]) -> bool:
    """Rename ``path`` to a name of its own; delete what was moved when ``keep(content)`` is False,
    else put it back (never over a file made meanwhile). True when it was moved and deleted."""
    aside = path.with_name(f"{path.name}.{token}.aside")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    content = _read(aside) or b""
    if keep(content):
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # someone created a lease meanwhile: the one moved learns it at its next renewal
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


class Lease:
    """A held lease: renewed by a thread until released; ``lost`` is set when another took it."""

    def __init__(self, path: Path, seconds: float, on_lost: Callable[[Holder | None], None] | None = None):
        self.path, self.seconds, self.on_lost = path, seconds, on_lost
        self.lost = threading.Event()
        self.taker: Holder | None = None   # who holds the file when it was found lost
        self._stop = threading.Event()
        now = time.time()
        self.holder = Holder(socket.gethostname(), os.getpid(), _process_started(os.getpid()),
                             secrets.token_hex(16), now, now + seconds, 0)
        self._thread: threading.Thread | None = None
        # On a full disk the lease is the empty file alone (creating it needs no data block): the
        # stage then reports the full disk itself; renewals write the holder in once there is room.
        self.blank = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            self._write_holder(fd)
        finally:
            os.close(fd)
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.path}", daemon=True)
        self._thread.start()
        return True

    def _write_holder(self, fd: int) -> None:
        try:
            os.pwrite(fd, _encode(self.holder), 0)
            os.fsync(fd)
            self.blank = False
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            os.ftruncate(fd, 0)  # no half-written holder
            self.blank = True

    def renew(self) -> bool:
        """Push the expiry on, when the file still holds our token; else mark the lease lost."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return self._mark_lost(None)
        try:
            content = os.pread(fd, _SIZE * 2, 0)
            found = _decode(content)
            mine = content == b"" if self.blank else found is not None and found.token == self.holder.token
            if not mine:
                return self._mark_lost(found)
            now = time.time()
            self.holder = Holder(**{**asdict(self.holder), "expires": now + self.seconds,
                                    "renewals": self.holder.renewals + 1})
            self._write_holder(fd)
            return True
        finally:
            os.close(fd)

    def _mark_lost(self, taker: Holder | None) -> bool:
        self.taker = taker
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(taker)
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    return
            except OSError:
                continue  # a passing filesystem error: the next renewal tries again before expiry

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost.is_set():
            return
        # Under the guard, so that no taker's fresh lease is moved aside (a gap another could fill);
        # without it (a taker stuck on it) the lease is left to expire.
        with _guard(self.path, self.holder.token, self.seconds, patience=5.0) as guarded:
            if guarded:
                _move_aside(self.path, self.holder.token, lambda content: self._not_mine(content))

    def _not_mine(self, content: bytes) -> bool:
        if self.blank:
            return content != b""
        found = _decode(content)
        return found is None or found.token != self.holder.token


@contextmanager
def stop_when_lost(held: Lease, what: str) -> Iterator[None]:
    """Raise LeaseLost, naming ``what`` and the taker, as soon as ``held`` is found taken over."""
    def lost() -> LeaseLost:
        taker = held.taker.describe() if held.taker else "another process"
        return LeaseLost(f"{what}: its lease {held.path} was taken over by {taker}, because this process "
                         "did not renew it in time (hung, or cut off from the filesystem); this run stopped "
                         "it and the other process carries on. Run the same command again if it fails")

    if threading.current_thread() is not threading.main_thread():
        yield
        if held.lost.is_set():
            raise lost()
        return

    def on_signal(_signum: int, _frame: object) -> None:
        raise lost()

    main = threading.main_thread().ident
    assert main is not None
    previous = signal.signal(signal.SIGUSR2, on_signal)
    held.on_lost = lambda _taker: signal.pthread_kill(main, signal.SIGUSR2)
    try:
        if held.lost.is_set():
            raise lost()
        yield
    finally:
        held.on_lost = None
        signal.signal(signal.SIGUSR2, previous)


class _Watch:
    """A waiter's view of one lease file: stale by expiry, by a dead holder here, or by no change
    during a whole lease measured on the waiter's own clock."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.content: bytes | None = None
        self.since = 0.0

    def stale(self, content: bytes) -> bool:
        now = time.monotonic()
        if content != self.content:
            self.content, self.since = content, now
        holder = _decode(content)
        if holder is not None and (holder.expires < time.time() or not _alive_here(holder)):
            return True
        return now - self.since >= self.seconds


def try_acquire(path: Path, seconds: float, watch: _Watch | None = None,
                on_lost: Callable[[Holder | None], None] | None = None) -> Lease | None:
    """One attempt: the lease when it was free or stale (taken over), else None."""
    lease = Lease(path, seconds, on_lost)
    if lease._create():
        return lease
    watch = watch or _Watch(seconds)
    content = _read(path)
    if content is None or not watch.stale(content):
        return None
    if _take_over(path, lease.holder.token, content, seconds):
        return lease if lease._create() else None
    return None


def _take_over(path: Path, token: str, judged: bytes, seconds: float) -> bool:
    """Remove the lease file when it still holds ``judged``, as the only taker (under the guard)."""
    with _guard(path, token, seconds) as guarded:
        return guarded and _read(path) == judged and _move_aside(path, token, lambda moved: moved != judged)


@contextmanager
def _guard(path: Path, token: str, seconds: float, patience: float = 0.0) -> Iterator[bool]:
    """Hold ``<lease>.takeover`` for the block (True), or False when another process holds it
    for longer than ``patience`` seconds."""
    guard = path.with_name(f"{path.name}.takeover")
    deadline = time.monotonic() + patience
    while True:
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            _clear_stale_guard(guard, token, seconds)
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.01)
    try:
        yield True
    finally:
        os.unlink(guard)


def _clear_stale_guard(guard: Path, token: str, seconds: float) -> None:
    """A guard older than a whole lease was left by a taker that died holding it: remove that one."""
    try:
        judged = os.stat(guard)
    except FileNotFoundError:
        return
    if judged.st_mtime > time.time() - seconds:
        return
    aside = guard.with_name(f"{guard.name}.{token}.aside")
    try:
        os.rename(guard, aside)
    except FileNotFoundError:
        return
    moved = os.stat(aside)
    if (moved.st_ino, moved.st_mtime_ns) != (judged.st_ino, judged.st_mtime_ns):
        try:
            os.link(aside, guard)  # a live taker's guard: put it back
        except FileExistsError:
            pass
    os.unlink(aside)


@contextmanager
def hold(path: Path, seconds: float = DEFAULT_SECONDS, waiting: Callable[[Holder | None], None] | None = None,
         on_lost: Callable[[Holder | None], None] | None = None) -> Iterator[Lease]:
    """Hold the lease at ``path`` for the block; ``waiting(holder)`` is called once before waiting."""
    watch = _Watch(seconds)
    told = False
    while (lease := try_acquire(path, seconds, watch, on_lost)) is None:
        if not told and waiting is not None:
            waiting(read(path))
        told = True
        time.sleep(min(2.0, seconds / 6))
    try:
        yield lease
    finally:
        lease.release()
