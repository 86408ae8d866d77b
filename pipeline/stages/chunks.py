"""Chunk planning: packing a batch's documents into chunks and retry chunks (their walltime comes from
pipeline.executors.walltime)."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline import atomic, events
from pipeline.executors.walltime import WalltimeModel
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import batches, integrity


@dataclass
class Chunk:
    index: int
    pages: int = 0
    identifiers: list[str] = field(default_factory=list)


def pack_chunks(documents: dict[str, int], pages_per_chunk: int) -> list[Chunk]:
    """Pack {identifier: pages} into balanced chunks of at most ``pages_per_chunk`` pages.

    The chunk count is the least the limit allows (never more than first-fit-decreasing needs);
    documents go largest first to the lightest chunk that has room. When that leaves a document
    with no room, first-fit-decreasing at the least capacity that keeps its chunk count (MULTIFIT)
    is used instead. A document larger than the limit gets a chunk of its own. Deterministic: ties
    break on identifier and chunk index.
    """
    if pages_per_chunk < 1:
        raise ValueError("pages_per_chunk must be at least 1")
    big = sorted((i for i, p in documents.items() if p > pages_per_chunk), key=lambda i: (-documents[i], i))
    rest = sorted((i for i, p in documents.items() if p <= pages_per_chunk), key=lambda i: (-documents[i], i))
    chunks = [Chunk(n, documents[i], [i]) for n, i in enumerate(big)]
    total = sum(documents[i] for i in rest)
    groups = _spread(rest, documents, pages_per_chunk, math.ceil(total / pages_per_chunk) if rest else 0)
    if groups is None:
        # Even spreading left gaps that no remaining document fits: take the chunk count of
        # first-fit-decreasing and the least capacity at which it keeps that count (MULTIFIT).
        count = len(_first_fit(rest, documents, pages_per_chunk))
        low, high = math.ceil(total / count), pages_per_chunk
        while low < high:
            middle = (low + high) // 2
            if len(_first_fit(rest, documents, middle)) <= count:
                high = middle
            else:
                low = middle + 1
        groups = _first_fit(rest, documents, high)
    for group in groups:
        chunks.append(Chunk(len(chunks), sum(documents[i] for i in group), group))
    return chunks


def _spread(order: list[str], documents: dict[str, int], limit: int, count: int) -> list[list[str]] | None:
    """Each document (in order) to the lightest of ``count`` groups with room; None when one fits nowhere."""
    groups: list[list[str]] = [[] for _ in range(count)]
    heap = [(0, n) for n in range(count)]
    for identifier in order:
        pages = documents[identifier]
        skipped = []
        while heap and heap[0][0] + pages > limit:
            skipped.append(heapq.heappop(heap))
        if not heap:
            return None
        load, n = heapq.heappop(heap)
        groups[n].append(identifier)
        heapq.heappush(heap, (load + pages, n))
        for item in skipped:
            heapq.heappush(heap, item)
    return groups


def _first_fit(order: list[str], documents: dict[str, int], capacity: int) -> list[list[str]]:
    """First fit in the given (decreasing) order: each document into the first group with room."""
    groups: list[list[str]] = []
    loads: list[int] = []
    for identifier in order:
        pages = documents[identifier]
        for n, load in enumerate(loads):
            if load + pages <= capacity:
                groups[n].append(identifier)
                loads[n] += pages
                break
        else:
            groups.append([identifier])
            loads.append(pages)
    return groups


def retry_chunks(missing: list[tuple[int, list[str]]], pages: dict[str, int], first_index: int,
                 model: WalltimeModel) -> list[dict[str, Any]]:
    """One retry chunk per (chunk index, identifiers its results miss), numbered from ``first_index``."""
    retries: list[dict[str, Any]] = []
    for index, identifiers in missing:
        if not identifiers:
            continue
        documents = sorted(identifiers)
        count = sum(pages.get(i, 0) for i in documents)
        retries.append({"index": first_index + len(retries), "retry_of": index, "documents": documents,
                        "pages": count, "walltime_seconds": model.seconds(count)})
    return retries


def plan_batch(layout: Layout, paths: BatchPaths, pages_per_chunk: int, model: WalltimeModel) -> dict[str, Any]:
    """Write chunks.json and the chunk lists for the batch's documents that have no OCR result yet;
    returns the plan. Chunk lists are written before the plan that names them."""
    documents = atomic.read_json(paths.batch_record)["documents"]
    have = batches.existing_results(paths)
    todo = {i: d["pages"] for i, d in documents.items() if i not in have}
    plan: list[dict[str, Any]] = []
    for chunk in pack_chunks(todo, pages_per_chunk):
        record: dict[str, Any] = {
            "index": chunk.index,
            "pages": chunk.pages,
            "documents": sorted(chunk.identifiers),
            "walltime_seconds": model.seconds(chunk.pages),
            "file": str(paths.chunk_list(chunk.index).relative_to(paths.dir)),
        }
        integrity.write_chunk_list(paths, record)
        plan.append(record)
    events.append(layout.events, [
        events.event("chunk_planned", batch=paths.number, chunk=c["index"], pages=c["pages"],
                     documents=len(c["documents"])) for c in plan
    ])
    result = {
        "batch": paths.number,
        "pages_per_chunk": pages_per_chunk,
        "chunks": plan,
        "already_have_results": sorted(have & set(documents)),
    }
    atomic.write_json(paths.chunk_plan, result)
    return result


def describe_plan(plan: dict[str, Any]) -> str:
    """The terminal and visualizer line of a written plan."""
    return (f"{len(plan['chunks'])} chunks, {sum(c['pages'] for c in plan['chunks'])} pages to OCR; "
            f"{len(plan['already_have_results'])} documents already have results")
