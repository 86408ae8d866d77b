"""Finalize killed with SIGKILL at several points, then rerun: nothing lost, nothing half-written."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.layout import BatchPaths

DOCUMENTS = int(os.environ.get("KILL_TEST_DOCUMENTS", "300"))
KILL_AFTER = (1, DOCUMENTS // 6, DOCUMENTS // 3, DOCUMENTS // 2, (3 * DOCUMENTS) // 4)


def expected_texts(folder: Path) -> dict[str, str]:
    folder.mkdir()
    texts = {}
    for n in range(DOCUMENTS):
        identifier = f"doc {n:04d}"
        texts[identifier] = f"Page text of document {n}"
        (folder / f"{identifier}.pdf").write_bytes(samples.text_pdf([texts[identifier]]))
    return texts


def check_invariants(site, paths: BatchPaths, texts: dict[str, str]) -> int:
    """Every document is finalized with correct output or still has its PDF; returns finalized count."""
    layout = site.layout
    finalized = 0
    for identifier, text in texts.items():
        ocr, meta = layout.processed_ocr(identifier), layout.processed_metadata(identifier)
        pdf_present = paths.pdf(identifier).exists()
        if ocr.exists():  # a file under its final name is always whole
            assert json.loads(ocr.read_text())["text"] == text, identifier
        if meta.exists():
            assert json.loads(meta.read_text())["identifier"] == identifier
        if ocr.exists() and meta.exists():
            finalized += 1
        else:
            assert pdf_present, f"{identifier}: PDF deleted before its output was complete"
            assert layout.downloaded_pdf(identifier).exists()
    return finalized


def kill_when(site, processed: Path, count: int, timeout: float = 120) -> None:
    process = site.popen("Finalize", "--batch", "1")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if sum(1 for _ in processed.rglob("*.metadata.json")) >= count:
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def test_finalize_killed_at_several_points_loses_nothing(make_site, tmp_path):
    texts = expected_texts(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text", ocr__pages_per_chunk=1500)
    site.luigi("Download", "--run-id", "k")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("SplitResults", "--batch", "1")
    paths = BatchPaths(site.layout.batch_dir("1"))
    processed = site.base / "05_processed"
    done_before = 0
    for point in KILL_AFTER:
        kill_when(site, processed, point)
        done = check_invariants(site, paths, texts)
        assert done >= done_before
        done_before = done
    if done_before == len(texts):
        pytest.fail("every kill came too late to interrupt Finalize; the test proved nothing")
    site.luigi("Finalize", "--batch", "1")
    assert check_invariants(site, paths, texts) == len(texts)
    assert not list(paths.dir.glob("*.pdf"))
    assert not list((site.base / "01_downloaded").rglob("*.pdf"))
    assert not list(processed.rglob(".*.tmp"))
    assert json.loads(paths.finalized.read_text())["finalized"] == len(texts)
