"""Where things live under base_dir (pipeline.layout), in-process: the stage paths DESIGN.md fixes,
and which files each listing finds. Identifier rules: tests/test_identifiers.py."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.layout import BatchPaths, Layout


def ab(identifier: str, width: int = 2) -> str:
    return hashlib.sha1(identifier.encode()).hexdigest()[:width]


def test_every_stage_path_of_a_document_is_where_design_says(tmp_path: Path) -> None:
    layout = Layout(tmp_path, 2)
    fan = ab("Zürich 1907")
    doc = layout.document("Zürich 1907")
    assert doc.downloaded_pdf == tmp_path / "01_downloaded" / fan / "Zürich 1907.pdf"
    assert doc.downloaded_meta == tmp_path / "01_downloaded" / fan / "Zürich 1907.meta.json"
    assert doc.completed_jsonl == tmp_path / "04_ocr_completed" / fan / "Zürich 1907.ocr.jsonl"
    assert doc.processed_ocr == tmp_path / "05_processed" / fan / "Zürich 1907" / "Zürich 1907.ocr.json"
    assert doc.processed_metadata == tmp_path / "05_processed" / fan / "Zürich 1907" / "Zürich 1907.metadata.json"
    assert layout.quarantine_pdf("Zürich 1907") == tmp_path / "_quarantine" / fan / "Zürich 1907.pdf"
    assert layout.quarantine_reason("Zürich 1907") == tmp_path / "_quarantine" / fan / "Zürich 1907.reason.json"
    assert layout.batch_dir(7) == layout.batch_dir("0007") == tmp_path / "03_ocr_processing" / "batch_0007"
    assert (layout.events, layout.metrics) == (tmp_path / "_manifests" / "events.ndjson",
                                               tmp_path / "_manifests" / "metrics.ndjson")


@pytest.mark.parametrize("width", [0, 3])
def test_the_fan_out_width_is_the_sites_choice(tmp_path: Path, width: int) -> None:
    layout = Layout(tmp_path, width)
    folder = tmp_path / "01_downloaded" / ab("doc", width) if width else tmp_path / "01_downloaded"
    assert layout.downloaded_pdf("doc") == folder / "doc.pdf"


def test_a_path_is_never_made_from_an_unsafe_identifier(tmp_path: Path) -> None:
    layout = Layout(tmp_path, 2)
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            layout.document(bad)
        with pytest.raises(ValueError):
            layout.quarantine_reason(bad)
        with pytest.raises(ValueError):
            BatchPaths(layout.batch_dir(1)).pdf(bad)


def test_a_document_is_known_once_downloaded_finalized_or_quarantined(tmp_path: Path) -> None:
    layout = Layout(tmp_path, 2)
    paths = {"downloaded": layout.downloaded_meta("d"), "finalized": layout.processed_metadata("f"),
             "quarantined": layout.quarantine_reason("q")}
    pdf_only = layout.downloaded_pdf("p")  # a download killed before its .meta.json: fetch it again
    for path in [*paths.values(), pdf_only]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert [layout.is_known(i) for i in ("d", "f", "q", "p", "new")] == [True, True, True, False, False]


def test_batches_and_their_pdfs_are_found_in_order(tmp_path: Path) -> None:
    layout = Layout(tmp_path, 2)
    assert layout.batch_numbers() == []
    for name in ("batch_0010", "batch_2", "batch_x", "other"):
        (layout.processing / name).mkdir(parents=True)
    (layout.processing / "batch_0003").write_text("a file, not a batch")
    assert layout.batch_numbers() == ["0002", "0010"]

    paths = BatchPaths(layout.batch_dir(10))
    assert paths.number == "0010"
    (paths.dir / "z.pdf").write_bytes(b"%PDF")
    (paths.dir / "A.Pdf").write_bytes(b"%PDF")
    (paths.dir / "results").mkdir()
    (paths.dir / "results" / "deeper.pdf").write_bytes(b"%PDF")
    os.symlink(paths.dir / "z.pdf", paths.dir / "link.pdf")
    assert paths.pdfs() == [("A", paths.dir / "A.Pdf"), ("z", paths.dir / "z.pdf")]
    assert BatchPaths(layout.batch_dir(99)).pdfs() == []


def test_a_batch_keeps_its_files_where_design_says(tmp_path: Path) -> None:
    paths = BatchPaths(tmp_path / "batch_0007")
    assert paths.chunk_plan == tmp_path / "batch_0007" / "chunks.json"
    assert paths.chunk_list(3) == tmp_path / "batch_0007" / "chunks" / "chunk_003.txt"
    assert paths.results == tmp_path / "batch_0007" / "results" / "results"
    assert paths.done_marker(3) == tmp_path / "batch_0007" / "results" / "done" / "chunk_003.done"
    assert paths.chunk_log(3).parent == tmp_path / "batch_0007" / "logs"
