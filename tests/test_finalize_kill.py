"""Finalize killed with SIGKILL at several points, then rerun: nothing lost, nothing half-written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline import faults, samples
from pipeline.layout import BatchPaths

from .conftest import luigi_executable

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


def kill_at(site, fault_dir: Path, written: int, timeout: float = 120) -> None:
    """Run Finalize until it has renamed ``written`` more metadata files into place, then SIGKILL it
    there (it stops itself at that point: pipeline/faults.py), so every kill lands inside the work."""
    shutil.rmtree(fault_dir, ignore_errors=True)
    fault_dir.mkdir(parents=True)
    env = {**site.env(), faults.FAULT_DIR: str(fault_dir),
           faults.PAUSE_AT: f"atomic.rename.after */05_processed/*.metadata.json:{written}"}
    command = [luigi_executable(), "--module", "pipeline", "Finalize", "--batch", "1", "--local-scheduler"]
    process = subprocess.Popen(command, env=env, cwd=site.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    paused = fault_dir / faults.PAUSED
    deadline = time.monotonic() + timeout
    try:
        while not paused.exists():
            assert process.poll() is None, f"Finalize ended ({process.returncode}) before its {written}th document"
            assert time.monotonic() < deadline, f"Finalize did not reach its {written}th document in {timeout:.0f} s"
            time.sleep(0.01)
    finally:
        process.kill()  # stopped at the point, or never got there
        process.wait()


def test_finalize_killed_at_several_points_loses_nothing(make_site, tmp_path):
    texts = expected_texts(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text", ocr__pages_per_chunk=1500)
    site.luigi("Download", "--run-id", "k")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("SplitResults", "--batch", "1")
    paths = BatchPaths(site.layout.batch_dir("1"))
    done_before = 0
    for point in KILL_AFTER:
        kill_at(site, tmp_path / "faults", max(1, point - done_before))
        done = check_invariants(site, paths, texts)
        assert done_before < done < len(texts)  # each kill landed after some progress, before the end
        done_before = done
    site.luigi("Finalize", "--batch", "1")
    assert check_invariants(site, paths, texts) == len(texts)
    assert not list(paths.dir.glob("*.pdf"))
    assert not list((site.base / "01_downloaded").rglob("*.pdf"))
    assert not list((site.base / "05_processed").rglob(".*.tmp"))
    assert json.loads(paths.finalized.read_text())["finalized"] == len(texts)
