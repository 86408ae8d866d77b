"""pipeline.stages.integrity in-process: chunk lists written again from the plan, done markers that
vouch for results which are not there, and why a chunk left a PDF without a record."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import atomic, events
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import integrity

CHUNKS = [{"index": 0, "documents": ["a b", "c"]}, {"index": 1, "documents": ["d"]}]


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


@pytest.fixture
def paths(layout: Layout) -> BatchPaths:
    paths = BatchPaths(layout.batch_dir(4))
    for chunk in CHUNKS:
        integrity.write_chunk_list(paths, chunk)
    return paths


def kinds(layout: Layout, kind: str) -> list[dict]:
    return [e for e in events.read(layout.events) if e["event"] == kind]


def test_a_chunk_list_is_one_absolute_pdf_path_a_line_in_plan_order(paths: BatchPaths) -> None:
    assert paths.chunk_list(0).read_text().splitlines() == [str(paths.dir / "a b.pdf"), str(paths.dir / "c.pdf")]


def test_chunk_lists_that_differ_from_the_plan_are_written_again_and_the_others_left_alone(
        layout: Layout, paths: BatchPaths) -> None:
    intact = paths.chunk_list(1).stat().st_mtime_ns
    paths.chunk_list(0).write_text(f"{paths.dir / 'a b.pdf'}\n/etc/passwd\n")  # edited by hand
    repaired = integrity.repair_chunk_lists(layout, paths, CHUNKS)

    assert paths.chunk_list(0).read_text().splitlines() == [str(paths.dir / "a b.pdf"), str(paths.dir / "c.pdf")]
    assert paths.chunk_list(1).stat().st_mtime_ns == intact
    assert repaired == [{"chunk": 0, "file": str(paths.chunk_list(0)), "removed_lines": ["/etc/passwd"],
                         "missing_lines": [str(paths.dir / "c.pdf")]}]
    [logged] = kinds(layout, "chunk_list_repaired")
    assert logged["batch"] == "0004" and logged["removed_lines"] == ["/etc/passwd"]
    paths.chunk_list(1).unlink()  # deleted: written again too
    assert [r["chunk"] for r in integrity.repair_chunk_lists(layout, paths, CHUNKS)] == [1]
    assert paths.chunk_list(1).read_text() == f"{paths.dir / 'd.pdf'}\n"


def test_a_done_marker_is_untrusted_when_a_document_it_vouches_for_has_no_record(
        layout: Layout, paths: BatchPaths) -> None:
    atomic.write_json(paths.done_marker(0), {"chunk": 0, "missing": ["c.pdf"]})  # c reported missing: fair
    assert integrity.untrusted_markers(paths, CHUNKS, {"a b"}) == {}  # chunk 1 has no marker: not done

    untrusted = integrity.untrusted_markers(paths, CHUNKS, set())
    assert list(untrusted) == [0] and "'a b'" in untrusted[0] and str(paths.results) in untrusted[0]

    paths.done_marker(1).parent.mkdir(parents=True, exist_ok=True)
    paths.done_marker(1).write_text('{"chunk": 1, "missi')  # cut short
    assert "cannot be read" in integrity.untrusted_markers(paths, CHUNKS, {"a b", "d"})[1]

    integrity.withdraw(layout, paths, {0: "its results are gone", 1: "cut short"})
    assert not paths.done_marker(0).exists() and not paths.done_marker(1).exists()
    assert [(e["chunk"], e["reason"]) for e in kinds(layout, "chunk_redone")] == [
        (0, "its results are gone"), (1, "cut short")]


def test_the_reason_a_chunk_left_a_pdf_without_record_comes_from_its_marker(paths: BatchPaths) -> None:
    failure = {"file": "c.pdf", "error": "EncryptedPdf", "message": "needs a password"}
    atomic.write_json(paths.done_marker(0), {"chunk": 0, "missing": ["c.pdf"], "failed": [failure]})
    assert integrity.failure_of(paths, 0, "c.pdf") == failure
    assert integrity.failure_of(paths, 0, "a b.pdf") is None
    assert integrity.failure_of(paths, 1, "d.pdf") is None  # no marker
    assert integrity.failure_of(paths, None, "d.pdf") is None  # in no chunk
