"""Folder listings and JSON records kept between calls in one process while they are unchanged.

ProcessAll and the batch creator look at 01_downloaded (up to hundreds of thousands of PDFs in a
few hundred fan-out folders) and at every batch's batch.json before each new batch. Listing a
folder again only when its mtime moved keeps a run that opens B batches linear in the documents,
instead of B full scans.

A listing (or a record) is kept only when the folder's (or file's) mtime was at least RACY_SECONDS
older than the moment it was read, and used only while device, inode and mtime are the same: a
change made in the same clock tick as the reading would otherwise leave the mtime as it was. On a
network filesystem whose attribute cache is stale, a kept listing can still lack the newest files
(they are found once the cache refreshes) or name files another host removed: callers check a
file is there before they act on it.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

RACY_SECONDS = 2.0
T = TypeVar("T")

Stamp = tuple[int, int, int, int]  # device, inode, mtime in ns, size


class Entries:
    """One folder's regular files and subfolders (symlinks are neither), with values derived from them."""

    def __init__(self, folder: str, files: frozenset[str], folders: tuple[str, ...]) -> None:
        self.folder = folder
        self.files = files
        self.folders = folders
        self._derived: dict[Callable[[Entries], Any], Any] = {}

    def derived(self, compute: Callable[[Entries], T]) -> T:
        """``compute(self)``, computed once per listing (a folder listed again computes it again)."""
        if compute not in self._derived:
            self._derived[compute] = compute(self)
        return self._derived[compute]


_lock = threading.Lock()
_listings: dict[str, tuple[Stamp, Entries]] = {}
_records: dict[str, tuple[Stamp, Any]] = {}


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _keep(cache: dict[str, tuple[Stamp, Any]], path: str, stamp: Stamp, value: Any, read_at_ns: int,
          key: str = "") -> None:
    """Keep ``value`` read from ``path`` (under ``key``, default the path) when its mtime was settled
    before the reading and did not move."""
    if read_at_ns - stamp[2] >= RACY_SECONDS * 1e9 and _stamp(path) == stamp:
        with _lock:
            cache[key or path] = (stamp, value)


def _cached(cache: dict[str, tuple[Stamp, Any]], path: str, stamp: Stamp) -> Any | None:
    with _lock:
        kept = cache.get(path)
    return kept[1] if kept is not None and kept[0] == stamp else None


def entries(folder: Path | str) -> Entries:
    """The folder's entries (empty when it does not exist), listed again only when it changed."""
    key = os.fspath(folder)
    stamp = _stamp(key)
    if stamp is None:
        return Entries(key, frozenset(), ())
    kept = _cached(_listings, key, stamp)
    if kept is not None:
        return kept
    read_at = time.time_ns()
    files, folders = [], []
    try:
        with os.scandir(key) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return Entries(key, frozenset(), ())
    listed = Entries(key, frozenset(files), tuple(sorted(folders)))
    _keep(_listings, key, stamp, listed, read_at)
    return listed


def walk(folder: Path | str) -> Iterator[Entries]:
    """``folder`` and every folder below it (symlinked folders are not followed)."""
    listed = entries(folder)
    yield listed
    for name in listed.folders:
        yield from walk(os.path.join(listed.folder, name))


def read_json(path: Path | str, pick: Callable[[Any], T]) -> T:
    """``pick`` of the parsed JSON file, read again only when the file changed. Only what ``pick``
    returns is kept (the caller must not modify it); ``pick`` must be one function, not a new lambda
    at each call, as it is part of the key."""
    key = os.fspath(path)
    stamp = _stamp(key)
    if stamp is None:
        raise FileNotFoundError(key)
    kept_as = f"{key}\0{pick.__module__}.{pick.__qualname__}"
    kept = _cached(_records, kept_as, stamp)
    if kept is not None:
        return kept
    read_at = time.time_ns()
    with open(key, encoding="utf-8") as handle:
        value = pick(json.load(handle))
    _keep(_records, key, stamp, value, read_at, kept_as)
    return value
