"""pipeline.ops.status: the operator's view over base_dirs the real pipeline filled."""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import atomic, samples
from pipeline.executors.slurm.client import SlurmClient
from pipeline.layout import DOWNLOADED, OCR_COMPLETED, PROCESSED, PROCESSING, QUARANTINE, BatchPaths
from pipeline.ops import status
from pipeline.stages.quarantine import read_reasons

from .conftest import Site
from .test_slurm_client import cluster  # noqa: F401  (the fixture)
from .test_slurm_luigi import call_log, logged, read_calls, release, slurm_site, wait_until  # noqa: F401


def collection(folder: Path) -> tuple[dict[str, int], set[str]]:
    """A sample collection: {identifier: pages} of the sound PDFs, and the identifiers of the broken ones."""
    made = samples.make_collection(folder)
    sound = {name[:-4]: len(pages) for name, (kind, pages) in made.items() if kind != "broken"}
    return sound, {name[:-4] for name, (kind, _) in made.items() if kind == "broken"}


def now_plus(hours: float) -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(hours=hours)


def table_rows(text: str) -> dict[str, list[str]]:
    """The stage table of the plain-text view: stage -> its columns."""
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.split()[:1] and line.split()[0] in (DOWNLOADED, PROCESSING, OCR_COMPLETED, PROCESSED, QUARANTINE)}


