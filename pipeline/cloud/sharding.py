"""Cloud shards: page counts of a prefix, page-balanced shard manifests, per-document shard runs
with .done/.failed markers, shard status and node preflight checks.

Small functions over a ``s3.Storage`` (s3:// URIs or local paths); tasks/shards.py wires them
into Luigi. ``python -m pipeline.sharding status`` prints shard progress without Luigi.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import heapq
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline import pdf
from pipeline.cloud import s3
from pipeline.engines import EngineSettings, get_engine
from pipeline.events import now_iso

MASTER_COLUMNS = ("key", "size", "pages", "error")
PART_COLUMNS = (*MASTER_COLUMNS, "method", "bytes_fetched", "requests")
LISTING_COLUMNS = ("key", "size", "etag")
SUMMARY_NAME = "shard_summary.json"


# --- CSV ----------------------------------------------------------------------------------------

def csv_bytes(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


# --- page counts ----------------------------------------------------------------------------------

def list_documents(storage: s3.Storage, source: str, suffix: str) -> list[s3.Listed]:
    """Objects under ``source`` whose name ends in ``suffix`` (any case; '' = all), in key order."""
    return [
        item for item in storage.list(s3.folder(source))
        if not item.name.endswith("/") and item.name.lower().endswith(suffix.lower())
    ]


def listing_bytes(items: list[s3.Listed]) -> bytes:
    return csv_bytes(({"key": i.uri, "size": i.size, "etag": i.etag} for i in items), LISTING_COLUMNS)


def parse_listing(data: bytes) -> list[s3.Listed]:
    return [s3.Listed(r["key"], "", int(r["size"]), r["etag"]) for r in csv_rows(data)]


def parts_folder(output: str) -> str:
    """Where CountPages keeps the listing snapshot and its parts: beside the master CSV."""
    stem = output[:-4] if output.lower().endswith(".csv") else output
    return stem + "_parts"


def part_ranges(total: int, chunk_size: int) -> list[tuple[int, int]]:
    if chunk_size < 1:
        raise ValueError("--chunk-size must be at least 1")
    return [(start, min(total, start + chunk_size)) for start in range(0, total, chunk_size)]


def part_name(start: int, end: int) -> str:
    # The range in the name: a rerun with another --chunk-size never mistakes a part for its own.
    return f"part_{start:09d}_{end:09d}.csv"


@dataclass
class CountRow:
    key: str
    size: int
    pages: int | None = None
    error: str = ""
    method: str = ""
    bytes_fetched: int = 0
    requests: int = 0


def count_document(storage: s3.Storage, item: s3.Listed, block_size: int = 4096) -> CountRow:
    """Count one document's pages; bad files get an error, S3 failures (after retries) raise S3Error."""
    row = CountRow(item.uri, item.size)
    source: pdf.FileSource | s3.RangedSource | None = None
    try:
        if s3.is_s3(item.uri):
            bucket, key = s3.split(item.uri)
            source = s3.RangedSource(storage.client, bucket, key, item.size, etag=item.etag, block_size=block_size)
            result = pdf.count_source(source)
        else:
            source = pdf.FileSource(item.uri)
            result = pdf.count_source(source, Path(item.uri))
        row.pages, row.method = result.pages, result.method
    except pdf.PdfError as exc:
        row.pages, row.error = exc.pages, f"{exc.reason}: {exc}"  # a locked file keeps its count
    except FileNotFoundError:
        row.error = "missing: deleted after it was listed"
    except s3.S3Error as exc:
        if exc.code in ("NoSuchKey", "404"):
            row.error = "missing: deleted after it was listed"
        elif exc.code in ("PreconditionFailed", "412"):
            row.error = "changed: replaced after it was listed; delete the parts folder and rerun"
        else:
            raise
    finally:
        if isinstance(source, s3.RangedSource):
            row.bytes_fetched, row.requests = source.bytes_fetched, source.requests
            source.close()
        elif source is not None:
            row.bytes_fetched = source.bytes_read
            source.close()
    return row


