"""Shard status: done / failed / remaining documents and pages per shard, from the shard files,
the page counts and one listing of the markers. ``python -m pipeline.sharding status`` prints it
without Luigi.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pipeline.cloud import s3
from pipeline.cloud.claims import Claims, Node
from pipeline.cloud.markers import doc_key, parse_node_stats, scan_status
from pipeline.cloud.shard_plan import read_shards, uri_problem

if TYPE_CHECKING:
    from pipeline.config import S3Config

# A running node whose counts did not change for this long is not counted in the rate (it may be dead).
SILENT_SECONDS = 3600.0


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
    return "\n".join(lines + _claim_lines(status.get("claims", [])) + _node_lines(status.get("nodes", {})))


def _claim_lines(claims: list[dict[str, Any]]) -> list[str]:
    lines = []
    for shard in sorted({c["shard"] for c in claims}):
        mine = [c for c in claims if c["shard"] == shard]
        stale = sum(c["stale"] for c in mine)
        held = ", ".join(f"{c['node']} {c['age']} s{' STALE' if c['stale'] else ''}" for c in mine[:8])
        more = f", +{len(mine) - 8} more" if len(mine) > 8 else ""
        lines.append(f"claims of shard {shard}: {len(mine)} claimed, {stale} stale (node, lease age: {held}{more})")
    return [""] + lines if lines else []


def _node_lines(nodes: dict[str, Any]) -> list[str]:
    if not nodes.get("rows"):
        return []
    lines = ["", f"{'node':<24} {'docs done':>10} {'pages':>11} {'failed':>7} {'pages/hour':>11} {'state':>9}"]
    for r in nodes["rows"]:
        state = "running" if r["running"] else "idle"
        lines.append(f"{r['node'][:24]:<24} {r['documents']:>10,} {r['pages']:>11,} {r['failed']:>7,} "
                     f"{r['pages_per_hour']:>11,.0f} {state:>9}")
    hours = nodes["hours_to_finish"]
    if hours is not None:
        lines.append(f"at {nodes['pages_per_hour']:,.0f} pages/hour (running nodes) the rest takes {hours:.1f} h")
    return lines


def collect_status(
    storage: s3.Storage, shard_prefix: str, status_prefix: str, page_counts: str = ""
) -> dict[str, Any]:
    """Read the summary, the shard files, the page counts and one listing of the markers (and each
    claim, when documents are being worked on)."""
    shards, pages = read_shards(storage, shard_prefix, page_counts)
    listing = scan_status(storage, status_prefix)
    nodes = [stats for stats in map(parse_node_stats, listing.nodes) if stats]
    result = shard_status(shards, pages, listing.done, listing.failed)
    result["claims"] = read_claims(storage, status_prefix, shards, listing.claimed - listing.done)
    result["nodes"] = node_rates(nodes, result["overall"].get("remaining_pages", 0))
    return result


def read_claims(storage: s3.Storage, status_prefix: str, shards: dict[int, list[str]],
                claimed: set[str]) -> list[dict[str, Any]]:
    """[{shard, uri, node, age, lease, stale}] of the claimed documents, read in parallel."""
    if not claimed:
        return []
    reader = Claims(storage, status_prefix, Node.here(), lease_seconds=1)
    wanted = [(shard, uri) for shard, uris in sorted(shards.items()) for uri in uris
              if not uri_problem(uri) and doc_key(uri) in claimed]
    with ThreadPoolExecutor(16) as pool:
        found = list(pool.map(lambda item: reader.read(item[1]), wanted))
    return [{"shard": shard, "uri": uri, "node": claim.body.get("node", "?"), "age": round(claim.age),
             "lease": claim.lease, "stale": claim.stale()}
            for (shard, uri), claim in zip(wanted, found, strict=True) if claim is not None]


def node_rates(runs: list[dict[str, Any]], remaining_pages: int, now: float | None = None) -> dict[str, Any]:
    """Per node: documents, pages, failed, pages/hour, running; and overall the pages per hour of the
    running nodes and the hours they need for ``remaining_pages`` at that rate (None: no rate yet)."""
    now = time.time() if now is None else now
    per_node: dict[str, dict[str, Any]] = {}
    for run in runs:
        row = per_node.setdefault(run["node"], {"node": run["node"], "documents": 0, "pages": 0, "failed": 0,
                                                "seconds": 0, "running": False, "rate": 0.0})
        for key in ("documents", "pages", "failed", "seconds"):
            row[key] += run[key]
        if run["state"] == "running" and now - (run["started"] + run["seconds"]) < SILENT_SECONDS:
            row["running"] = True
            row["rate"] += 3600 * run["pages"] / max(1, run["seconds"])
    rows = sorted(per_node.values(), key=lambda r: r["node"])
    for row in rows:
        row["pages_per_hour"] = round(3600 * row["pages"] / max(1, row["seconds"]), 1)
        row["rate"] = round(row["rate"], 1)
    rate = sum(r["rate"] for r in rows)
    hours = round(remaining_pages / rate, 2) if rate else None
    return {"rows": rows, "pages_per_hour": round(rate, 1), "hours_to_finish": hours}


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
