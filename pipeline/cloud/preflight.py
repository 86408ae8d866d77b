"""Preflight: is this node ready to run a shard? Disk space, temp dir, S3 access, GPU, engine.

Each check says what it found and, when it fails, what to fix.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cloud import s3
from pipeline.engines import engine_names, process
from pipeline.engines.command import DOCUMENT_PLACEHOLDERS, document_command

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, S3Config


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def free_space_check(name: str, path: Path, min_gb: float) -> Check:
    existing = Path(path)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free / 1e9
    ok = free >= min_gb
    return Check(name, ok, f"{free:,.1f} GB free on {existing} (need {min_gb:g})",
                 "" if ok else f"free space on the volume of {existing}, or lower the [s3] threshold")


def tempdir_check(work_dir: Path) -> Check:
    temp = Path(tempfile.gettempdir())
    existing = Path(work_dir)
    while not existing.exists():
        existing = existing.parent
    ok = os.stat(temp).st_dev == os.stat(existing).st_dev
    return Check("temp dir on work volume", ok, f"temp dir {temp}",
                 "" if ok else f"export TMPDIR={Path(work_dir).resolve() / 'tmp'} (and create it) so engine "
                               "temp files land on the work volume, not the root volume")


def access_checks(storage: s3.Storage, prefixes: dict[str, str], writable: set[str]) -> list[Check]:
    """List every prefix; write and delete a probe object under the ``writable`` ones."""
    checks = []
    for name, prefix in prefixes.items():
        if not prefix:
            checks.append(Check(f"{name} set", False, "empty", f"set [s3] {name} in luigi.cfg"))
            continue
        try:
            next(iter(storage.list(s3.folder(prefix))), None)
            if name in writable:
                probe = s3.join(prefix, "_preflight", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}.probe")
                storage.write_bytes(probe, b"preflight\n")
                storage.delete(probe)
            checks.append(Check(f"{name} access", True, f"{prefix}: read{' and write' if name in writable else ''} ok"))
        except (s3.S3Error, OSError) as exc:
            checks.append(Check(f"{name} access", False, f"{prefix}: {exc}",
                                "grant the node's role s3:ListBucket, s3:GetObject, s3:PutObject and "
                                "s3:DeleteObject on it, and check [s3] endpoint_url / region"))
    return checks


def gpu_check() -> Check:
    try:
        status, out, err = process.run_captured(["nvidia-smi", "-L"], timeout=30)
    except (OSError, process.TimedOut) as exc:
        return Check("GPU visible", False, f"nvidia-smi: {exc}",
                     "the engine needs a GPU: install the NVIDIA driver (nvidia-smi) or run on a GPU node")
    gpus = [line for line in out.decode("utf-8", "replace").splitlines() if line.startswith("GPU")]
    ok = status == 0 and bool(gpus)
    return Check("GPU visible", ok, "; ".join(gpus) or err.decode("utf-8", "replace").strip()[:200],
                 "" if ok else "the engine needs a GPU: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")


def engine_check(engine: str, command: str, olmocr_python: str) -> Check:
    """The engine's program is present (and for a template: its placeholders are known)."""
    if engine == "command":
        try:
            program = document_command(command, {p: p for p in DOCUMENT_PLACEHOLDERS})[0]
        except ValueError as exc:
            return Check("engine command", False, str(exc), "fix [s3] command")
        found = shutil.which(program)
        return Check("engine command", bool(found), f"{program} -> {found}",
                     "" if found else f"install {program} or give its full path in [s3] command")
    if engine == "olmocr":
        try:
            status, _, err = process.run_captured([olmocr_python, "-c", "import olmocr"], timeout=120)
            ok, detail = status == 0, err.decode("utf-8", "replace").strip()[-200:] or "import olmocr ok"
        except (OSError, process.TimedOut) as exc:
            ok, detail = False, str(exc)
        return Check("engine olmocr", ok, f"{olmocr_python}: {detail}",
                     "" if ok else "pip install olmocr into [ocr] olmocr_python's environment")
    if engine == "tesseract":
        missing = [p for p in ("tesseract", "pdftoppm") if not shutil.which(p)]
        return Check("engine tesseract", not missing, f"missing: {missing}" if missing else "tesseract, pdftoppm found",
                     "apt-get install tesseract-ocr poppler-utils" if missing else "")
    if engine == "text":
        return Check("engine text", True, "pypdf in this interpreter")
    return Check("engine", False, f"unknown engine {engine!r}", f"set [s3] engine to {engine_names()}")


def format_checks(checks: list[Check]) -> str:
    return "\n".join(
        f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" + ("" if c.ok else f"\n       fix: {c.fix}")
        for c in checks
    )


def node_checks(storage: s3.Storage, cfg: S3Config, ocr: OCRConfig) -> list[Check]:
    """Every check of a node before RunShard, from its [s3] and [ocr] settings; the status and
    output prefixes must be writable."""
    work_dir = Path(cfg.work_dir).resolve()
    engine = cfg.engine or ocr.engine
    prefixes = {"shard_prefix": cfg.shard_prefix, "status_prefix": cfg.status_prefix,
                "output_prefix": cfg.output_prefix}
    checks = [
        free_space_check("root volume free", Path("/"), cfg.min_root_free_gb),
        free_space_check("work volume free", work_dir, cfg.min_work_free_gb),
        tempdir_check(work_dir),
        *access_checks(storage, prefixes, writable={"status_prefix", "output_prefix"}),
        engine_check(engine, cfg.command, ocr.olmocr_python),
    ]
    if engine == "olmocr":
        checks.append(gpu_check())
    return checks


def failure_summary(checks: list[Check]) -> str:
    """'' when every check passed, else the line that ends the run: what failed and how to fix it."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return ""
    return f"Preflight: {len(failed)} checks failed: " + "; ".join(f"{c.name}: {c.fix}" for c in failed)