def count_documents(
    pool: ThreadPoolExecutor,
    storage: s3.Storage,
    items: list[s3.Listed],
    block_size: int,
    on_progress: Callable[[int], None] = lambda finished: None,
    interval: float = 2.0,
) -> list[CountRow]:
    """Rows in ``items`` order; the first S3 failure cancels the rest and is raised.

    ``on_progress(finished)`` runs in the calling thread (Luigi's status calls are not thread-safe).
    """
    futures = [pool.submit(count_document, storage, item, block_size) for item in items]
    pending: set[Future[CountRow]] = set(futures)
    while pending:
        finished, pending = wait(pending, timeout=interval, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for future in pending:
                future.cancel()
            raise failed[0].exception()  # type: ignore[misc]
        on_progress(len(futures) - len(pending))
    return [f.result() for f in futures]


def part_bytes(rows: list[CountRow]) -> bytes:
    return csv_bytes((asdict(r) for r in rows), PART_COLUMNS)


def master_bytes(parts: list[bytes]) -> bytes:
    """The master CSV: every part's rows in order, ``key,size,pages,error`` only."""
    return csv_bytes((row for part in parts for row in csv_rows(part)), MASTER_COLUMNS)


# --- shard manifests ------------------------------------------------------------------------------

def select_documents(
    rows: list[dict[str, str]], *, min_pages: int, skip_errors: bool, source_base: str = ""
) -> tuple[dict[str, int], list[dict[str, str]]]:
    """({uri: pages} to shard, [{key, kind, reason}] left out) from page-count rows.

    Rows with an error stop everything unless ``skip_errors``: a silently missing document is
    the failure this pipeline exists to prevent.
    """
    documents: dict[str, int] = {}
    skipped: list[dict[str, str]] = []
    errors = []
    for row in rows:
        key = row.get("key") or ""
        if key and not s3.is_s3(key) and not os.path.isabs(key):
            if not source_base:
                raise ValueError(f"page-count key {key!r} is not a URI; pass --source-base s3://bucket/")
            key = s3.join(source_base, key)
        pages = row.get("pages") or ""
        kind = reason = ""
        if not key or "\n" in key or "\r" in key:
            kind, reason = "bad_key", "key is empty or holds a line break (a shard file has one URI a line)"
        elif row.get("error"):
            kind, reason = "error", row["error"]
            if not skip_errors:
                errors.append(f"{key}: {row['error']}")
        elif not pages.isdigit():
            kind, reason = "no_pages", f"no page count ({pages!r})"
        elif int(pages) < min_pages:
            kind, reason = "min_pages", f"{pages} pages, below --min-pages {min_pages}"
        elif key in documents:
            kind, reason = "duplicate", "listed twice; the first row is kept"
        if kind:
            skipped.append({"key": key, "kind": kind, "reason": reason})
        else:
            documents[key] = int(pages)
    if errors:
        raise ValueError(
            f"{len(errors)} documents have page-count errors (first: {errors[0]}); "
            "fix or remove them, or pass --skip-errors to leave them out of the shards"
        )
    return documents, skipped


def balance(documents: dict[str, int], shards: int, max_rounds: int = 1000) -> list[list[str]]:
    """Split {uri: pages} into ``shards`` lists with pages as even as possible; deterministic.

    Largest first to the lightest shard (ties: uri, shard number), then single moves and swaps
    between the heaviest and the lightest shard while they shrink the spread. Each shard lists
    its documents largest first, so a node's parallel workers finish close together.
    """
    if shards < 1:
        raise ValueError("--shards must be at least 1")
    assigned: list[list[str]] = [[] for _ in range(shards)]
    loads = [0] * shards
    heap = [(0, k) for k in range(shards)]
    for uri in sorted(documents, key=lambda u: (-documents[u], u)):
        load, k = heapq.heappop(heap)
        assigned[k].append(uri)
        loads[k] = load + documents[uri]
        heapq.heappush(heap, (loads[k], k))
    for _ in range(max_rounds):
        heavy = max(range(shards), key=lambda k: (loads[k], -k))
        light = min(range(shards), key=lambda k: (loads[k], k))
        if not _improve(assigned, loads, documents, heavy, light):
            break
    return [sorted(uris, key=lambda u: (-documents[u], u)) for uris in assigned]


def _improve(assigned: list[list[str]], loads: list[int], pages: dict[str, int], heavy: int, light: int) -> bool:
    """Apply the move or swap from ``heavy`` to ``light`` that best narrows their gap; False if none does.

    Shifting ``d`` pages narrows the gap when 0 < d < gap, the most when d is nearest gap / 2.
    """
    gap = loads[heavy] - loads[light]
    candidates: list[tuple[float, str, str]] = []  # (score, heavy uri, light uri or '' for a move)
    light_sorted = sorted(assigned[light], key=lambda u: (pages[u], u))
    light_pages = [pages[u] for u in light_sorted]
    for uri in assigned[heavy]:
        if 0 < pages[uri] < gap:
            candidates.append((abs(pages[uri] - gap / 2), uri, ""))
        i = bisect_left(light_pages, pages[uri] - gap / 2)  # the swap partner that shifts gap / 2
        for j in (i - 1, i):
            if 0 <= j < len(light_sorted) and 0 < pages[uri] - light_pages[j] < gap:
                candidates.append((abs(pages[uri] - light_pages[j] - gap / 2), uri, light_sorted[j]))
    if not candidates:
        return False
    _, uri, other = min(candidates)
    assigned[heavy].remove(uri)
    assigned[light].append(uri)
    loads[heavy] -= pages[uri]
    loads[light] += pages[uri]
    if other:
        assigned[light].remove(other)
        assigned[heavy].append(other)
        loads[light] -= pages[other]
        loads[heavy] += pages[other]
    return True


def shard_name(shard: int) -> str:
    return f"shard_{shard}.txt"


def shard_file_bytes(uris: list[str]) -> bytes:
    return "".join(f"{uri}\n" for uri in uris).encode("utf-8")


def parse_shard_file(data: bytes) -> list[str]:
    # Split on '\n' only, as written: a key may hold other line separators (\u2028, \x1c, ...).
    return [line for line in data.decode("utf-8").split("\n") if line.strip()]


def uri_problem(uri: str) -> str:
    """Why a shard file line cannot name a document ('' when it can): an s3://bucket/key URI or an
    absolute local path, no NUL, no '..' in a local path (it would read outside the collection)."""
    if "\x00" in uri:
        return "contains a NUL byte"
    if s3.is_s3(uri):
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket or not key or key.endswith("/"):
            return "is not an s3://bucket/key URI of an object"
        return ""
    if not os.path.isabs(uri):
        return "is neither an s3:// URI nor an absolute path"
    if ".." in uri.split("/"):
        return "is a local path with '..' (it would read outside its folder)"
    return ""


def shard_summary(
    assigned: list[list[str]], documents: dict[str, int], skipped: list[dict[str, str]], **inputs: Any
) -> dict[str, Any]:
    """Documents, pages, share and imbalance (pages / mean - 1) per shard, and what was left out."""
    total = sum(documents[u] for uris in assigned for u in uris)
    mean = total / len(assigned) if assigned else 0
    rows = []
    for k, uris in enumerate(assigned, start=1):
        pages = sum(documents[u] for u in uris)
        rows.append({
            "shard": k,
            "file": shard_name(k),
            "documents": len(uris),
            "pages": pages,
            "share": round(pages / total, 6) if total else 0.0,
            "imbalance": round(pages / mean - 1, 6) if mean else 0.0,
        })
    reasons: dict[str, int] = {}
    for item in skipped:
        reasons[item["kind"]] = reasons.get(item["kind"], 0) + 1
    return {
        **inputs,
        "documents": sum(r["documents"] for r in rows),
        "pages": total,
        "max_imbalance": max((r["imbalance"] for r in rows), default=0.0),
        "shards": rows,
        "skipped_count": len(skipped),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "skipped": skipped,
    }


# --- markers --------------------------------------------------------------------------------------

def doc_key(uri: str) -> str:
    """A document's name under the status and output prefixes: ``<bucket>/<key>`` of its URI.

    Empty, '.' and '..' segments (keys with '//', a leading '/' or '..') are escaped, and so is
    '%', so the mapping stays one-to-one and a synced copy of the prefix cannot escape its folder.
    """
    if s3.is_s3(uri):
        bucket, key = s3.split(uri)
        segments = [bucket, *key.split("/")]
    else:
        segments = ["_local", *os.path.abspath(uri).lstrip("/").split("/")]
    return "/".join(_DOT_SEGMENTS.get(s, s.replace("%", "%25")) for s in segments)


_DOT_SEGMENTS = {"": "%", ".": "%2E", "..": "%2E%2E"}


def marker_uri(status_prefix: str, uri: str, kind: str) -> str:
    return s3.join(status_prefix, f"{doc_key(uri)}.{kind}")


def shard_marker_uri(status_prefix: str, shard: int) -> str:
    # No bucket name holds '_', so this never collides with a document's marker.
    return s3.join(status_prefix, "_shards", f"shard_{shard}.done")


def output_uri(output_prefix: str, uri: str) -> str:
    folder, _, name = doc_key(uri).rpartition("/")
    stem = name[:-4] if name.lower().endswith(".pdf") else name
    # '..pdf' loses its suffix here: its stem is escaped like any '..' segment.
    return s3.join(output_prefix, folder, _DOT_SEGMENTS.get(stem, stem))


def scan_markers(storage: s3.Storage, status_prefix: str) -> tuple[set[str], set[str]]:
    """(done, failed) document keys from one listing of the status prefix (no HEAD per document)."""
    done, failed = set(), set()
    for item in storage.list(s3.folder(status_prefix)):
        name = item.name
        if name.endswith(".done") and not name.startswith("_shards/"):
            done.add(name[: -len(".done")])
        elif name.endswith(".failed"):
            failed.add(name[: -len(".failed")])
    return done, failed


# --- per-document runs ----------------------------------------------------------------------------

PLACEHOLDERS = ("uri", "input", "workdir", "outdir", "output", "shard")
_PLACEHOLDER = re.compile(r"\{(\w*)\}")


def expand_command(template: str, values: dict[str, str]) -> list[str]:
    """Split the template like a shell would, THEN fill placeholders inside each argument.

    A URI with spaces or quotes stays one argument, and nothing is ever run through a shell.
    """
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"unknown placeholder {{{name}}} in the command; use {', '.join(PLACEHOLDERS)}")
        return values[name]

    args = shlex.split(template)
    if not args:
        raise ValueError("[s3] command is empty; set it or pick a built-in engine")
    return [_PLACEHOLDER.sub(fill, arg) for arg in args]