@pytest.fixture
def finished_site(make_site, tmp_path: Path) -> tuple[Site, dict[str, int], set[str]]:
    """A collection carried through the whole pipeline (ProcessAll, text engine)."""
    sound, broken = collection(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text")
    site.luigi("ProcessAll")
    return site, sound, broken


def test_counts_of_a_finished_collection(finished_site) -> None:
    site, sound, broken = finished_site
    result = status.collect(site.layout)
    stages = result["stages"]
    assert stages[PROCESSED]["documents"] == len(sound)
    assert stages[PROCESSED]["pages"] == sum(sound.values())
    assert stages[OCR_COMPLETED]["documents"] == len(sound)
    assert stages[DOWNLOADED]["documents"] == 0 and result["batches"] == []
    assert stages[QUARANTINE]["documents"] == len(broken)
    recorded = read_reasons(site.layout, sorted(broken))
    assert set(recorded) == broken
    reasons: dict[str, int] = {}
    for record in recorded.values():
        reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
    assert stages[QUARANTINE]["reasons"] == reasons
    # Disk: every file of 05 counted once; free space as the volume reports it.
    files = [p for p in (site.base / PROCESSED).rglob("*") if p.is_file()]
    assert stages[PROCESSED]["files"] == len(files) == 2 * len(sound)
    assert stages[PROCESSED]["bytes"] == sum(p.stat().st_blocks * 512 for p in files)
    assert 0 < result["disk"]["free_bytes"] <= result["disk"]["total_bytes"]
    assert result["backlog"] == {"documents": 0, "pages": 0, "rate_window": "day", "hours_to_finish": 0.0}
    assert result["problems"] == [] and status.last_line(result) is None
    # Every page was OCRed once (no retries for sound PDFs) within the run's few seconds: seen half an
    # hour later, the site has worked for half an hour; two hours later, nothing ended in the last hour.
    pages = sum(sound.values())
    soon = status.collect(site.layout, now=now_plus(0.5))["throughput"]["pages_per_hour"]
    assert soon["hour"] == soon["day"] == soon["week"] == pytest.approx(pages / 0.5, rel=0.02)
    later = status.collect(site.layout, now=now_plus(2))["throughput"]["pages_per_hour"]
    assert later["hour"] == 0 and later["day"] == pytest.approx(pages / 2, rel=0.02)


def test_text_and_json_show_the_same_numbers(finished_site) -> None:
    site, _, _ = finished_site
    result = status.collect(site.layout)
    rows = table_rows(status.format_status(result))
    assert set(rows) == {DOWNLOADED, PROCESSING, OCR_COMPLETED, PROCESSED, QUARANTINE}
    for stage, columns in rows.items():
        numbers = result["stages"][stage]
        assert columns[:3] == [f"{numbers['documents']:,}", f"{numbers['pages']:,}", f"{numbers['files']:,}"]
    assert json.loads(json.dumps(result)) == result  # --json prints this very dict


def test_open_batch_waiting_documents_and_backlog(make_site, tmp_path: Path) -> None:
    sound, broken = collection(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="text", pipeline__batch_size=3)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("PlanChunks", "--batch", "1")
    paths = BatchPaths(site.layout.batch_dir("0001"))
    in_batch = set(atomic.read_json(paths.batch_record)["documents"])
    plan = atomic.read_json(paths.chunk_plan)["chunks"]
    result = status.collect(site.layout)
    [batch] = result["batches"]
    assert batch["batch"] == "0001" and batch["documents"] == batch["pdfs"] == len(in_batch) == 3
    assert batch["pages"] == sum(sound[i] for i in in_batch)
    assert batch["chunks"]["total"] == len(plan)
    assert batch["chunks"]["pending"] == len(plan) and batch["chunks"]["done"] == batch["chunks"]["failed"] == 0
    waiting = set(sound) - in_batch
    assert result["stages"][DOWNLOADED]["documents"] == len(waiting)
    assert result["stages"][DOWNLOADED]["pages"] == sum(sound[i] for i in waiting)
    assert result["stages"][QUARANTINE]["documents"] == len(broken)
    assert result["backlog"]["documents"] == len(sound)
    assert result["backlog"]["pages"] == sum(sound.values())
    assert result["backlog"]["hours_to_finish"] is None  # nothing measured yet: no rate
    # Nothing has progressed since the downloads: waiting more than stalled_hours needs a person.
    assert result["problems"] == []
    later = status.collect(site.layout, now=now_plus(7))
    stalled = status.last_line(later)
    assert stalled is not None and stalled.startswith("stalled: no progress for 7")
    # A damaged chunk plan is named; the rest of the view stands.
    paths.chunk_plan.write_text('{"chunks": [')
    damaged = status.collect(site.layout)
    assert damaged["batches"][0]["chunks"] is None and damaged["notes"][0].startswith("batch 0001: its chunk plan")
    for stage in (DOWNLOADED, PROCESSING, QUARANTINE):
        assert [damaged["stages"][stage][k] for k in ("documents", "pages")] == \
            [result["stages"][stage][k] for k in ("documents", "pages")]


def test_stalled_backlog_after_progress(finished_site, tmp_path: Path) -> None:
    site, sound, _ = finished_site
    more = tmp_path / "incoming"
    for name, pages in (("late one", 2), ("late two", 3)):
        (more / f"{name}.pdf").write_bytes(samples.text_pdf([f"{name} page {n}" for n in range(pages)]))
    site.luigi("Download", "--run-id", "later")
    thresholds = status.Thresholds(stalled_hours=6)
    assert status.collect(site.layout, thresholds=thresholds, now=now_plus(5))["problems"] == []
    result = status.collect(site.layout, thresholds=thresholds, now=now_plus(7))
    assert result["stages"][DOWNLOADED] | {"files": 0, "bytes": 0} == {
        "documents": 2, "pages": 5, "pages_unknown": 0, "files": 0, "bytes": 0}
    line = status.last_line(result)
    assert line is not None and "stalled" in line and "2 documents wait" in line and "ProcessAll" in line


def test_disk_threshold(finished_site) -> None:
    site, _, _ = finished_site
    result = status.collect(site.layout, thresholds=status.Thresholds(disk_percent=0))
    line = status.last_line(result)
    assert line is not None and line.startswith("disk: ") and "disk_threshold_percent" in line
    assert str(site.base) in line


def test_failed_batch_and_its_chunks(make_site, tmp_path: Path) -> None:
    """An engine that fails on every chunk: OCRBatch fails; Status names the batch and its failed chunks."""
    sound, _ = collection(tmp_path / "incoming")
    site = make_site(source=tmp_path / "incoming", engine="command", ocr__command="false {chunk_list} {output}",
                     ocr__pages_per_chunk=1, slurm__max_retries=0)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    failed = site.luigi("OCRBatch", "--batch", "1", check=False)
    assert failed.returncode == 30, failed.stderr[-2000:]
    result = status.collect(site.layout)
    [batch] = result["batches"]
    plan = atomic.read_json(BatchPaths(site.layout.batch_dir("0001")).chunk_plan)["chunks"]
    assert batch["chunks"]["failed"] == batch["chunks"]["total"] == len(plan) >= 4
    assert batch["failure"]["task"] == "OCRBatch"
    line = status.last_line(result)
    assert line is not None and line.startswith("batch 0001: OCRBatch failed") and "Finalize --batch 0001" in line


def test_command_line_and_task(finished_site) -> None:
    """`python -m pipeline status --json` and `luigi --module pipeline Status` as a user runs them."""
    site, sound, _ = finished_site
    command = [sys.executable, "-m", "pipeline", "status", "--json"]
    fine = subprocess.run(command, env=site.env(), cwd=site.root, capture_output=True, text=True, timeout=120)
    assert fine.returncode == 0, fine.stderr
    numbers = json.loads(fine.stdout)
    assert numbers["stages"][PROCESSED]["documents"] == len(sound)
    task = site.luigi("Status")
    assert table_rows(task.stdout)[PROCESSED][:2] == [f"{len(sound):,}", f"{sum(sound.values()):,}"]

    site.config.write_text(site.config.read_text() + "\n[status]\ndisk_threshold_percent = 0\n")
    full = subprocess.run(command, env=site.env(), cwd=site.root, capture_output=True, text=True, timeout=120)
    assert full.returncode == 1
    assert full.stderr.strip().splitlines()[-1].startswith("ERROR: disk: ")
    assert json.loads(full.stdout)["problems"][0].startswith("disk: ")
    failed = site.luigi("Status", check=False)
    assert failed.returncode == 30
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: Status(") and "disk: " in last and "disk_threshold_percent" in last


def test_folder_cache_follows_new_documents(finished_site, tmp_path: Path) -> None:
    """Counts of unchanged fan-out folders come from the cache; a folder a new document lands in is
    counted again."""
    site, sound, broken = finished_site
    an_hour_ago = now_plus(-1).timestamp()
    for stage in (OCR_COMPLETED, PROCESSED, QUARANTINE):
        for folder in (site.base / stage).iterdir():
            os.utime(folder, (an_hour_ago, an_hour_ago))  # settled folders: the cache keeps them
    first = status.collect(site.layout)
    assert (site.layout.manifests / status.CACHE_NAME).exists()
    more = {"late one": 2, "late two": 3}
    for name, pages in more.items():
        (tmp_path / "incoming" / f"{name}.pdf").write_bytes(samples.text_pdf([f"{name} {n}" for n in range(pages)]))
    site.luigi("ProcessAll", "--run-id", "second")
    second = status.collect(site.layout)
    assert second["stages"][PROCESSED]["documents"] == len(sound) + len(more)
    assert second["stages"][PROCESSED]["pages"] == sum(sound.values()) + sum(more.values())
    assert second["stages"][QUARANTINE] == first["stages"][QUARANTINE]
    assert second["stages"][QUARANTINE]["documents"] == len(broken)
    (site.layout.manifests / status.CACHE_NAME).unlink()
    fresh = status.collect(site.layout)
    for stage in (OCR_COMPLETED, PROCESSED, QUARANTINE):
        assert fresh["stages"][stage] == second["stages"][stage]


@pytest.mark.slurm
def test_slurm_chunks_running_and_pending_from_one_sacct_call(cluster: None, make_site, call_log: Path,
                                                             tmp_path: Path, release: Path) -> None:
    """Three chunks on the dev cluster, one at a time (array throttle 1): one running, two pending."""
    site = slurm_site(make_site, tmp_path, release, ["a", "b", "c"], slurm__array_throttle=1)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    process = site.popen("Finalize", "--batch", "1")
    client, job = SlurmClient(), None
    try:
        [submitted] = wait_until(lambda: logged(site, "slurm_submitted"), "submission", process)
        job = submitted["job_id"]

        def one_running() -> bool:
            states = client.query([job])
            return len(states) == 3 and [s.state for s in states.values()].count("RUNNING") == 1

        wait_until(one_running, "one running array task and two known to sacct", process)
        before = len(read_calls(call_log, os.getpid()))
        result = status.collect(site.layout, slurm=client)
        assert [c.command for c in read_calls(call_log, os.getpid())[before:]] == ["sacct"]
        [batch] = result["batches"]
        assert batch["chunks"] == {"total": 3, "done": 0, "running": 1, "pending": 2, "failed": 0, "pages_to_do": 3}
        # Much later, the same jobs still in the queue are stale.
        stale = status.collect(site.layout, slurm=client, now=now_plus(25),
                               thresholds=status.Thresholds(stalled_hours=100, stale_job_hours=24))
        assert len(stale["problems"]) == 3 and all(p.startswith("stale job: batch 0001 chunk ")
                                                   for p in stale["problems"])
    finally:
        process.kill()
        process.wait()
        if job:
            client.cancel([job])


def test_local_chunks_running_and_pending(make_site, tmp_path: Path, release: Path) -> None:
    """The local executor, two chunks at a time, an OCR program held until released: two chunks
    run, one waits; released, all three are done."""
    site = slurm_site(make_site, tmp_path, release, ["a", "b", "c"], ocr__executor="local", ocr__parallel_chunks=2)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    process = site.popen("OCRBatch", "--batch", "1")
    paths = BatchPaths(site.layout.batch_dir("0001"))
    try:
        wait_until(lambda: len(list(paths.logs.glob("chunk_*.log"))) == 2, "two chunk logs", process)
        [batch] = status.collect(site.layout)["batches"]
        assert batch["chunks"] == {"total": 3, "done": 0, "running": 2, "pending": 1, "failed": 0, "pages_to_do": 3}
        (release / "all").touch()
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
        process.wait()
    [batch] = status.collect(site.layout)["batches"]
    assert batch["stage"] == "ocr done"
    assert batch["chunks"] == {"total": 3, "done": 3, "running": 0, "pending": 0, "failed": 0, "pages_to_do": 0}
