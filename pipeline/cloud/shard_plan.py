"""The shard plan: which documents of the page counts go into shards, balanced by pages, and the
shard files (``shard_K.txt``, one URI a line) with ``shard_summary.json``."""
from __future__ import annotations

import heapq
import json
import os
from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.cloud import s3
from pipeline.cloud.counting import csv_rows

SUMMARY_NAME = "shard_summary.json"


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
    rows: list[dict[str, Any]] = []
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


def shard_uris(prefix: str, shards: int) -> dict[str, str]:
    """{'shard_1': uri, ..., 'summary': uri}: where make_shard_files writes (the task's outputs)."""
    files = {f"shard_{k}": s3.join(prefix, shard_name(k)) for k in range(1, shards + 1)}
    return {**files, "summary": s3.join(prefix, SUMMARY_NAME)}


def make_shard_files(
    storage: s3.Storage, page_counts: str, shards: int, prefix: str, *,
    min_pages: int = 1, skip_errors: bool = False, source_base: str = "",
) -> dict[str, Any]:
    """Read the page counts, select and balance the documents, write the shard files, then the
    summary (last: it is the mark that every shard file is in place); returns the summary."""
    rows = csv_rows(storage.read_bytes(page_counts))
    documents, skipped = select_documents(rows, min_pages=min_pages, skip_errors=skip_errors, source_base=source_base)
    assigned = balance(documents, shards)
    uris = shard_uris(prefix, shards)
    for k, shard in enumerate(assigned, start=1):
        storage.write_bytes(uris[f"shard_{k}"], shard_file_bytes(shard))
    summary = shard_summary(assigned, documents, skipped, page_counts=page_counts,
                            min_pages=min_pages, skip_errors=skip_errors)
    storage.write_bytes(uris["summary"], (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return summary


def read_shards(storage: s3.Storage, prefix: str, page_counts: str = "") -> tuple[dict[int, list[str]], dict[str, int]]:
    """({shard: uris}, {uri: pages}) from the summary, the shard files and the page counts (the
    given CSV, else the one the summary names; no pages when neither is there)."""
    summary = json.loads(storage.read_bytes(s3.join(prefix, SUMMARY_NAME)))
    numbers = [int(r["shard"]) for r in summary["shards"]]
    with ThreadPoolExecutor(8) as pool:
        files = pool.map(lambda k: storage.read_bytes(s3.join(prefix, shard_name(k))), numbers)
        shards = {k: parse_shard_file(data) for k, data in zip(numbers, files, strict=True)}
    counts = page_counts or summary.get("page_counts", "")
    pages = {}
    if counts:
        for row in csv_rows(storage.read_bytes(counts)):
            if (row.get("pages") or "").isdigit():
                pages[row["key"]] = int(row["pages"])
    return shards, pages


def shard_numbers(storage: s3.Storage, prefix: str) -> list[int]:
    """The shard numbers the summary under ``prefix`` lists."""
    return [int(r["shard"]) for r in json.loads(storage.read_bytes(s3.join(prefix, SUMMARY_NAME)))["shards"]]