@dataclass
class ShardSettings:
    """What a shard run needs, resolved from [s3] and [ocr] by the task."""

    shard: int
    status_prefix: str
    output_prefix: str
    work_dir: Path
    engine: str
    command: str = ""
    engine_settings: EngineSettings = field(default_factory=EngineSettings)
    parallel: int = 2
    attempts: int = 3
    timeout: float = 0.0


class DocumentFailed(Exception):
    pass


@dataclass
class Outcome:
    uri: str
    ok: bool
    error: str = ""
    attempts: int = 1
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)


def _set_source_file(paths: list[Path], uri: str) -> int:
    """Point each record's Source-File at the URI instead of the node's temp copy; returns records."""
    records = 0
    for path in paths:
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                record.setdefault("metadata", {})["Source-File"] = uri
                lines.append(json.dumps(record, ensure_ascii=False))
        records += len(lines)
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return records


def _run_engine(settings: ShardSettings, uri: str, pdf_path: Path, folder: Path, outdir: Path) -> None:
    if settings.engine == "command":
        argv = expand_command(settings.command, {
            "uri": uri,
            "input": str(pdf_path),
            "workdir": str(folder),
            "outdir": str(outdir),
            "output": output_uri(settings.output_prefix, uri),
            "shard": str(settings.shard),
        })
        log = folder / "command.log"
        with open(log, "wb") as handle:
            try:
                result = subprocess.run(
                    argv, cwd=folder, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                    timeout=settings.timeout or None,
                )
            except subprocess.TimeoutExpired as exc:
                raise DocumentFailed(f"command timed out after {exc.timeout:.0f} s") from exc
            except OSError as exc:
                raise DocumentFailed(f"command could not start: {exc}") from exc
        if result.returncode:
            tail = log.read_bytes()[-1500:].decode("utf-8", "replace").strip()
            raise DocumentFailed(f"command exited with {result.returncode}: {tail}")
        return
    paths = get_engine(settings.engine, settings.engine_settings).run([pdf_path], outdir)
    if not _set_source_file(paths, uri):
        raise DocumentFailed(f"the {settings.engine} engine wrote no record for it (unreadable PDF?)")


