"""FinalizeReady: in every open batch, the documents whose OCR results are there are finalized and
their PDFs deleted; the others stay, no OCR starts, a document a chunk still to run lists is left
alone, a second run changes no byte, and ProcessAll afterwards finishes everything.

In process (pipeline.stages.finalize_ready) on real PDFs and the real chunk job with the text
engine, and through the real `luigi` command line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import faults, samples
from pipeline.engines import EngineSettings, get_engine
from pipeline.executors.chunk_job import read_chunk_list, run_chunk
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import chunks, finalize_ready
from pipeline.stages.chunks import WalltimeModel

from . import invariants
from .conftest import snapshot
from .stage_inputs import Recorder, batch


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


def planned(paths: BatchPaths) -> list[list[str]]:
    return [c["documents"] for c in json.loads(paths.chunk_plan.read_text())["chunks"]]


def finalized(layout: Layout, identifier: str) -> bool:
    return layout.processed_metadata(identifier).exists() and layout.processed_ocr(identifier).exists()


def test_finalizes_documents_of_done_chunks_and_leaves_the_rest(layout: Layout, tmp_path: Path) -> None:
    paths = batch(layout, tmp_path / "incoming", {f"doc{n}": 1 for n in range(4)})
    chunks.plan_batch(layout, paths, 2, WalltimeModel())
    first, second = planned(paths)
    run_chunk(paths, 0, "text", EngineSettings())
    size = sum(paths.pdf(i).stat().st_size + layout.downloaded_meta(i).stat().st_size for i in first)
    progress = Recorder()

    summary = finalize_ready.finalize_ready(layout, workers=2, engine="text", progress=progress)

    assert summary.batches == {"0001": 2} and summary.documents == 2
    assert summary.bytes_freed == size  # the batch's PDF and 01's are one file (a hard link)
    assert summary.left == {"0001": 2}
    for identifier in first:
        assert finalized(layout, identifier)
        assert not paths.pdf(identifier).exists() and not layout.downloaded_pdf(identifier).exists()
    for identifier in second:
        assert not finalized(layout, identifier) and paths.pdf(identifier).exists()
    assert not paths.done_marker(1).exists() and not paths.finalized.exists()
    assert "2 documents finalized in batches 0001 (2)" in progress.messages[-1]


def test_a_document_of_a_chunk_still_to_run_stays_even_with_results(layout: Layout, tmp_path: Path) -> None:
    """A job killed after writing its results and before its done marker runs again: its PDFs stay."""
    paths = batch(layout, tmp_path / "incoming", {"a": 1, "b": 1})
    chunks.plan_batch(layout, paths, 100, WalltimeModel())
    get_engine("text", EngineSettings()).run(read_chunk_list(paths.chunk_list(0)), paths.workspace)
    assert list(paths.results.glob("*.jsonl"))  # results there, no done marker
    before = snapshot(layout.base)

    summary = finalize_ready.finalize_ready(layout, workers=2, engine="text", progress=Recorder())

    assert summary.documents == 0 and summary.line().endswith("nothing finalized")
    assert snapshot(layout.base) == before
    record = run_chunk(paths, 0, "text", EngineSettings())  # the job runs again and finds its PDFs
    assert record["missing"] == []
    assert finalize_ready.finalize_ready(layout, workers=2, engine="text", progress=Recorder()).documents == 2
    assert finalized(layout, "a") and finalized(layout, "b")


def test_a_batch_with_nothing_ready_is_not_touched(layout: Layout, tmp_path: Path) -> None:
    paths = batch(layout, tmp_path / "incoming", {"a": 1})
    chunks.plan_batch(layout, paths, 100, WalltimeModel())
    before = snapshot(layout.base)
    summary = finalize_ready.finalize_ready(layout, workers=2, engine="text", progress=Recorder())
    assert summary.documents == 0 and summary.left == {"0001": 1}
    assert snapshot(layout.base) == before


# --- the luigi command line -----------------------------------------------------------------------

DOCUMENTS = {f"letter_{n:02d}": [f"Letter {n}, page {p}" for p in (1, 2)] for n in range(8)}


def collection(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for identifier, pages in DOCUMENTS.items():
        (folder / f"{identifier}.pdf").write_bytes(samples.text_pdf(pages))
    return folder


def chunk_job(site, paths: BatchPaths, index: int) -> None:
    """What the local executor runs for one chunk (python -m pipeline.chunk_job)."""
    subprocess.run([sys.executable, "-m", "pipeline.chunk_job", "--batch-dir", str(paths.dir), "--engine", "text",
                    "--chunk", str(index)], env=site.env(), check=True, capture_output=True)


def test_finalize_ready_frees_two_open_batches_then_process_all_finishes_everything(make_site, tmp_path: Path):
    source = collection(tmp_path / "incoming")
    site = make_site(source=source, engine="text", pipeline__batch_size=4, ocr__pages_per_chunk=4)

    site.luigi("ProcessAll")  # the undisturbed run
    reference = invariants.reference(site.base)
    assert set(reference.texts) == set(DOCUMENTS)
    shutil.rmtree(site.base)
    site.base.mkdir()

    site.luigi("Download")
    for number in ("1", "2"):
        site.luigi("CreateBatch", "--batch", number)
        site.luigi("PlanChunks", "--batch", number)
    batch_paths = [BatchPaths(site.layout.batch_dir(n)) for n in ("0001", "0002")]
    ready, waiting = [], []
    for paths in batch_paths:
        first, second = planned(paths)
        chunk_job(site, paths, 0)
        ready += first
        waiting += second

    result = site.luigi("FinalizeReady")

    for identifier in ready:
        assert finalized(site.layout, identifier)
        assert not site.layout.downloaded_pdf(identifier).exists()
    for identifier in waiting:
        assert not finalized(site.layout, identifier)
        assert any(p.pdf(identifier).exists() for p in batch_paths)
    for paths in batch_paths:
        assert not paths.done_marker(1).exists() and not paths.ocr_marker.exists()  # no OCR started
        assert not paths.finalized.exists()
    assert "FinalizeReady: 4 documents finalized in batches 0001 (2), 0002 (2)" in result.stdout
    assert re.search(r", [0-9.]+ KiB freed; 4 documents wait for OCR", result.stdout)
    invariants.assert_safe(site.base)

    before = snapshot(site.base)
    again = site.luigi("FinalizeReady")
    assert "nothing finalized" in again.stdout
    assert snapshot(site.base) == before

    site.luigi("ProcessAll")
    invariants.assert_converged(site.base, reference)


def stopped(fault_dir: Path) -> int | None:
    """The pid of the process that paused itself, once it is stopped."""
    pid = json.loads((fault_dir / faults.PAUSED).read_text())["pid"]
    stat = Path(f"/proc/{pid}/stat").read_text()
    return pid if stat[stat.rindex(")") + 2:].split()[0] == "T" else None


def test_beside_a_running_ocr_batch_only_documents_of_done_chunks_go(make_site, tmp_path: Path):
    """OCRBatch stopped in chunk 1 after its results are in place, before its done marker: FinalizeReady
    finalizes chunk 0's documents, leaves chunk 1's, and the OCRBatch then ends as if alone."""
    source = collection(tmp_path / "incoming")
    site = make_site(source=source, engine="text", pipeline__batch_size=4, ocr__pages_per_chunk=4,
                     ocr__parallel_chunks=1)
    site.luigi("ProcessAll")
    reference = invariants.reference(site.base)
    shutil.rmtree(site.base)
    site.base.mkdir()
    site.luigi("Download")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("PlanChunks", "--batch", "1")
    paths = BatchPaths(site.layout.batch_dir("1"))
    first, second = planned(paths)
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    env = {**site.env(), faults.FAULT_DIR: str(fault_dir), faults.PAUSE_AT: "atomic.rename.before */chunk_001.done:1"}
    ocr = subprocess.Popen([str(Path(sys.executable).with_name("luigi")), "--module", "pipeline", "OCRBatch",
                            "--batch", "1", "--local-scheduler"], env=env, cwd=site.root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (fault_dir / faults.PAUSED).exists() or stopped(fault_dir) is None:
            assert ocr.poll() is None and time.monotonic() < deadline, "chunk 1 did not reach its done marker"
            time.sleep(0.1)
        paused = json.loads((fault_dir / faults.PAUSED).read_text())
        results = [r for f in paths.results.glob("*.jsonl") for r in f.read_text().splitlines()]
        assert all(any(f"{i}.pdf" in r for r in results) for i in second)  # chunk 1's records are there

        result = site.luigi("FinalizeReady")

        assert "FinalizeReady: 2 documents finalized in batches 0001 (2)" in result.stdout
        assert all(finalized(site.layout, i) for i in first)
        for identifier in second:
            assert not finalized(site.layout, identifier) and paths.pdf(identifier).exists()
        invariants.assert_safe(site.base)
        os.kill(paused["pid"], signal.SIGCONT)
        assert ocr.wait(timeout=300) == 0
    finally:
        if ocr.poll() is None:
            ocr.kill()
            ocr.wait()
    assert json.loads(paths.done_marker(1).read_text())["missing"] == []

    site.luigi("ProcessAll")
    invariants.assert_converged(site.base, reference)
