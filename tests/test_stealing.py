"""cloud/stealing: which document a node takes next."""
from __future__ import annotations

from pipeline.cloud.stealing import next_document

SHARDS = {1: ["a1", "a2"], 2: ["b1", "b2", "b3"], 3: ["c1", "c2"]}
PAGES = {"a1": 50, "a2": 40, "b1": 30, "b2": 90, "b3": 10, "c1": 70, "c2": 60}


def test_own_shard_first_in_its_order():
    assert next_document(SHARDS[1], SHARDS, PAGES, set(), steal=True) == "a1"
    assert next_document(SHARDS[1], SHARDS, PAGES, {"a1"}, steal=True) == "a2"


def test_without_stealing_an_exhausted_shard_has_nothing_to_give():
    assert next_document(SHARDS[1], SHARDS, PAGES, {"a1", "a2"}, steal=False) is None


def test_stealing_takes_the_largest_document_of_the_shard_with_most_pages_left():
    taken = {"a1", "a2"}
    # shard 2 has 130 pages left, shard 3 has 130 too: the lower number wins the tie; b2 is its largest
    assert next_document(SHARDS[1], SHARDS, PAGES, taken, steal=True) == "b2"
    # with b2 taken, shard 3 (130) has more left than shard 2 (40)
    assert next_document(SHARDS[1], SHARDS, PAGES, taken | {"b2"}, steal=True) == "c1"
    everything = {u for uris in SHARDS.values() for u in uris}
    assert next_document(SHARDS[1], SHARDS, PAGES, everything, steal=True) is None


def test_documents_without_a_page_count_weigh_one_page():
    shards = {1: [], 2: ["x", "y"], 3: ["z"]}
    assert next_document([], shards, {}, set(), steal=True) == "x"  # two pages left beat one; then by name
    assert next_document([], shards, {"z": 5}, set(), steal=True) == "z"