def run_document(storage: s3.Storage, settings: ShardSettings, uri: str, previous_attempts: int = 0) -> Outcome:
    """Download, run, upload the outputs, then write .done (or .failed); the local copy is removed.

    The .done marker is written last, so a run killed at any point redoes the document and never
    skips one whose outputs are not all uploaded.
    """
    started = time.monotonic()
    attempt = previous_attempts + 1
    name = hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    folder = s3.inside(shard_work_dir(settings), name)
    try:
        key = s3.split(uri)[1] if s3.is_s3(uri) else uri
        pdf_path = s3.inside(folder, "input", s3.local_name(key))
        outdir = s3.inside(folder, "output")
        outdir.mkdir(parents=True)
        storage.download(uri, pdf_path)
        _run_engine(settings, uri, pdf_path, folder, outdir)
        base = output_uri(settings.output_prefix, uri)
        outputs = []
        for path in sorted(p for p in outdir.rglob("*") if p.is_file()):
            target = s3.join(base, *path.relative_to(outdir).parts)
            storage.upload(path, target)
            outputs.append(target)
        seconds = round(time.monotonic() - started, 3)
        storage.write_bytes(marker_uri(settings.status_prefix, uri, "done"), _marker(
            uri=uri, shard=settings.shard, attempts=attempt, outputs=outputs, seconds=seconds))
        if previous_attempts:
            storage.delete(marker_uri(settings.status_prefix, uri, "failed"))
        return Outcome(uri, True, attempts=attempt, seconds=seconds, outputs=outputs)
    except Exception as exc:  # one document's failure of any kind must not stop the shard
        if isinstance(exc, s3.S3Error) and exc.unavailable:
            raise  # S3 itself failed, not the document: no attempt is counted against it
        error = str(exc) or type(exc).__name__
        storage.write_bytes(marker_uri(settings.status_prefix, uri, "failed"), _marker(
            uri=uri, shard=settings.shard, attempts=attempt, error=error))
        return Outcome(uri, False, error, attempt, round(time.monotonic() - started, 3))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _marker(**fields: Any) -> bytes:
    return (json.dumps({**fields, "host": socket.gethostname(), "time": now_iso()}, ensure_ascii=False,
                       sort_keys=True, indent=2) + "\n").encode("utf-8")


