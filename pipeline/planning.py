"""Pure planning functions: chunk packing and the walltime model."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field


@dataclass
class Chunk:
    index: int
    pages: int = 0
    identifiers: list[str] = field(default_factory=list)


def pack_chunks(documents: dict[str, int], pages_per_chunk: int) -> list[Chunk]:
    """Pack {identifier: pages} into balanced chunks of at most ``pages_per_chunk`` pages.

    The chunk count is the least the limit allows; documents go largest first to the lightest
    chunk that has room (a new chunk opens when none has). A document larger than the limit gets
    a chunk of its own. Deterministic: ties break on identifier and chunk index.
    """
    if pages_per_chunk < 1:
        raise ValueError("pages_per_chunk must be at least 1")
    big = sorted((i for i, p in documents.items() if p > pages_per_chunk), key=lambda i: (-documents[i], i))
    rest = sorted((i for i, p in documents.items() if p <= pages_per_chunk), key=lambda i: (-documents[i], i))
    chunks = [Chunk(n, documents[i], [i]) for n, i in enumerate(big)]
    total = sum(documents[i] for i in rest)
    target = math.ceil(total / pages_per_chunk) if rest else 0
    heap = []
    for _ in range(target):
        chunk = Chunk(len(chunks))
        chunks.append(chunk)
        heap.append((0, chunk.index))
    heapq.heapify(heap)
    for identifier in rest:
        pages = documents[identifier]
        skipped = []
        while heap and heap[0][0] + pages > pages_per_chunk:
            skipped.append(heapq.heappop(heap))
        if heap:
            _, index = heapq.heappop(heap)
        else:
            chunks.append(Chunk(len(chunks)))
            index = len(chunks) - 1
        chunk = chunks[index]
        chunk.identifiers.append(identifier)
        chunk.pages += pages
        heapq.heappush(heap, (chunk.pages, index))
        for item in skipped:
            heapq.heappush(heap, item)
    return [c for c in chunks if c.identifiers]


@dataclass(frozen=True)
class WalltimeModel:
    """(base_seconds + seconds_per_page * pages) * (1 + buffer), capped at max_seconds."""

    base_seconds: float = 300.0
    seconds_per_page: float = 6.0
    buffer: float = 0.2
    max_seconds: int | None = None

    def seconds(self, pages: int, factor: float = 1.0) -> int:
        value = math.ceil((self.base_seconds + self.seconds_per_page * pages) * (1 + self.buffer) * factor)
        return min(value, self.max_seconds) if self.max_seconds else value


def format_walltime(seconds: int) -> str:
    """SLURM's D-HH:MM:SS (whole minutes rounded up, as SLURM would)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"
