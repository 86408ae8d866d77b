"""Checks that a batch's intermediate files say what they claim, before anything relies on them.

Chunk lists are derived from the chunk plan: one edited by hand or damaged is written again from
the plan before its chunk runs. A chunk's done marker vouches for a record of every document it
does not list as missing: when the results hold no whole record for one of them (a results file cut
short, emptied or deleted), the marker is withdrawn so that the chunk runs again.
"""
from __future__ import annotations

from typing import Any

from pipeline import atomic, events
from pipeline.layout import BatchPaths, InvalidIdentifier, Layout, identifier_of


def chunk_list_bytes(paths: BatchPaths, identifiers: list[str]) -> bytes:
    """The chunk list of these documents: one absolute PDF path a line, in the plan's order."""
    return "".join(f"{paths.pdf(i)}\n" for i in identifiers).encode("utf-8")


def write_chunk_list(paths: BatchPaths, chunk: dict[str, Any]) -> None:
    """The chunk list of a planned chunk, derived from its record in a plan (the one place they are made)."""
    atomic.write_bytes(paths.chunk_list(chunk["index"]), chunk_list_bytes(paths, chunk["documents"]))


def repair_chunk_lists(layout: Layout, paths: BatchPaths, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write again each chunk list that differs from its plan; returns what differed, per chunk."""
    repaired = []
    for chunk in chunks:
        path = paths.chunk_list(chunk["index"])
        expected = chunk_list_bytes(paths, chunk["documents"])
        try:
            found = path.read_bytes()
        except FileNotFoundError:
            found = b""
        if found == expected:
            continue
        lines = set(found.decode("utf-8", "replace").splitlines())
        wanted = set(expected.decode("utf-8").splitlines())
        repaired.append({"chunk": chunk["index"], "file": str(path), "removed_lines": sorted(lines - wanted),
                         "missing_lines": sorted(wanted - lines)})
        atomic.write_bytes(path, expected)
        print(f"chunk {chunk['index']}: {path} did not match the chunk plan (extra lines: "
              f"{len(lines - wanted)}, missing lines: {len(wanted - lines)}); written again from the plan",
              flush=True)
    events.append(layout.events, [events.event("chunk_list_repaired", batch=paths.number, **r) for r in repaired])
    return repaired


def untrusted_markers(paths: BatchPaths, chunks: list[dict[str, Any]], have: set[str]) -> dict[int, str]:
    """{chunk index: why} of the done chunks whose marker cannot be read, or vouches for a document
    that has no whole record in the results (``have``: identifiers with one)."""
    untrusted = {}
    for chunk in chunks:
        marker = paths.done_marker(chunk["index"])
        if not marker.exists():
            continue
        try:
            missing = {identifier_of(name) for name in atomic.read_json(marker)["missing"]}
        except (ValueError, KeyError, TypeError, InvalidIdentifier) as exc:
            untrusted[chunk["index"]] = f"its done marker {marker} cannot be read ({exc})"
            continue
        lacking = sorted(set(chunk["documents"]) - missing - have)
        if lacking:
            untrusted[chunk["index"]] = (f"{len(lacking)} documents it reports done have no whole record in "
                                         f"{paths.results} (first: {lacking[0]!r})")
    return untrusted


def withdraw(layout: Layout, paths: BatchPaths, untrusted: dict[int, str]) -> None:
    """Remove the done markers of ``untrusted`` chunks, so that they run again."""
    for index, why in sorted(untrusted.items()):
        print(f"chunk {index}: {why}; it is run again", flush=True)
    atomic.remove_files([paths.done_marker(i) for i in untrusted])
    events.append(layout.events, [events.event("chunk_redone", batch=paths.number, chunk=i, reason=why)
                                    for i, why in sorted(untrusted.items())])


def failure_of(paths: BatchPaths, index: int | None, file: str) -> dict[str, str] | None:
    """Why chunk ``index`` left ``file`` without a record, from its done marker; None if it does not say."""
    marker = paths.done_marker(index) if index is not None else None
    if marker is None or not marker.exists():
        return None
    return next((f for f in atomic.read_json(marker).get("failed", []) if f.get("file") == file), None)