@dataclass
class ShardPlan:
    todo: list[tuple[str, int]]  # (uri, attempts so far)
    done: list[str]
    gave_up: list[str]  # failed document_attempts times already
    redo: list[str] = field(default_factory=list)  # had a .done marker whose outputs are missing
    rejected: list[dict[str, str]] = field(default_factory=list)  # lines that name no document: {line, reason}


def plan_shard(storage: s3.Storage, settings: ShardSettings, uris: list[str]) -> ShardPlan:
    """Sort the shard's documents by their markers (one LIST, one GET per marker, one LIST of outputs).

    A .done marker counts only when every output it lists exists: one whose outputs are gone (a
    lost upload) is deleted and its document redone.
    """
    plan = ShardPlan([], [], [])
    plan.rejected = [{"line": uri, "reason": f"{uri!r} {uri_problem(uri)}"} for uri in uris if uri_problem(uri)]
    uris = [uri for uri in uris if not uri_problem(uri)]  # never used as a key or a path
    done, failed = scan_markers(storage, settings.status_prefix)
    missing = drop_unconfirmed(storage, settings, [uri for uri in uris if doc_key(uri) in done])
    for uri in uris:
        key = doc_key(uri)
        if key in done and uri not in missing:
            plan.done.append(uri)
            continue
        if uri in missing:
            plan.redo.append(uri)
        attempts = 0
        if key in failed:
            body = storage.read_optional(marker_uri(settings.status_prefix, uri, "failed"))
            attempts = int(json.loads(body).get("attempts", 1)) if body else 0
        if attempts >= settings.attempts:
            plan.gave_up.append(uri)
        else:
            plan.todo.append((uri, attempts))
    return plan


