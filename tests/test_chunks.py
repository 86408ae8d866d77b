"""pipeline.stages.chunks: packing and retry chunks, checked against independent arithmetic; the plan of
a real batch (chunks.json and its chunk lists)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from pipeline import events
from pipeline.executors.walltime import WalltimeModel
from pipeline.layout import Layout
from pipeline.stages import chunks
from pipeline.stages.chunks import pack_chunks, retry_chunks

from .stage_inputs import batch, write_results

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


# --- retry chunks ---------------------------------------------------------------------------------

def test_retry_chunks_carry_their_pages_and_walltime() -> None:
    pages = {"a": 7, "b": 5, "c": 30}
    [retry] = retry_chunks([(0, ["b", "a"]), (1, [])], pages, 2, WalltimeModel(100, 2, 0.5))
    assert (retry["index"], retry["retry_of"], retry["documents"]) == (2, 0, ["a", "b"])
    assert (retry["pages"], retry["walltime_seconds"]) == (12, 186)  # (100 + 2 * 12) * 1.5


# --- the plan of a batch --------------------------------------------------------------------------

DOCUMENTS = {"alpha": 3, "beta two": 4, "gamma": 2, "huge": 9, "old": 5}


def test_plan_packs_the_documents_without_a_result_and_writes_their_chunk_lists(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    paths = batch(layout, tmp_path / "incoming", DOCUMENTS)
    write_results(paths, "older_run", {"old": 5})  # OCRed before: planned for nothing
    plan = chunks.plan_batch(layout, paths, 6, WalltimeModel(100, 2, 0.5))

    assert json.loads(paths.chunk_plan.read_text()) == plan
    assert plan["already_have_results"] == ["old"] and plan["pages_per_chunk"] == 6
    planned = [i for c in plan["chunks"] for i in c["documents"]]
    assert sorted(planned) == ["alpha", "beta two", "gamma", "huge"]
    for chunk in plan["chunks"]:
        assert chunk["pages"] == sum(DOCUMENTS[i] for i in chunk["documents"])
        assert chunk["pages"] <= 6 or chunk["documents"] == ["huge"]  # 9 pages: a chunk of its own
        assert chunk["walltime_seconds"] == math.ceil((100 + 2 * chunk["pages"]) * 1.5)
        # The engine reads the chunk list: one absolute path a line, each a PDF of the batch.
        lines = (paths.dir / chunk["file"]).read_text().splitlines()
        assert lines == [str(paths.dir / f"{i}.pdf") for i in chunk["documents"]]
        assert all(Path(line).is_file() for line in lines)
    logged = [e for e in events.read(layout.events) if e["event"] == "chunk_planned"]
    assert sorted((e["chunk"], e["pages"], e["documents"]) for e in logged) == sorted(
        (c["index"], c["pages"], len(c["documents"])) for c in plan["chunks"])
    assert chunks.describe_plan(plan) == "3 chunks, 18 pages to OCR; 1 documents already have results"
