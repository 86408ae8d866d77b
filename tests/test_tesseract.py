"""pipeline.engines.tesseract: real tesseract on generated scans; documents it cannot read are reported."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import samples
from pipeline.engines import EngineSettings, get_engine, output_name
from pipeline.engines import tesseract as tesseract_engine

from .engine_inputs import (
    SCANNED_PAGES,
    broken_pdfs,
    character_error_rate,
    failures_by_file,
    needs_tesseract,
    page_texts,
    read_records,
)


@needs_tesseract
def test_tesseract_reads_scanned_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = tmp_path / "in" / "scan_001.pdf"
    scan.parent.mkdir()
    scan.write_bytes(samples.scanned_pdf(SCANNED_PAGES, dpi=150))
    pdfs = [scan, *broken_pdfs(scan.parent)]
    engine = get_engine("tesseract", EngineSettings(tesseract_dpi=150, workers=2))
    outputs = engine.run(pdfs, tmp_path / "workspace")

    assert outputs == [tmp_path / "workspace" / "results" / output_name(pdfs)]
    records = read_records(outputs)
    assert set(records) == {"scan_001"}
    record = records["scan_001"]
    assert record["metadata"]["olmocr-version"] == tesseract_engine.tesseract_version()
    assert record["metadata"]["pdf-total-pages"] == 3
    assert record["metadata"]["total-fallback-pages"] == 0
    found = page_texts(record)
    assert len(found) == 3
    for expected, text in zip(SCANNED_PAGES, found, strict=True):
        assert character_error_rate(expected, text) < 0.05, (expected, text)
    out = capsys.readouterr().out
    for name, reason in (("empty", "empty"), ("truncated", "truncated"), ("not_a_pdf", "not_a_pdf"),
                         ("locked", "encrypted")):
        assert f"{name}.pdf: no record: {reason}" in out
    assert not any((tmp_path / "workspace" / "tmp").iterdir()), "page images are cleaned up"


@needs_tesseract
def test_tesseract_drops_documents_over_the_page_error_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fragile = tmp_path / "fragile.pdf"
    fragile.write_bytes(samples.scanned_pdf(["First page", "Second page", "Third page"], dpi=60))
    sturdy = tmp_path / "sturdy.pdf"
    sturdy.write_bytes(samples.scanned_pdf(["Only page"], dpi=60))
    real_rasterise = tesseract_engine.TesseractEngine.rasterise

    def flaky(self, source: Path, page: int, prefix: Path) -> Path:
        if source.name == "fragile.pdf" and page == 2:
            raise tesseract_engine.PageFailed("pdftoppm exited with status 99: simulated")
        return real_rasterise(self, source, page, prefix)

    monkeypatch.setattr(tesseract_engine.TesseractEngine, "rasterise", flaky)
    strict = get_engine("tesseract", EngineSettings(tesseract_dpi=60, max_page_error_rate=0.004))
    assert set(read_records(strict.run([fragile, sturdy], tmp_path / "strict"))) == {"sturdy"}
    assert "fragile.pdf: no record: 1 of 3 pages failed" in capsys.readouterr().out

    lenient = get_engine("tesseract", EngineSettings(tesseract_dpi=60, max_page_error_rate=0.5))
    records = read_records(lenient.run([fragile, sturdy], tmp_path / "lenient"))
    assert records["fragile"]["metadata"]["total-fallback-pages"] == 1
    assert page_texts(records["fragile"])[1] == "\n"
    assert "fragile.pdf: kept with an empty page 2" in capsys.readouterr().out


def test_tesseract_names_missing_language_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tesseract_engine, "installed_languages", lambda: frozenset({"eng"}))
    monkeypatch.setattr(tesseract_engine.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    engine = get_engine("tesseract", EngineSettings(tesseract_lang="eng+fra"))
    with pytest.raises(RuntimeError, match="no language data for fra"):
        engine.run([], tmp_path)


@needs_tesseract
def test_tesseract_reports_documents_without_a_record(tmp_path: Path) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(samples.scanned_pdf(["Only page"], dpi=60))
    pdfs = [scan, *broken_pdfs(tmp_path)]
    engine = get_engine("tesseract", EngineSettings(tesseract_dpi=60, workers=2))
    assert set(read_records(engine.run(pdfs, tmp_path / "ws"))) == {"scan"}
    failed = failures_by_file(engine)
    assert set(failed) == {"empty.pdf", "truncated.pdf", "not_a_pdf.pdf", "locked.pdf"}
    for name, reason in (("empty", "empty"), ("truncated", "truncated"), ("not_a_pdf", "not_a_pdf"),
                         ("locked", "encrypted")):
        assert failed[f"{name}.pdf"]["error"] == "PdfError"
        assert failed[f"{name}.pdf"]["message"].startswith(reason)
