"""The collection's name: what tells one base_dir's tasks from another's on a shared luigid.

Luigi knows a task by its name and parameters alone, so every task carries the collection as a
parameter. The name is ``[pipeline] collection`` when set; otherwise the first run records a name
in ``_manifests/collection.json`` (base_dir's folder name and a short hash of its path) and every
later run reads it back, on any host: sites that mount one shared base_dir at different paths
still agree. The record is made whole beside its place and linked into it (a link never replaces
a file, on NFS too), so of two first runs at once one wins and the other reads the winner's name.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from pathlib import Path

from pipeline import atomic, events
from pipeline.layout import MANIFESTS

RECORD = "collection.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_OTHER = re.compile(r"[^A-Za-z0-9_]+")  # a default name is what Luigi keeps as it is at the start of a task id


def record_path(base: Path) -> Path:
    return Path(base) / MANIFESTS / RECORD


def name_problem(name: str) -> str | None:
    """A name Luigi's task ids and the visualizer show as it is: letters, digits, '.', '_', '-'."""
    if _NAME.fullmatch(name):
        return None
    return (f"[pipeline] collection = {name!r} is not valid: use letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)")


def _name(last_part: str, whole: str) -> str:
    stem = _OTHER.sub("_", last_part).strip("_")[:48] or "collection"
    return f"{stem}_{hashlib.sha1(whole.encode()).hexdigest()[:8]}"


def default_name(base: Path) -> str:
    """base_dir's folder name and a hash of its real path (two collections named 'data' differ)."""
    real = os.path.realpath(Path(base).expanduser())
    return _name(Path(real).name, real)


def location_name(uri: str) -> str:
    """The name of a collection known by where it keeps its state (the cloud shards' status prefix,
    the same URI on every node): its last part and a hash of it; '' for none."""
    return _name(uri.rstrip("/").rsplit("/", 1)[-1], uri) if uri else ""


def recorded(base: Path) -> str | None:
    """The name recorded in base_dir, or None (none yet, or base_dir not readable: its check says why)."""
    try:
        name = atomic.read_json(record_path(base))["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def resolve(base: Path, configured: str) -> str:
    """The collection of ``base`` without writing anything: ``configured`` ([pipeline] collection),
    else the recorded name, else the name the first run will record."""
    return configured or recorded(base) or default_name(base)


def problem(base: Path, configured: str, given: str) -> str | None:
    """One line when the names disagree: ``configured`` with the record, ``given`` (a task's) with both."""
    if configured and name_problem(configured):
        return name_problem(configured)
    found = recorded(base)
    if configured and found and configured != found:
        return (f"[pipeline] collection = {configured} but base_dir {base} is collection {found} "
                f"(recorded in {record_path(base)}); set collection = {found}, or remove the line to use it")
    expected = resolve(base, configured)
    if given != expected:
        return (f"--collection {given} is not the collection of base_dir {base} ({expected}); leave it out: "
                "the collection comes from [pipeline] collection, else the name recorded in base_dir")
    return None


def record(base: Path, name: str) -> str:
    """Record ``name`` as base_dir's collection unless one is recorded; returns the recorded name."""
    found = recorded(base)
    if found:
        return found
    path = record_path(base)
    atomic.makedirs(path.parent)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{RECORD}.", suffix=".tmp")
    try:
        content = {"name": name, "base_dir": str(base), "host": socket.gethostname(), "recorded_at": events.now_iso()}
        with os.fdopen(fd, "wb") as handle:
            handle.write(atomic.dumps_json(content))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another run recorded one first: its name holds
            os.link(temp, path)
    finally:
        os.unlink(temp)
    atomic.fsync_dir(path.parent)
    return recorded(base) or name