def drop_unconfirmed(
    storage: s3.Storage, settings: ShardSettings, uris: list[str], outputs: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """{uri: missing outputs} of the documents whose outputs are not all there; their .done markers
    are deleted, so that no document counts as done without its outputs.

    Each document's outputs are ``outputs[uri]`` (this run's uploads) or read from its .done marker;
    they are looked up in one listing of the folder the documents' outputs share.
    """
    if not uris:
        return {}
    known = outputs or {}
    shared = os.path.commonprefix([output_uri(settings.output_prefix, uri) for uri in uris])
    listed = {item.uri for item in storage.list(shared[: shared.rfind("/") + 1])} if s3.is_s3(shared) else set()

    def missing(uri: str) -> list[str]:
        if uri in known:
            listed_outputs = known[uri]
        else:
            body = storage.read_optional(marker_uri(settings.status_prefix, uri, "done"))
            try:
                listed_outputs = json.loads(body or b"")["outputs"]
            except (ValueError, KeyError, TypeError):
                return ["(the .done marker does not list its outputs)"]
        gone = [o for o in listed_outputs if o not in listed and not (not s3.is_s3(o) and os.path.isfile(o))]
        if gone:
            storage.delete(marker_uri(settings.status_prefix, uri, "done"))
        return gone

    with ThreadPoolExecutor(16, thread_name_prefix="verify") as pool:
        return {uri: gone for uri, gone in zip(uris, pool.map(missing, uris)) if gone}


def shard_work_dir(settings: ShardSettings) -> Path:
    return s3.inside(settings.work_dir, f"shard_{settings.shard}")


def run_documents(
    storage: s3.Storage,
    settings: ShardSettings,
    todo: list[tuple[str, int]],
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Run ``settings.parallel`` documents at a time, in shard order (largest first).

    Whatever the shard's work folder holds first is left from a killed run (its documents are
    redone or already done), so it is cleared.
    """
    shutil.rmtree(shard_work_dir(settings), ignore_errors=True)
    with ThreadPoolExecutor(max(1, settings.parallel), thread_name_prefix="document") as pool:
        futures = [pool.submit(run_document, storage, settings, uri, attempts) for uri, attempts in todo]
        outcomes = []
        try:
            for future in futures:
                outcomes.append(future.result())
                on_done(outcomes[-1])
        except s3.S3Error:  # S3 is down: the documents not started would fail the same way
            pool.shutdown(cancel_futures=True)
            raise
    return outcomes


# --- status ---------------------------------------------------------------------------------------

def shard_status(shards: dict[int, list[str]], pages: dict[str, int], done: set[str], failed: set[str]) -> dict[str, Any]:
    """Done / failed / remaining documents and pages per shard and overall (done wins over failed)."""
    rows = []
    for shard, uris in sorted(shards.items()):
        row = {"shard": shard, **{f"{s}_{u}": 0 for s in ("done", "failed", "remaining", "total") for u in ("documents", "pages")}}
        for uri in filter(lambda u: not uri_problem(u), uris):  # RunShard rejects the others
            key = doc_key(uri)
            state = "done" if key in done else "failed" if key in failed else "remaining"
            for prefix in (state, "total"):
                row[f"{prefix}_documents"] += 1
                row[f"{prefix}_pages"] += pages.get(uri, 0)
        rows.append(row)
    overall = {k: sum(r[k] for r in rows) for k in (rows[0] if rows else {}) if k != "shard"}
    return {"shards": rows, "overall": overall}


def format_status(status: dict[str, Any]) -> str:
    header = f"{'shard':>7} {'done docs':>10} {'pages':>11} {'failed':>8} {'pages':>9} {'remaining':>10} {'pages':>11} {'done %':>7}"
    lines = [header]

    def line(label: str, r: dict[str, int]) -> str:
        share = 100 * r["done_pages"] / r["total_pages"] if r.get("total_pages") else 0.0
        return (f"{label:>7} {r['done_documents']:>10,} {r['done_pages']:>11,} {r['failed_documents']:>8,} "
                f"{r['failed_pages']:>9,} {r['remaining_documents']:>10,} {r['remaining_pages']:>11,} {share:>6.1f}%")

    lines += [line(str(r["shard"]), r) for r in status["shards"]]
    if status["overall"]:
        lines.append(line("all", status["overall"]))
    return "\n".join(lines)


def collect_status(storage: s3.Storage, shard_prefix: str, status_prefix: str, page_counts: str = "") -> dict[str, Any]:
    """Read the summary, the shard files, the page counts and one listing of the markers."""
    summary = json.loads(storage.read_bytes(s3.join(shard_prefix, SUMMARY_NAME)))
    with ThreadPoolExecutor(8) as pool:
        numbers = [r["shard"] for r in summary["shards"]]
        files = pool.map(lambda k: storage.read_bytes(s3.join(shard_prefix, shard_name(k))), numbers)
        shards = {k: parse_shard_file(data) for k, data in zip(numbers, files)}
    counts = page_counts or summary.get("page_counts", "")
    pages = {}
    if counts:
        for row in csv_rows(storage.read_bytes(counts)):
            if (row.get("pages") or "").isdigit():
                pages[row["key"]] = int(row["pages"])
    done, failed = scan_markers(storage, status_prefix)
    return shard_status(shards, pages, done, failed)


# --- preflight ------------------------------------------------------------------------------------

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
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("GPU visible", False, f"nvidia-smi: {exc}",
                     "the engine needs a GPU: install the NVIDIA driver (nvidia-smi) or run on a GPU node")
    gpus = [line for line in result.stdout.splitlines() if line.startswith("GPU")]
    ok = result.returncode == 0 and bool(gpus)
    return Check("GPU visible", ok, "; ".join(gpus) or result.stderr.strip()[:200],
                 "" if ok else "the engine needs a GPU: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")


def engine_check(engine: str, command: str, olmocr_python: str) -> Check:
    """The engine's program is present (and for a template: its placeholders are known)."""
    if engine == "command":
        try:
            program = expand_command(command, {p: p for p in PLACEHOLDERS})[0]
        except ValueError as exc:
            return Check("engine command", False, str(exc), "fix [s3] command")
        found = shutil.which(program)
        return Check("engine command", bool(found), f"{program} -> {found}",
                     "" if found else f"install {program} or give its full path in [s3] command")
    if engine == "olmocr":
        try:
            result = subprocess.run([olmocr_python, "-c", "import olmocr"], capture_output=True, text=True, timeout=120)
            ok, detail = result.returncode == 0, result.stderr.strip()[-200:] or "import olmocr ok"
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, detail = False, str(exc)
        return Check("engine olmocr", ok, f"{olmocr_python}: {detail}",
                     "" if ok else "pip install olmocr into [ocr] olmocr_python's environment")
    if engine == "tesseract":
        missing = [p for p in ("tesseract", "pdftoppm") if not shutil.which(p)]
        return Check("engine tesseract", not missing, f"missing: {missing}" if missing else "tesseract, pdftoppm found",
                     "apt-get install tesseract-ocr poppler-utils" if missing else "")
    if engine == "text":
        return Check("engine text", True, "pypdf in this interpreter")
    return Check("engine", False, f"unknown engine {engine!r}", "set [s3] engine to olmocr, tesseract, text or command")


def format_checks(checks: list[Check]) -> str:
    return "\n".join(
        f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" + ("" if c.ok else f"\n       fix: {c.fix}") for c in checks
    )


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sharding", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="done / failed / remaining documents and pages per shard")
    status.add_argument("--shard-prefix", help="where shard_K.txt live (default: [s3] shard_prefix)")
    status.add_argument("--status-prefix", help="where the markers live (default: [s3] status_prefix)")
    status.add_argument("--page-counts", default="", help="master CSV (default: the one the summary names)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from pipeline.config import S3Config

    cfg = S3Config()
    shard_prefix = args.shard_prefix or cfg.shard_prefix
    status_prefix = args.status_prefix or cfg.status_prefix
    if not shard_prefix or not status_prefix:
        parser.error("give --shard-prefix and --status-prefix, or set them in luigi.cfg [s3]")
    try:
        result = collect_status(s3.Storage(), shard_prefix, status_prefix, args.page_counts)
    except (s3.S3Error, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_status(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
