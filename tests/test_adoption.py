"""Batches made by the older scripts are adopted as they are (PDFs in the folder, results beside)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import samples
from pipeline.layout import BatchPaths

# olmOCR output as the older runs wrote it: Source-File wherever the PDF was when it ran.
OLD_TEXT = {
    "a": "OLMOCR text of a, newer run",
    "b": "OLMOCR text of b",
    "e f": "OLMOCR text of e f",
}


def olmocr_record(source_file: str, text: str, *, top_level: bool = False) -> dict:
    metadata = {
        "Source-File": source_file,
        "olmocr-version": "0.1.60",
        "pdf-total-pages": 1,
        "total-input-tokens": 1810,
        "total-output-tokens": 12,
        "total-fallback-pages": 0,
    }
    record = {
        "id": "5b1c2d0f4e6a8b9c0d1e2f3a4b5c6d7e8f9a0b1c",
        "text": text,
        "source": "olmocr",
        "added": "2025-03-02",
        "created": "2025-03-02",
        "metadata": metadata,
        "attributes": {"pdf_page_numbers": [[0, len(text), 1]]},
    }
    if top_level:  # the older variant: Source-File beside the record's fields
        record["Source-File"] = metadata.pop("Source-File")
    return record


def make_old_batch(base: Path) -> BatchPaths:
    paths = BatchPaths(base / "03_ocr_processing" / "batch_0003")
    paths.results.mkdir(parents=True)
    for name in ("a", "b", "c", "d", "e f"):
        (paths.dir / f"{name}.pdf").write_bytes(samples.text_pdf([f"Text layer of {name}"]))
    older = [
        olmocr_record("/tmp/olmocr_w1/pdfs/a.pdf", "OLMOCR text of a, older run"),
        olmocr_record("batch_0003/b.pdf", OLD_TEXT["b"]),
        olmocr_record("s3://archive/raw/e f.pdf", OLD_TEXT["e f"], top_level=True),
        olmocr_record("/scratch/elsewhere/zzz.pdf", "belongs to no PDF of this batch"),
    ]
    lines = [json.dumps(r) for r in older] + ['{"id": "cut short', ""]
    first = paths.results / "output_0f3e.jsonl"
    first.write_text("\n".join(lines))
    second = paths.results / "output_9a1b.jsonl"
    second.write_text(json.dumps(olmocr_record("/tmp/tmpk2l/a.pdf", OLD_TEXT["a"])) + "\n")
    os.utime(first, (1_700_000_000, 1_700_000_000))
    os.utime(second, (1_700_000_100, 1_700_000_100))  # the later file wins the duplicate
    return paths


def test_partial_finalizes_what_has_results_then_full_ocrs_only_the_rest(make_site):
    site = make_site(engine="text")
    paths = make_old_batch(site.base)
    layout = site.layout

    site.luigi("Finalize", "--batch", "3", "--partial")
    for identifier, text in OLD_TEXT.items():
        assert json.loads(layout.processed_ocr(identifier).read_text())["text"] == text
        assert not paths.pdf(identifier).exists()
    assert paths.pdf("c").exists() and paths.pdf("d").exists()
    report = json.loads(paths.finalize_report.read_text())
    assert report["remaining"] == ["c", "d"]
    assert not paths.finalized.exists()
    assert not paths.chunk_plan.exists()  # nothing was OCRed
    kept = {i: layout.processed_ocr(i).read_bytes() for i in OLD_TEXT}

    site.luigi("Finalize", "--batch", "0003")
    plan = json.loads(paths.chunk_plan.read_text())
    assert sorted(d for c in plan["chunks"] for d in c["documents"]) == ["c", "d"]
    for identifier in ("c", "d"):
        assert f"Text layer of {identifier}" in json.loads(layout.processed_ocr(identifier).read_text())["text"]
    assert {i: layout.processed_ocr(i).read_bytes() for i in OLD_TEXT} == kept
    assert paths.finalized.exists()
    assert not list(paths.dir.glob("*.pdf"))


def test_full_finalize_of_an_old_batch_reports_duplicates_unmatched_and_malformed(make_site):
    site = make_site(engine="text")
    paths = make_old_batch(site.base)
    site.luigi("Finalize", "--batch", "0003")
    layout = site.layout
    for identifier, text in OLD_TEXT.items():
        assert json.loads(layout.processed_ocr(identifier).read_text())["text"] == text
    plan = json.loads(paths.chunk_plan.read_text())
    assert sorted(d for c in plan["chunks"] for d in c["documents"]) == ["c", "d"]
    split = json.loads(paths.split_report.read_text())
    assert split["duplicates"]["a"] == {"kept": "output_9a1b.jsonl:1", "dropped": ["output_0f3e.jsonl:1"]}
    assert [u["source_file"] for u in split["unmatched_records"]] == ["/scratch/elsewhere/zzz.pdf"]
    assert [m["at"] for m in split["malformed_lines"]] == ["output_0f3e.jsonl:5"]
    meta = json.loads(layout.processed_metadata("b").read_text())
    assert meta["batch"] == "0003" and meta["ocr"]["engine_version"] == "0.1.60"
    assert meta["download"]["sha256"] and meta["download"]["pages"] == 1
