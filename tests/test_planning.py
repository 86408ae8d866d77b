"""Chunk packing (pipeline.stages.chunks), checked against independent arithmetic."""
from __future__ import annotations

import math
import random

import pytest

from pipeline.stages.chunks import pack_chunks

SEEDS = range(400)


def first_fit_decreasing(sizes: list[int], limit: int) -> int:
    """Chunk count of textbook first-fit-decreasing, written here as the reference bound."""
    loads: list[int] = []
    for size in sorted(sizes, reverse=True):
        for n, load in enumerate(loads):
            if load + size <= limit:
                loads[n] += size
                break
        else:
            loads.append(size)
    return len(loads)


def random_case(seed: int) -> tuple[dict[str, int], int]:
    """Documents of a random shape: mostly small, sometimes anything up to (and over) the limit."""
    rng = random.Random(seed)
    limit = rng.choice([1, 7, 20, 100, 1500])
    count = rng.randint(0, 150)
    shape = rng.choice(["tiny", "small", "any", "with_oversized"])
    top = {"tiny": max(1, limit // 10), "small": max(1, limit // 4), "any": limit, "with_oversized": limit * 3}[shape]
    documents = {f"doc_{seed}_{i:03d}": rng.randint(1, top) for i in range(count)}
    return documents, limit


@pytest.mark.parametrize("seed", SEEDS)
def test_every_document_is_placed_exactly_once_and_no_chunk_is_over_the_limit(seed):
    documents, limit = random_case(seed)
    chunks = pack_chunks(documents, limit)
    placed = [i for c in chunks for i in c.identifiers]
    assert sorted(placed) == sorted(documents)
    assert len(placed) == len(set(placed))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.identifiers, "no empty chunks"
        assert chunk.pages == sum(documents[i] for i in chunk.identifiers)
        if chunk.pages > limit:
            assert len(chunk.identifiers) == 1 and documents[chunk.identifiers[0]] > limit
    oversized = {i for i, p in documents.items() if p > limit}
    assert {c.identifiers[0] for c in chunks if len(c.identifiers) == 1 and c.pages > limit} == oversized


@pytest.mark.parametrize("seed", SEEDS)
def test_chunk_count_is_as_low_as_first_fit_decreasing_allows(seed):
    documents, limit = random_case(seed)
    fitting = [p for p in documents.values() if p <= limit]
    oversized = len(documents) - len(fitting)
    chunks = pack_chunks(documents, limit)
    normal = len(chunks) - oversized
    lower = math.ceil(sum(fitting) / limit)
    assert normal >= lower  # arithmetic: no packing can do better
    assert normal <= first_fit_decreasing(fitting, limit)
    if fitting and max(fitting) <= limit // 4:
        assert normal <= lower + 1


def test_count_is_minimal_where_spreading_evenly_would_leave_unusable_gaps():
    # 6+4 and 4+3+3 fill two chunks of 10 exactly; placing 4 and 4 side by side leaves no room for a 3.
    chunks = pack_chunks({"a": 6, "b": 4, "c": 4, "d": 3, "e": 3}, 10)
    assert len(chunks) == 2
    assert sorted(c.pages for c in chunks) == [10, 10]


def test_exact_counts_for_simple_inputs():
    assert pack_chunks({}, 10) == []
    ones = {f"p{i}": 1 for i in range(95)}
    assert len(pack_chunks(ones, 10)) == 10
    quarters = {f"q{i}": 25 for i in range(12)}
    assert [c.pages for c in pack_chunks(quarters, 100)] == [100, 100, 100]
    mixed = pack_chunks({"huge": 5000, "big": 1600, "small": 10}, 1500)
    assert sorted(c.identifiers for c in mixed) == [["big"], ["huge"], ["small"]]
    with pytest.raises(ValueError):
        pack_chunks({"a": 1}, 0)


@pytest.mark.parametrize("seed", range(200))
def test_many_small_documents_are_spread_evenly(seed):
    rng = random.Random(10_000 + seed)
    limit = rng.choice([20, 100, 1500])
    documents = {f"d{i}": rng.randint(1, max(1, limit // 10)) for i in range(rng.randint(40, 300))}
    chunks = pack_chunks(documents, limit)
    loads = [c.pages for c in chunks]
    assert max(loads) - min(loads) <= max(documents.values())
    assert max(loads) - min(loads) <= limit // 10


@pytest.mark.parametrize("seed", range(50))
def test_packing_is_deterministic_whatever_the_input_order(seed):
    documents, limit = random_case(seed)
    # Ties in page counts are common; the result must not depend on dict order.
    shuffled_items = list(documents.items())
    random.Random(seed).shuffle(shuffled_items)
    first = pack_chunks(documents, limit)
    again = pack_chunks(dict(documents), limit)
    shuffled = pack_chunks(dict(shuffled_items), limit)
    as_tuples = lambda chunks: [(c.index, c.pages, c.identifiers) for c in chunks]  # noqa: E731
    assert as_tuples(first) == as_tuples(again) == as_tuples(shuffled)
