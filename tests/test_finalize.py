"""pipeline.stages.finalize in-process on real PDFs: 05 outputs before any PDF goes, documents without
a result quarantined (full) or kept (partial), the batch's summary, and where each OCR came from."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline import atomic, events
from pipeline.engines import EngineSettings, get_engine
from pipeline.executors.chunk_job import read_chunk_list, run_chunk
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import chunks, finalize, split
from pipeline.stages.chunks import WalltimeModel
from pipeline.stages.finalize import Provenance

from .conftest import snapshot
from .stage_inputs import Recorder, batch, write_results


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


def kinds(layout: Layout, kind: str) -> list[dict]:
    return [e for e in events.read(layout.events) if e["event"] == kind]


def test_full_finalize_writes_outputs_deletes_pdfs_and_quarantines_what_has_no_result(
        layout: Layout, tmp_path: Path) -> None:
    paths = batch(layout, tmp_path / "incoming", {"a": 2, "b": 1, "lost": 1})
    originals = {i: (tmp_path / "incoming" / f"{i}.pdf").read_bytes() for i in ("a", "b", "lost")}
    chunks.plan_batch(layout, paths, 100, WalltimeModel())
    failure = {"file": "lost.pdf", "error": "EngineError", "message": "page 1 unreadable"}
    atomic.write_json(paths.done_marker(0), {"chunk": 0, "missing": ["lost.pdf"], "failed": [failure],
                                             "engine": "text", "finished": "2026-01-02T03:04:05+00:00"})
    write_results(paths, "chunk_000", {"a": 2, "b": 1})
    split.split_documents(layout, paths, {"a", "b", "lost"})
    progress = Recorder()

    summary = finalize.finalize_batch(layout, paths, partial=False, workers=2, engine="tesseract",
                                      progress=progress)

    for identifier, pages in (("a", 2), ("b", 1)):
        record = json.loads(layout.processed_ocr(identifier).read_text())
        assert all(f"Page {n} of {identifier}" in record["text"] for n in range(1, pages + 1))
        meta = json.loads(layout.processed_metadata(identifier).read_text())
        assert (meta["batch"], meta["chunk"], meta["engine"], meta["ocr_finished_at"]) == (
            "0001", 0, "text", "2026-01-02T03:04:05+00:00")  # the engine that ran, not the one configured now
        assert meta["download"]["sha256"] == hashlib.sha256(originals[identifier]).hexdigest()
        assert not paths.pdf(identifier).exists() and not layout.downloaded_pdf(identifier).exists()
        assert not layout.downloaded_meta(identifier).exists()

    reason = json.loads(layout.quarantine_reason("lost").read_text())
    assert reason["reason"] == "no_ocr_result" and reason["chunk"] == 0
    for part in ("chunk 0", str(paths.chunk_log(0)), "EngineError: page 1 unreadable"):
        assert part in reason["message"]
    assert layout.quarantine_pdf("lost").read_bytes() == originals["lost"]
    assert not paths.pdf("lost").exists() and not layout.downloaded_pdf("lost").exists()

    assert (summary["finalized"], summary["pages"], summary["quarantined"], summary["remaining"]) == (
        2, 3, {"lost": "no_ocr_result"}, [])
    done = json.loads(paths.finalized.read_text())
    assert done["finalized"] == 2 and done["quarantined"] == {"lost": "no_ocr_result"}
    assert json.loads(paths.finalize_report.read_text())["finalized"] == 2
    assert sorted(e["identifier"] for e in kinds(layout, "finalized")) == ["a", "b"]
    assert [e["quarantined"] for e in kinds(layout, "batch_finalized")] == [1]
    assert (2, 2, "documents finalized") in progress.calls
    assert progress.calls[-1] == (3, 3, "batch 0001 finalized")

    before = snapshot(layout.base / "05_processed")  # done documents are not written again
    again = finalize.finalize_many(layout, paths, {"a": {"pages": 2}}, lambda i: Provenance("0001", 0, "text", None),
                                   workers=2)
    assert again == {"a": "already"} and snapshot(layout.base / "05_processed") == before


def test_partial_finalize_splits_first_and_keeps_the_documents_without_a_result(
        layout: Layout, tmp_path: Path) -> None:
    paths = batch(layout, tmp_path / "incoming", {"early": 1, "later": 2})
    write_results(paths, "first", {"early": 1})
    progress = Recorder()

    summary = finalize.finalize_batch(layout, paths, partial=True, workers=2, engine="text", progress=progress)

    assert layout.processed_ocr("early").exists() and not paths.pdf("early").exists()
    assert paths.pdf("later").exists() and layout.downloaded_pdf("later").exists()
    assert not layout.quarantine_reason("later").exists()
    assert summary["remaining"] == ["later"] and summary["partial"]
    assert summary["split"]["split"] == 1 and summary["split"]["without_result"] == ["later"]
    assert not paths.finalized.exists()  # the batch is not done
    assert json.loads(paths.finalize_report.read_text())["remaining"] == ["later"]
    assert progress.calls[-1] == (1, 2, f"partial: 1 documents have no result yet and stay in {paths.dir}")

    write_results(paths, "second", {"later": 2})  # its OCR came in meanwhile: a partial run completes the batch
    summary = finalize.finalize_batch(layout, paths, partial=True, workers=2, engine="text", progress=progress)
    assert summary["remaining"] == [] and summary["finalized"] == 2 and paths.finalized.exists()
    assert "Page 2 of later" in json.loads(layout.processed_ocr("later").read_text())["text"]


def test_provenance_is_the_last_done_chunk_of_a_document(layout: Layout) -> None:
    paths = BatchPaths(layout.batch_dir(2))
    atomic.write_json(paths.chunk_plan, {"chunks": [{"index": 0, "documents": ["x", "y"]}]})
    atomic.write_json(paths.retry_plan, {"chunks": [{"index": 1, "retry_of": 0, "documents": ["y"]}]})
    atomic.write_json(paths.done_marker(0), {"missing": ["y.pdf"], "engine": "olmocr", "finished": "t0"})
    lookup = finalize.provenance_lookup(paths, "text")
    assert lookup("x") == Provenance("0002", 0, "olmocr", "t0")
    assert lookup("y") == Provenance("0002", 0, "olmocr", "t0")  # its retry has not run
    assert lookup("z") == Provenance("0002", None, None, None)  # in no chunk (adopted results)

    atomic.write_json(paths.done_marker(1), {"missing": []})  # an older job's marker names no engine
    lookup = finalize.provenance_lookup(paths, "text")
    assert lookup("y") == Provenance("0002", 1, "text", None)


def test_partial_finalize_beside_a_running_ocr_keeps_the_documents_of_chunks_still_to_run(
        layout: Layout, tmp_path: Path) -> None:
    """A job killed after writing its results and before its done marker runs again: it must find its
    PDFs, so a partial finalize leaves its documents alone however complete their records look."""
    paths = batch(layout, tmp_path / "incoming", {f"doc{n}": 1 for n in range(4)})
    chunks.plan_batch(layout, paths, 2, WalltimeModel())
    first, second = (c["documents"] for c in atomic.read_json(paths.chunk_plan)["chunks"])
    assert run_chunk(paths, 0, "text", EngineSettings())["missing"] == []
    get_engine("text", EngineSettings()).run(read_chunk_list(paths.chunk_list(1)), paths.workspace)
    assert not paths.done_marker(1).exists()  # chunk 1 wrote its records and is still to run

    summary = finalize.finalize_batch(layout, paths, partial=True, workers=2, engine="text", progress=Recorder())

    for identifier in first:
        assert layout.processed_ocr(identifier).exists() and not paths.pdf(identifier).exists()
        assert not layout.downloaded_pdf(identifier).exists()
    for identifier in second:
        assert not layout.processed_ocr(identifier).exists() and not layout.completed_jsonl(identifier).exists()
        assert paths.pdf(identifier).exists() and layout.downloaded_meta(identifier).exists()
    assert summary["remaining"] == sorted(second) and not paths.finalized.exists()

    assert run_chunk(paths, 1, "text", EngineSettings())["missing"] == []  # the job runs again, finds its PDFs
    summary = finalize.finalize_batch(layout, paths, partial=True, workers=2, engine="text", progress=Recorder())
    assert summary["remaining"] == [] and summary["finalized"] == 4 and paths.finalized.exists()
