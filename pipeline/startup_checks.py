"""Checks made once before a run moves anything: each returns None, or one line saying what to fix.

Settings a run cannot work with are cheaper to report at start-up than halfway through: a base_dir
on an unmounted volume, a download source with a typo or a central scheduler that is down would
otherwise show up as a traceback after some documents were already fetched or batched.
"""
from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

from pipeline import atomic
from pipeline.layout import Layout, normalize_batch


def config_file_problem(luigi_config_path: str | None) -> str | None:
    """LUIGI_CONFIG_PATH names a file that is not there (Luigi would go on with its defaults)."""
    if not luigi_config_path or Path(luigi_config_path).is_file():
        return None
    return (f"LUIGI_CONFIG_PATH names {luigi_config_path}, which does not exist; "
            "correct LUIGI_CONFIG_PATH or put the site's luigi.cfg there")


def base_dir_problem(base: Path, create: bool) -> str | None:
    """base_dir must be an existing folder; it is created only when ``create`` ([pipeline] create_base_dir)."""
    if base.is_dir():
        return None
    if base.exists():
        return f"[pipeline] base_dir {base} is not a folder; set base_dir to the folder that holds the stage folders"
    if not create:
        return (f"[pipeline] base_dir {base} does not exist; create it (or mount its volume), correct base_dir, "
                "or set [pipeline] create_base_dir = true to have it created")
    try:
        atomic.makedirs(base)
    except OSError as exc:
        return f"[pipeline] base_dir {base} cannot be created ({exc.strerror or exc}); create it or correct base_dir"
    return None


def download_source_problem(source: str) -> str | None:
    """A local download source (folder or URL list) must exist; an s3:// prefix is checked when listed."""
    if source.startswith("s3://") or Path(source).expanduser().exists():
        return None
    return (f"download source {source} does not exist; correct [download] source (a folder, a file of "
            "URLs, or s3://bucket/prefix/) or pass --source")


def missing_batch_problem(layout: Layout, batch: str) -> str | None:
    """Only CreateBatch and ProcessAll open batches: every other batch task needs the batch folder."""
    if layout.batch_dir(batch).is_dir():
        return None
    number = normalize_batch(batch)
    return (f"batch {number} does not exist under {layout.processing}; run "
            f"`luigi --module pipeline CreateBatch --batch {int(number)}` or ProcessAll to open one")


def scheduler_address(url: str, host: str, port: int) -> tuple[str, int] | None:
    """Where luigid listens: ``url`` ([core] scheduler_url) when set, else host and port; None for a unix socket."""
    if not url:
        return host, port
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def scheduler_problem(host: str, port: int, timeout: float = 5.0) -> str | None:
    """One TCP connection to luigid (Luigi itself would retry for minutes, then print a traceback)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        return (f"cannot reach the central scheduler luigid at {host}:{port} ({why}); start luigid there, "
                "correct [core] scheduler_host / scheduler_port, or pass --local-scheduler")
    return None
