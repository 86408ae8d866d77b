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


# A text layer as a real PDF with a broken ToUnicode map gives it: a lone surrogate, NUL, BEL.
POISON_LINES = ["Poisoned text layer", "A\udc63B\x00C\x07D", "Last line"]


def test_poison_documents_cost_only_themselves_in_an_old_batch(make_site):
    site = make_site(engine="text", ocr__pages_per_chunk=100, ocr__document_timeout=5)
    paths = BatchPaths(site.base / "03_ocr_processing" / "batch_0100")
    paths.results.mkdir(parents=True)
    good = [f"letter_{i}" for i in range(6)]
    for name in good:
        (paths.dir / f"{name}.pdf").write_bytes(samples.text_pdf([f"Text layer of {name}"]))
    (paths.dir / "poison.pdf").write_bytes(samples.text_layer_pdf(POISON_LINES))
    (paths.dir / "cycle.pdf").write_bytes(samples.kids_cycle_pdf())
    (paths.dir / "slow.pdf").write_bytes(samples.slow_text_pdf(400_000))  # pypdf needs far over 5 s
    # An older run's record, adopted as it is: JSON escapes of a lone surrogate and of NUL.
    (paths.dir / "adopted.pdf").write_bytes(samples.text_pdf(["Text layer of adopted"]))
    text = "Older run \udc9f text\x00"
    (paths.results / "output_old.jsonl").write_text(json.dumps(olmocr_record("/old/adopted.pdf", text)) + "\n")

    site.luigi("Finalize", "--batch", "100")

    layout = site.layout
    report = json.loads(paths.finalize_report.read_text())
    assert report["finalized"] == 8
    assert report["quarantined"] == {"cycle": "no_ocr_result", "slow": "no_ocr_result"}
    cycle = json.loads(layout.quarantine_reason("cycle").read_text())
    assert "PdfReadError: Detected cyclic page references" in cycle["message"]
    slow = json.loads(layout.quarantine_reason("slow").read_text())
    assert "TimeLimit: still running after 5 s" in slow["message"]  # [ocr] document_timeout from luigi.cfg
    assert paths.finalized.exists() and not list(paths.dir.glob("*.pdf"))
    for name in good:
        assert f"Text layer of {name}" in json.loads(layout.processed_ocr(name).read_text(encoding="utf-8"))["text"]

    poison = json.loads(layout.processed_ocr("poison").read_bytes().decode("utf-8"))
    assert poison["text"] == "Poisoned text layer\nA\ufffdB\ufffdC\ufffdD\nLast line"
    assert poison["metadata"]["replaced-characters"] == 3
    adopted = json.loads(layout.processed_ocr("adopted").read_bytes().decode("utf-8"))
    assert adopted["text"] == "Older run \ufffd text\ufffd"
    assert adopted["metadata"]["replaced-characters"] == 2
    assert adopted["attributes"]["pdf_page_numbers"] == [[0, len(text), 1]]
    split = json.loads(paths.split_report.read_text())
    assert split["replaced_characters"] == {"adopted": 2}  # the engine wrote poison's record valid already

    # The chunk that held the failures finished; its marker says what failed and why.
    plan = json.loads(paths.chunk_plan.read_text())["chunks"]
    (first,) = [c for c in plan if "cycle" in c["documents"]]
    marker = json.loads(paths.done_marker(first["index"]).read_text())
    assert marker["missing"] == ["cycle.pdf", "slow.pdf"]
    failed = {f["file"]: f for f in marker["failed"]}
    assert failed["cycle.pdf"]["error"] == "PdfReadError" and "cyclic" in failed["cycle.pdf"]["message"]
    assert "Traceback" in failed["cycle.pdf"]["log"]
    assert failed["slow.pdf"]["error"] == "TimeLimit"
    assert "adopted" not in first["documents"]  # it had a record: not OCRed again
