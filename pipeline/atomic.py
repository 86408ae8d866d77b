"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync of the folder."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipeline import faults


class DiskFull(OSError):
    """No space (or quota) left where the pipeline writes: one line naming the path, the free bytes
    and the fix. Whatever was being written is discarded whole; nothing was deleted for it."""

    def __init__(self, path: Path) -> None:
        existing = Path(path)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            free = f"{shutil.disk_usage(existing).free:,} bytes free"
        except OSError:
            free = "free space unknown"
        super().__init__(errno.ENOSPC, f"disk full writing {path} ({free} on that volume); nothing was "
                         "deleted: free space there (or move base_dir to a larger volume), then rerun")


@contextlib.contextmanager
def reporting_disk_full(path: Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside the block into DiskFull naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, DiskFull):
            raise DiskFull(path) from exc
        raise


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(folder: Path, *, sync: bool = True) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders that gained an entry.

    With ``sync`` each of those is fsynced here; without, the caller syncs them (``fsync_dirs``).
    """
    try:  # the common case, one call: the parent is there (a stage making a folder per document)
        os.mkdir(folder)
    except FileExistsError:
        return []
    except FileNotFoundError:
        pass
    else:
        changed = [Path(folder).parent]
        if sync:
            fsync_dirs(changed)
        return changed
    missing = []
    current = Path(folder)
    while not current.exists():
        missing.append(current)
        current = current.parent
    changed = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        changed.append(path.parent)
    if sync:
        fsync_dirs(changed)
    return changed


@contextlib.contextmanager
def _replacing(path: Path, *, sync_dir: bool = True, prepared: bool = False) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it, rename it over ``path``, sync the folder.
    ``prepared``: the folder exists and holds no leftover of this target (see ``prepare``)."""
    _, prefix, _ = temp_names(path)
    if not prepared:
        makedirs(path.parent)
        remove_leftovers(path.parent, prefix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        faults.point("atomic.rename.before", path)
        os.replace(tmp, path)
        faults.point("atomic.rename.after", path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_leftovers(folder: Path, prefix: str, suffix: str = ".tmp") -> None:
    """Remove the temp files of one target that a writer killed before its rename left behind.

    Only that target's names (prefix + mkstemp's 8 characters + suffix): the folder may be shared
    with live writers of other files. A live writer of the same target loses its temp file and
    fails loudly at its rename; two writers of one file at once are a fault of their own.
    """
    remove_leftovers_of(folder, {suffix: {prefix}})


def remove_leftovers_of(folder: Path, prefixes: dict[str, set[str]]) -> None:
    """remove_leftovers for many targets of one folder, with one listing: ``prefixes`` maps a temp
    file suffix to the name prefixes of the targets whose temp files end with it."""
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:  # no folder, no leftovers
        return
    with entries:
        for entry in entries:
            name = entry.name
            for suffix, starts in prefixes.items():
                if name.endswith(suffix) and name[:-8 - len(suffix)] in starts:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    break


TempNames = tuple[Path, str, str]  # folder, name prefix, suffix: how one target's temp files are named


def temp_names(path: Path) -> TempNames:
    """How ``write_bytes`` names ``path``'s temp files (mkstemp puts 8 characters between)."""
    return path.parent, f".{path.name[:50]}.", ".tmp"


def prepare(temps: Iterable[TempNames]) -> list[Path]:
    """Make the folders of many files about to be written (``write_bytes(..., prepared=True)``) and
    remove their leftover temp files (``temps``: see ``temp_names``), with one listing per folder
    instead of one per file: a stage writing thousands of files into fan-out folders that keep
    growing (04_ocr_completed) would otherwise list a whole folder for each. Returns the folders
    that gained an entry (not synced)."""
    by_folder: dict[Path, dict[str, set[str]]] = {}
    for folder, prefix, suffix in temps:
        by_folder.setdefault(folder, {}).setdefault(suffix, set()).add(prefix)
    changed: list[Path] = []
    for folder, prefixes in by_folder.items():
        changed += makedirs(folder, sync=False)
        remove_leftovers_of(folder, prefixes)
    return changed


def holds(path: Path, data: bytes) -> bool:
    """``path`` exists and holds exactly ``data`` (the size is compared first: no read for most)."""
    try:
        return os.stat(path).st_size == len(data) and Path(path).read_bytes() == data
    except FileNotFoundError:
        return False


def write_bytes(path: Path, data: bytes, *, sync_dir: bool = True, prepared: bool = False) -> bool:
    """Atomically replace ``path`` with ``data``; return False (touching nothing) when it already holds them.

    Leaving identical files alone keeps a rerun of finished work from changing any byte or mtime.
    ``prepared``: its folder exists and holds no leftover temp file of ``path`` (``prepare`` made it
    so for many files at once, or the caller created the folder just now).
    """
    path = Path(path)
    if holds(path, data):
        return False
    with reporting_disk_full(path), _replacing(path, sync_dir=sync_dir, prepared=prepared) as handle:
        handle.write(data)
    return True


@dataclass
class PendingWrites:
    """Temp files written and being flushed by ``begin_writes``; ``finish`` renames them into place."""

    renames: list[tuple[str, Path]]  # temp file, target
    flushes: list[Future[None]]

    def finish(self) -> list[Path]:
        """Wait for the flushes, then rename each temp file over its target; returns the targets
        written (their folders are the caller's to sync: ``fsync_dirs``). On a failure no temp file
        is left and the targets not yet renamed keep what they held."""
        done = 0
        try:
            for (_, target), flush in zip(self.renames, self.flushes, strict=True):
                with reporting_disk_full(target):
                    flush.result()
            for tmp, target in self.renames:
                faults.point("atomic.rename.before", target)
                os.replace(tmp, target)
                done += 1
                faults.point("atomic.rename.after", target)
        except BaseException:
            wait(self.flushes)
            for tmp, _ in self.renames[done:]:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        return [target for _, target in self.renames]


def _flush(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin_writes(files: Iterable[tuple[Path, bytes]], flushers: Executor) -> PendingWrites:
    """Start the crash-safe writes of many files into prepared folders (``prepare``): each file's bytes
    go to a temp file beside it here, one after another, and its fsync to ``flushers``, threads that
    do nothing else: every fsync lets go of the GIL for its whole wait, and the flushes waiting
    together share the journal's commits. Per file the rule is write_bytes's (temp file, fsync,
    rename); files already holding their bytes are left alone. The caller may work meanwhile, then
    calls ``finish``. Keep a group to a few hundred files: each holds a file descriptor until flushed."""
    pending = PendingWrites([], [])
    try:
        for target, data in files:
            if holds(target, data):
                continue
            _, prefix, suffix = temp_names(target)
            with reporting_disk_full(target):
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                except BaseException:
                    os.close(fd)
                    os.unlink(tmp)
                    raise
            pending.renames.append((tmp, target))
            pending.flushes.append(flushers.submit(_flush, fd))
    except BaseException:
        wait(pending.flushes)
        for tmp, _ in pending.renames:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return pending


def write_many(files: Iterable[tuple[Path, bytes]], flushers: Executor, group: int = 256) -> list[Path]:
    """``begin_writes`` and ``finish`` for any number of files, ``group`` at a time; returns the
    targets written (folders not synced)."""
    files = list(files)
    written: list[Path] = []
    for start in range(0, len(files), group):
        written += begin_writes(files[start:start + group], flushers).finish()
    return written


def dumps_json(value: Any) -> bytes:
    """The canonical JSON bytes written by the pipeline (stable key order, UTF-8, trailing newline)."""
    return (json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_json(path: Path, value: Any, *, sync_dir: bool = True) -> bool:
    return write_bytes(path, dumps_json(value), sync_dir=sync_dir)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (for staging across filesystems)."""
    with reporting_disk_full(dst), _replacing(Path(dst)) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: Path, dst: Path, *, sync_dir: bool = True) -> str:
    """Hard-link ``src`` at ``dst`` (same filesystem) or copy it; never a symlink. Returns the method.

    Without ``sync_dir`` a new link's folder is not fsynced here: the caller syncs it once for many
    links, before anything relies on them. A copy is always synced (its source may be removed next).
    """
    makedirs(Path(dst).parent)
    try:
        os.link(src, dst)
        method = "hardlink"
    except FileExistsError:
        if os.path.samefile(src, dst):
            return "hardlink"
        raise
    except OSError:
        copy_file(src, dst)
        return "copy"
    faults.point("atomic.link.after", dst)
    if sync_dir:
        fsync_dir(Path(dst).parent)
    return method


def remove_stale_temps(folder: Path) -> None:
    """Remove temp files a killed writer left in ``folder`` (only this module's naming pattern)."""
    if Path(folder).is_dir():
        for leftover in Path(folder).glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def remove_files(paths: Iterable[Path], *, sync: bool = True) -> list[Path]:
    """Unlink each existing path; returns what was removed.

    With ``sync`` the folders touched are fsynced here; callers removing many files pass False and
    sync the distinct folders once (``fsync_dirs``) before they record the work as done.
    """
    removed = []
    for path in paths:
        faults.point("atomic.delete.before", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        faults.point("atomic.delete.after", path)
        removed.append(Path(path))
    if sync:
        fsync_dirs(p.parent for p in removed)
    return removed


def fsync_dirs(folders: Iterable[Path]) -> None:
    """Make the entries of every folder durable.

    Many folders on one filesystem take one syncfs(2) (Linux) instead of an fsync each: it commits
    the same renames and new entries, and costs one disk flush instead of hundreds.
    """
    by_device: dict[int, list[Path]] = {}
    for folder in set(folders):
        by_device.setdefault(os.stat(folder).st_dev, []).append(folder)
    for group in by_device.values():
        if len(group) > 2 and _syncfs(group[0]):
            continue
        for folder in group:
            fsync_dir(folder)


def _syncfs(folder: Path) -> bool:
    """syncfs(2) on the filesystem holding ``folder``; False where the call does not exist."""
    if _LIBC is None or not hasattr(_LIBC, "syncfs"):
        return False
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs failed: {os.strerror(error)}", str(folder))
    finally:
        os.close(fd)
    return True


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
except OSError:
    _LIBC = None
