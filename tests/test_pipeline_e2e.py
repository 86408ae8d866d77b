"""The whole file-based graph through the real luigi command line."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import samples
from pipeline.layout import BatchPaths

from .conftest import snapshot


def make_inputs(folder: Path) -> dict[str, list[str]]:
    folder.mkdir(parents=True)
    texts = {
        "alpha": ["Alpha first page", "Alpha second page"],
        "beta report": ["Beta only page"],
        "gamma": [f"Gamma page {n}" for n in range(1, 13)],
        "delta": [f"Delta page {n}" for n in range(1, 30)],  # larger than pages_per_chunk: own chunk
    }
    for name, pages in texts.items():
        (folder / f"{name}.pdf").write_bytes(samples.text_pdf(pages))
    return texts


def test_finalize_runs_every_stage_and_a_second_run_changes_nothing(make_site, tmp_path):
    texts = make_inputs(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text")
    site.luigi("Download", "--run-id", "first")
    site.luigi("CreateBatch", "--batch", "7")  # Finalize only works on a batch that was opened
    site.luigi("Finalize", "--batch", "7")
    layout = site.layout
    batch = BatchPaths(layout.batch_dir("0007"))
    plan = json.loads(batch.chunk_plan.read_text())
    assert all(c["pages"] <= 20 or len(c["documents"]) == 1 for c in plan["chunks"])
    assert [c["documents"] for c in plan["chunks"] if c["pages"] > 20] == [["delta"]]
    for identifier, pages in texts.items():
        record = json.loads(layout.processed_ocr(identifier).read_text())
        for page in pages:
            assert page in record["text"]
        assert record["metadata"]["pdf-total-pages"] == len(pages)
        meta = json.loads(layout.processed_metadata(identifier).read_text())
        assert meta["batch"] == "0007" and meta["engine"] == "text" and meta["download"]["pages"] == len(pages)
        assert meta["chunk"] in {c["index"] for c in plan["chunks"]}
        assert not layout.downloaded_pdf(identifier).exists()
        assert not batch.pdf(identifier).exists()
    events = [json.loads(line)["event"] for line in layout.events.read_text().splitlines()]
    for kind in ("downloaded", "batch_created", "chunk_planned", "chunk_done", "split", "finalized"):
        assert kind in events, kind

    before = snapshot(site.base)
    site.luigi("Finalize", "--batch", "0007")  # the same batch under its other spelling
    assert snapshot(site.base) == before


def test_process_all_twice_with_the_same_run_is_a_no_op(make_site, tmp_path):
    make_inputs(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text")
    first = site.luigi("ProcessAll", "--run-id", "r1")
    assert "documents finalized: 4" in first.stdout
    before = snapshot(site.base)
    site.luigi("ProcessAll", "--run-id", "r1")
    assert snapshot(site.base) == before
    # A new pass finds nothing new: no batch is opened and no PDF fetched again.
    site.luigi("ProcessAll", "--run-id", "r2")
    assert site.layout.batch_numbers() == ["0001"]
    assert not list((site.base / "01_downloaded").rglob("*.pdf"))


def test_scanned_documents_are_ocred_with_tesseract(make_site, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "scan.pdf").write_bytes(samples.scanned_pdf(["Harbour ledger of the county"], dpi=200))
    site = make_site(source=incoming, engine="tesseract")
    site.luigi("ProcessAll", "--run-id", "t")
    text = json.loads(site.layout.processed_ocr("scan").read_text())["text"]
    assert "Harbour ledger of the county" in " ".join(text.split())


def test_process_all_opens_the_batches_its_documents_need_never_more_open_than_the_limit(make_site, tmp_path):
    texts = make_inputs(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text", pipeline__batch_size=1,
                     backpressure__max_open_batches=3)
    first = site.luigi("ProcessAll", "--run-id", "r1")
    assert "documents finalized: 4" in first.stdout
    assert "Scheduled 22 tasks" in first.stdout + first.stderr  # ProcessAll, Download, 4 x 5 batch stages
    layout = site.layout
    held = {n: list(json.loads(BatchPaths(layout.batch_dir(n)).batch_record.read_text())["documents"])
            for n in layout.batch_numbers()}
    assert held == {"0001": ["alpha"], "0002": ["beta report"], "0003": ["delta"], "0004": ["gamma"]}
    assert all(layout.processed_metadata(identifier).exists() for identifier in texts)
    open_now = []
    for line in layout.events.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "batch_created":
            open_now.append(event["batch"])
            assert len(open_now) <= 3, open_now
        elif event["event"] == "batch_finalized":
            open_now.remove(event["batch"])
