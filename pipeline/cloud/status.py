"""Shard status: done / failed / remaining documents and pages per shard, from the shard files,
the page counts and one listing of the markers. ``python -m pipeline.sharding status`` prints it
without Luigi.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from pipeline.cloud import s3
from pipeline.cloud.markers import doc_key, scan_markers
from pipeline.cloud.shard_plan import read_shards, uri_problem

if TYPE_CHECKING:
    from pipeline.config import S3Config


def shard_status(
    shards: dict[int, list[str]], pages: dict[str, int], done: set[str], failed: set[str]
) -> dict[str, Any]:
    """Done / failed / remaining documents and pages per shard and overall (done wins over failed)."""
    rows = []
    counters = [f"{s}_{u}" for s in ("done", "failed", "remaining", "total") for u in ("documents", "pages")]
    for shard, uris in sorted(shards.items()):
        row = {"shard": shard, **dict.fromkeys(counters, 0)}
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
    header = (f"{'shard':>7} {'done docs':>10} {'pages':>11} {'failed':>8} {'pages':>9} {'remaining':>10} "
              f"{'pages':>11} {'done %':>7}")
    lines = [header]

    def line(label: str, r: dict[str, int]) -> str:
        share = 100 * r["done_pages"] / r["total_pages"] if r.get("total_pages") else 0.0
        return (f"{label:>7} {r['done_documents']:>10,} {r['done_pages']:>11,} {r['failed_documents']:>8,} "
                f"{r['failed_pages']:>9,} {r['remaining_documents']:>10,} {r['remaining_pages']:>11,} {share:>6.1f}%")

    lines += [line(str(r["shard"]), r) for r in status["shards"]]
    if status["overall"]:
        lines.append(line("all", status["overall"]))
    return "\n".join(lines)


def collect_status(
    storage: s3.Storage, shard_prefix: str, status_prefix: str, page_counts: str = ""
) -> dict[str, Any]:
    """Read the summary, the shard files, the page counts and one listing of the markers."""
    shards, pages = read_shards(storage, shard_prefix, page_counts)
    done, failed = scan_markers(storage, status_prefix)
    return shard_status(shards, pages, done, failed)


def resolve_prefixes(shard_prefix: str, status_prefix: str, cfg: S3Config) -> tuple[str, str]:
    """The given prefixes, else [s3]'s; ValueError when either is still unknown."""
    shard_prefix, status_prefix = shard_prefix or cfg.shard_prefix, status_prefix or cfg.status_prefix
    if not shard_prefix or not status_prefix:
        raise ValueError("set --shard-prefix and --status-prefix, or [s3] shard_prefix and status_prefix")
    return shard_prefix, status_prefix


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.sharding status``: the table (or JSON) of collect_status; 1 when S3 fails."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.sharding", description=(
        "Cloud shards: page counts of a prefix, page-balanced shard manifests, per-document shard runs"))
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
