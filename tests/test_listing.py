"""pipeline.listing: folder listings and JSON records kept between calls, read again once they change,
and never kept while a change could hide in the same clock tick."""
from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline import atomic, listing


def settle(path: Path) -> None:
    """Date ``path``'s mtime a minute back, as for a folder nobody touched lately."""
    past = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(past, past))


def test_a_listing_holds_regular_files_and_folders_never_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.pdf").write_bytes(b"b")
    os.symlink(tmp_path / "a.pdf", tmp_path / "link.pdf")
    os.symlink(tmp_path / "sub", tmp_path / "linked_folder")

    entries = listing.entries(tmp_path)
    assert entries.files == {"a.pdf"} and entries.folders == ("sub",)
    assert [(e.folder, sorted(e.files)) for e in listing.walk(tmp_path)] == [
        (str(tmp_path), ["a.pdf"]), (str(tmp_path / "sub"), ["b.pdf"])]
    assert listing.entries(tmp_path / "missing").files == frozenset()


def test_a_settled_folder_is_listed_once_and_again_when_it_changes(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"a")
    settle(tmp_path)
    calls = []

    def count(entries: listing.Entries) -> int:
        calls.append(entries.folder)
        return len(entries.files)

    first = listing.entries(tmp_path)
    assert listing.entries(tmp_path) is first and first.derived(count) == 1 and first.derived(count) == 1
    assert calls == [str(tmp_path)]  # derived once per listing

    (tmp_path / "b.pdf").write_bytes(b"b")  # the folder's mtime moves
    assert listing.entries(tmp_path).files == {"a.pdf", "b.pdf"}
    os.unlink(tmp_path / "a.pdf")
    assert listing.entries(tmp_path).files == {"b.pdf"} and listing.entries(tmp_path).derived(count) == 1


def test_a_folder_changed_lately_is_listed_at_every_call(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"a")
    mtime = tmp_path.stat().st_mtime_ns
    assert listing.entries(tmp_path).files == {"a.pdf"}
    # A file added in the same clock tick leaves the folder's mtime as it was: the listing taken
    # just before must not be trusted.
    (tmp_path / "b.pdf").write_bytes(b"b")
    os.utime(tmp_path, ns=(mtime, mtime))
    assert listing.entries(tmp_path).files == {"a.pdf", "b.pdf"}


def documents(record: dict) -> list[str]:
    return sorted(record["documents"])


def test_a_record_is_read_again_when_it_is_replaced(tmp_path: Path) -> None:
    record = tmp_path / "batch.json"
    atomic.write_json(record, {"documents": {"a": 1}})
    settle(record)
    assert listing.read_json(record, documents) == ["a"]
    assert listing.read_json(record, documents) is listing.read_json(record, documents)  # kept
    atomic.write_json(record, {"documents": {"a": 1, "b": 2}})
    assert listing.read_json(record, documents) == ["a", "b"]
    os.unlink(record)
    try:
        listing.read_json(record, documents)
    except FileNotFoundError as exc:
        assert str(record) in str(exc)
    else:
        raise AssertionError("a removed record must not be served from memory")
