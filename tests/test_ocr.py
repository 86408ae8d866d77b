"""pipeline.stages.ocr in-process: the OCR pass of a real batch with the real LocalExecutor and the
`text` engine (chunk jobs are real subprocesses), its retry of dropped PDFs, and the run again of
chunks whose results are gone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import events, olmocr_format
from pipeline.config import OCRConfig, SlurmConfig
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import chunks, integrity, ocr
from pipeline.stages.chunks import WalltimeModel

from .conftest import ROOT, snapshot
from .stage_inputs import Recorder, batch

DOCUMENTS = {"one": 1, "two": 2, "three": 3}
SETTINGS = OCRConfig(executor="local", engine="text", parallel_chunks=1, engine_workers=1)
NO_RETRY = SlurmConfig(max_retries=0)


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the chunk jobs run this checkout
    return Layout(tmp_path / "data", 2)


def planned(layout: Layout, folder: Path, documents: dict[str, int]) -> BatchPaths:
    paths = batch(layout, folder, documents)
    chunks.plan_batch(layout, paths, 3, WalltimeModel())
    return paths


def texts(paths: BatchPaths) -> dict[str, str]:
    """identifier -> text of its record in the batch's results."""
    return {olmocr_format.identifier_from_source(olmocr_format.source_file_of(line.record) or ""): line.record["text"]
            for path in olmocr_format.result_files(paths.results)
            for line in olmocr_format.iter_records(path) if line.record}


def test_every_chunk_runs_to_its_done_marker_and_a_rerun_runs_nothing(layout: Layout, tmp_path: Path) -> None:
    paths = planned(layout, tmp_path / "incoming", DOCUMENTS)
    progress = Recorder()

    record = ocr.ocr_batch(layout, paths, SETTINGS, NO_RETRY, progress)

    assert (record["chunks"], record["missing_after_retry"], record["retry_chunks"]) == (2, [], [])
    assert json.loads(paths.ocr_marker.read_text()) == record
    assert all(paths.done_marker(i).exists() for i in (0, 1))
    found = texts(paths)
    for identifier, pages in DOCUMENTS.items():
        assert all(f"Page {n} of {identifier}" in found[identifier] for n in range(1, pages + 1))
    assert all(m.startswith("chunks: ") for m in progress.messages[:-1])
    assert progress.calls[-1] == (1, 1, "OCR done: 2 chunks; 0 PDFs without result after retry")
    assert [e["chunk"] for e in events.read(layout.events) if e["event"] == "chunk_done"] == [0, 1]

    before = snapshot(paths.dir)  # logs and results included: no job runs twice
    ocr.ocr_batch(layout, paths, SETTINGS, NO_RETRY, Recorder())
    assert snapshot(paths.dir) == before


def test_a_pdf_the_engine_drops_gets_a_retry_chunk_and_is_reported_missing(layout: Layout, tmp_path: Path) -> None:
    paths = planned(layout, tmp_path / "incoming", {"good": 1, "bad": 1})
    paths.pdf("bad").unlink()  # a hard link of the download: replaced, not overwritten
    paths.pdf("bad").write_bytes(b"%PDF-1.4 cut short")

    record = ocr.ocr_batch(layout, paths, SETTINGS, NO_RETRY, Recorder())

    assert record["missing_after_retry"] == ["bad.pdf"] and len(record["retry_chunks"]) == 1
    [retry] = json.loads(paths.retry_plan.read_text())["chunks"]
    assert (retry["index"], retry["retry_of"], retry["documents"]) == (record["retry_chunks"][0], 0, ["bad"])
    assert paths.chunk_list(retry["index"]).read_text() == f"{paths.pdf('bad')}\n"
    assert integrity.failure_of(paths, retry["index"], "bad.pdf") is not None  # why, for its quarantine
    assert "Page 1 of good" in texts(paths)["good"]


def test_done_chunks_whose_results_are_gone_run_again(layout: Layout, tmp_path: Path) -> None:
    paths = planned(layout, tmp_path / "incoming", DOCUMENTS)
    ocr.ocr_batch(layout, paths, SETTINGS, NO_RETRY, Recorder())
    have = set(texts(paths))
    assert not ocr.redo_untrusted(layout, paths, have, SETTINGS, NO_RETRY, Recorder(), lambda m: None)

    [emptied] = [p for p in olmocr_format.result_files(paths.results) if "three" in p.read_text()]
    emptied.write_bytes(b"")  # a disk that lost the file's blocks
    progress = Recorder()
    assert ocr.redo_untrusted(layout, paths, set(texts(paths)), SETTINGS, NO_RETRY, progress, lambda m: None)

    assert set(texts(paths)) == set(DOCUMENTS)
    assert [e["event"] for e in events.read(layout.events)].count("chunk_redone") == 1
    assert progress.messages and all(m.startswith("chunks run again: ") for m in progress.messages)
