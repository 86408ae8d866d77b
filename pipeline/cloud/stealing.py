"""Which document a node takes next: its own shard first, in shard order (largest first); with
stealing, then the largest document of the shard with the most pages still to take."""
from __future__ import annotations

from collections.abc import Container


def next_document(
    own: list[str],
    shards: dict[int, list[str]],
    pages: dict[str, int],
    taken: Container[str],
    steal: bool,
) -> str | None:
    """The next document not in ``taken`` (done, given up, claimed, tried or running), or None.

    A document without a page count weighs one page.
    """
    for uri in own:
        if uri not in taken:
            return uri
    if not steal:
        return None
    best: tuple[int, int] | None = None  # (pages left, -shard): most pages, then the lowest shard number
    best_shard: list[str] = []
    for shard, uris in shards.items():
        left = [u for u in uris if u not in taken]
        if left:
            weight = (sum(pages.get(u, 1) for u in left), -shard)
            if best is None or weight > best:
                best, best_shard = weight, left
    if not best_shard:
        return None
    return min(best_shard, key=lambda u: (-pages.get(u, 1), u))

