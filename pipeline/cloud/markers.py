"""Per-document markers of a cloud shard run: ``<status>/<bucket>/<key>.done`` or ``.failed`` (JSON),
the shard's own ``_shards/shard_K.done``, and where a document's outputs go.

A document is done when its .done marker exists (and lists outputs that exist: see runner);
markers of a whole prefix are read with one listing, never one HEAD per document.
"""
from __future__ import annotations

import json
import os
import re
import socket
from typing import Any, NamedTuple

from pipeline.cloud import s3
from pipeline.events import now_iso


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
    listing = scan_status(storage, status_prefix)
    return listing.done, listing.failed


class StatusListing(NamedTuple):
    done: set[str]       # document keys
    failed: set[str]
    claimed: set[str]
    nodes: list[str]     # names of the nodes' statistics objects (_nodes/...)


def scan_status(storage: s3.Storage, status_prefix: str) -> StatusListing:
    """The document keys done, failed and claimed, and the nodes' statistics, from one listing."""
    listing = StatusListing(set(), set(), set(), [])
    for item in storage.list(s3.folder(status_prefix)):
        name = item.name
        if name.startswith("_nodes/"):
            listing.nodes.append(name)
        elif name.startswith("_shards/"):
            continue
        elif name.endswith(".done"):
            listing.done.add(name[: -len(".done")])
        elif name.endswith(".failed"):
            listing.failed.add(name[: -len(".failed")])
        elif name.endswith(".claim"):
            listing.claimed.add(name[: -len(".claim")])
    return listing


def node_stats_uri(status_prefix: str, node: str, run: str, counts: dict[str, Any]) -> str:
    """Where one run of a node keeps its counts for ShardStatus: in the object's name, so that one
    listing of the status prefix shows every node without reading an object per node:
    ``_nodes/<node>/<started>-<pid>/<documents>d-<pages>p-<failed>f-<seconds>s-<state>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node).lstrip(".") or "node"
    return s3.join(status_prefix, "_nodes", safe, run, "{documents}d-{pages}p-{failed}f-{seconds}s-{state}".format(
        **counts))


_NODE_STATS = re.compile(r"_nodes/(?P<node>[^/]+)/(?P<started>\d+)-(?P<pid>\d+)/(?P<documents>\d+)d-"
                         r"(?P<pages>\d+)p-(?P<failed>\d+)f-(?P<seconds>\d+)s-(?P<state>running|finished)")


def parse_node_stats(name: str) -> dict[str, Any] | None:
    """The counts of a node_stats_uri name relative to the status prefix (None for other names);
    ``started`` is the run's start in seconds since the epoch."""
    match = _NODE_STATS.fullmatch(name)
    if match is None:
        return None
    found: dict[str, Any] = match.groupdict()
    return {k: v if k in ("node", "state") else int(v) for k, v in found.items()}


def marker_bytes(**fields: Any) -> bytes:
    """A marker's body: the given fields with the host and the time."""
    return (json.dumps({**fields, "host": socket.gethostname(), "time": now_iso()}, ensure_ascii=False,
                       sort_keys=True, indent=2) + "\n").encode("utf-8")
