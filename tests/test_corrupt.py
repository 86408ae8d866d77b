"""Corrupt intermediates: a results file cut short, emptied or deleted under its done marker, a chunk
list edited by hand, garbage in the event log. Each is detected and redone (or skipped), and never
reaches 05_processed: the batch ends as an undisturbed run ends."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import events, samples
from pipeline.layout import BatchPaths

from .conftest import Site, snapshot
from .end_state import make_inputs, undisturbed
from .invariants import Reference, assert_converged, assert_safe, check_converged

DOCUMENTS = 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Reference]:
    """(source folder, outcome of an undisturbed run), shared by the module."""
    root = tmp_path_factory.mktemp("corrupt_inputs")
    make_inputs(root / "incoming", DOCUMENTS)
    return root / "incoming", undisturbed(root / "reference", root / "incoming")


def batch_site(make_site, source: Path) -> tuple[Site, BatchPaths]:
    # Four pages a chunk: the six documents (1 to 3 pages each) make several chunks.
    site = make_site(source=source, ocr__pages_per_chunk=4, backpressure__min_free_gb=0,
                     core__lock_pid_dir=source.parent / "locks")  # not shared with other test runs
    site.luigi("Download", "--run-id", "d")
    site.luigi("CreateBatch", "--batch", "1")
    return site, BatchPaths(site.layout.batch_dir("1"))


def converges(site: Site, expected: Reference, event: str) -> None:
    """Finalize ends where the undisturbed run ended, says what it redid, and a rerun changes nothing."""
    site.luigi("Finalize", "--batch", "1")
    assert_converged(site.base, expected)
    assert event in [e["event"] for e in events.read(site.layout.events)]
    before = snapshot(site.base)
    site.luigi("Finalize", "--batch", "1")
    assert snapshot(site.base) == before


def results_of_chunk(paths: BatchPaths, index: int) -> Path:
    (name,) = json.loads(paths.done_marker(index).read_text())["results"]
    return paths.results / name


def test_results_damaged_under_their_done_markers_are_redone(make_site, inputs):
    source, expected = inputs
    site, paths = batch_site(make_site, source)
    site.luigi("OCRBatch", "--batch", "1")
    whole = {}
    for index, damage in enumerate(["cut mid-line", "emptied", "deleted"]):
        results = results_of_chunk(paths, index)
        data = whole[results] = results.read_bytes()
        assert data.count(b"\n") >= 2  # the chunk holds several documents
        if damage == "cut mid-line":
            first_line = data.index(b"\n")
            results.write_bytes(data[: first_line + 1 + (len(data) - first_line) // 2])  # second record cut
        elif damage == "emptied":
            results.write_bytes(b"")
        else:
            results.unlink()

    site.luigi("SplitResults", "--batch", "1")

    assert_safe(site.base)
    assert {p: p.read_bytes() for p in whole} == whole  # the chunks ran again: whole records, no half text
    redone = [e for e in events.read(site.layout.events) if e["event"] == "chunk_redone"]
    assert sorted(e["chunk"] for e in redone) == [0, 1, 2] and all("no whole record" in e["reason"] for e in redone)
    converges(site, expected, "chunk_redone")


def test_chunk_lists_edited_by_hand_are_written_again_from_the_plan(make_site, inputs, tmp_path):
    source, expected = inputs
    site, paths = batch_site(make_site, source)
    site.luigi("PlanChunks", "--batch", "1")
    intruder = tmp_path / "intruder.pdf"
    intruder.write_bytes(samples.text_pdf(["This text belongs to no document of the batch."]))
    planned = {}
    for index, edit in enumerate(["path removed", "path added", "garbage line"]):
        chunk_list = paths.chunk_list(index)
        planned[chunk_list] = chunk_list.read_bytes()
        lines = planned[chunk_list].decode().splitlines()
        assert len(lines) >= 2
        if edit == "path removed":
            lines = lines[1:]
        elif edit == "path added":
            lines.append(str(intruder))
        else:
            lines.insert(1, "\x00garbage ../../etc/passwd")
        chunk_list.write_text("".join(f"{line}\n" for line in lines))

    converges(site, expected, "chunk_list_repaired")

    assert {p: p.read_bytes() for p in planned} == planned
    repaired = [e for e in events.read(site.layout.events) if e["event"] == "chunk_list_repaired"]
    assert [(e["chunk"], len(e["removed_lines"]), len(e["missing_lines"])) for e in repaired] == [
        (0, 0, 1), (1, 1, 0), (2, 1, 0)]
    assert intruder.is_file() and not list(site.base.rglob("intruder*"))


def test_garbage_in_the_event_log_is_skipped_and_left_alone(make_site, inputs):
    source, expected = inputs
    site, _ = batch_site(make_site, source)
    garbage = b'not json at all\n\xff\xfe\x00 binary\n["a", "list"]\n42\n{"event": "torn'
    with open(site.layout.events, "ab") as handle:
        handle.write(garbage)
    logged_before = site.layout.events.read_bytes()

    site.luigi("ProcessAll", "--run-id", "p")

    garbage_lines = {f"_manifests/events.ndjson:{n}: a line that is not JSON" for n in range(1, 10)}
    problems = check_converged(site.base, expected)
    assert problems and set(problems) <= garbage_lines  # the garbage stays where it was, nothing else is wrong
    log = site.layout.events.read_bytes()
    assert log.startswith(logged_before)  # append-only: nothing rewritten
    appended = log[len(logged_before):].splitlines()
    assert appended[0] == b"" and all(isinstance(json.loads(line), dict) for line in appended[1:])
    kinds = [e["event"] for e in events.read(site.layout.events)]
    assert kinds.count("finalized") == DOCUMENTS and "batch_finalized" in kinds
    before = snapshot(site.base)
    site.luigi("ProcessAll", "--run-id", "p")
    assert snapshot(site.base) == before
