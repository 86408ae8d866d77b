"""SIGKILL sweep: the pipeline killed at named instants of every stage, then rerun, loses nothing.

Each kill lands deterministically: the run is started with PIPELINE_PAUSE_AT (pipeline/faults.py),
the process reaching that point stops itself, the live tree is checked, and then exactly one of
these is SIGKILLed:
    luigi   the luigi process alone (a chunk job it was waiting for runs on as an orphan)
    group   the whole process group (a machine crash)
    paused  only the process that reached the point (a chunk job dying under a live luigi)
Kills come in chains on one base_dir, so each kill after the first lands in the recovery from
the one before. After the chain a clean rerun must converge to what an undisturbed run produced
(tests/invariants.py), and a second rerun must change no byte.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import faults, samples

from . import invariants
from .conftest import Site, luigi_executable, snapshot, write_config

MODES = ("luigi", "group", "paused")


@dataclass(frozen=True)
class Kill:
    """Stop at the ``n``-th point whose "<point> <detail>" matches ``pattern``, then kill by ``mode``."""

    stage: str
    pattern: str
    n: int = 1
    mode: str = "group"

    @property
    def spec(self) -> str:
        return f"{self.pattern}:{self.n}"


# --- the collection and its sites ------------------------------------------------------------------

def make_collection(folder: Path) -> None:
    """Six born-digital documents (1-3 pages: three chunks of at most 4 pages) and two broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (folder / f"doc {i}.pdf").write_bytes(samples.text_pdf([f"Document {i} page {p} ledger"
                                                                for p in range(i % 3 + 1)]))
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "cut.pdf").write_bytes(samples.text_pdf(["x"] * 3)[:500])


def new_site(root: Path, incoming: Path) -> Site:
    root.mkdir(parents=True)
    config = root / "luigi.cfg"
    # One chunk and one document at a time: the order of points, and so each kill, is reproducible.
    write_config(config, {
        "core": {"autoload_range": "false"},
        "retcode": {"already_running": 10, "missing_data": 20, "not_run": 25, "task_failed": 30,
                    "scheduling_error": 35, "unhandled_exception": 40},
        "pipeline": {"base_dir": root / "data", "workers": 1},
        "download": {"source": incoming},
        "ocr": {"executor": "local", "engine": "text", "pages_per_chunk": 4, "parallel_chunks": 1,
                "engine_workers": 1},
        "backpressure": {"min_free_gb": 0.1},
    })
    return Site(root, config)


@pytest.fixture(scope="module")
def incoming(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("collection") / "incoming"
    make_collection(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, incoming) -> invariants.Reference:
    """The outcome of an undisturbed ProcessAll on the same collection."""
    site = new_site(tmp_path_factory.mktemp("reference") / "site", incoming)
    site.luigi("ProcessAll", "--run-id", "r")
    ref = invariants.reference(site.base)
    assert len(ref.texts) == 6 and ref.quarantined == {"empty": "empty", "cut": "truncated"}
    assert not invariants.check_converged(site.base, ref)
    return ref


# --- one paused and killed run ---------------------------------------------------------------------

def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of the live processes of a process group (zombies left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append((int(entry.name), fields[0]))
    return members


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def kill_at(site: Site, args: tuple[str, ...], kill: Kill, fault_dir: Path) -> dict:
    """Run ``luigi args`` until it pauses at ``kill``, check the live tree, kill, wait for the rest."""
    shutil.rmtree(fault_dir, ignore_errors=True)
    fault_dir.mkdir(parents=True)
    env = {**site.env(), faults.FAULT_DIR: str(fault_dir), faults.PAUSE_AT: kill.spec}
    log = open(fault_dir / "luigi.log", "wb")
    process = subprocess.Popen([luigi_executable(), "--module", "pipeline", *args, "--local-scheduler"], env=env,
                               cwd=site.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    paused_file = fault_dir / faults.PAUSED
    try:
        wait_for(lambda: paused_file.exists() or process.poll() is not None, 120, f"{kill} to be reached")
        if not paused_file.exists():
            raise AssertionError(f"{kill}: the run ended ({process.returncode}) without reaching the point; "
                                 f"log: {(fault_dir / 'luigi.log').read_text()[-3000:]}")
        paused = json.loads(paused_file.read_text())
        wait_for(lambda: (paused["pid"], "T") in group_members(process.pid), 30, "the paused process to stop")
        invariants.assert_safe(site.base)  # at the instant of the kill
        chunk_job = paused["pid"] != process.pid
        if kill.mode == "group":
            os.killpg(process.pid, signal.SIGKILL)
        elif kill.mode == "luigi" or not chunk_job:
            os.kill(process.pid, signal.SIGKILL)
            if chunk_job:
                os.kill(paused["pid"], signal.SIGCONT)  # it runs on as an orphan
        else:
            os.kill(paused["pid"], signal.SIGKILL)
        process.wait(timeout=120)
        wait_for(lambda: not group_members(process.pid), 120, "orphaned chunk jobs to finish")
    finally:
        if process.poll() is None or group_members(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    invariants.assert_safe(site.base)  # after the kill
    return paused


def run_chain(site: Site, args: tuple[str, ...], kills: list[Kill], ref: invariants.Reference,
              fault_dir: Path) -> list[dict]:
    """Kill at each point in turn on one base_dir, then rerun: converged, and a second rerun is a no-op."""
    reached = []
    for kill in kills:
        paused = kill_at(site, args, kill, fault_dir)
        reached.append({"kill": kill, "point": paused["point"], "detail": paused["detail"],
                        "chunk_job": paused["pid"] != paused["pgid"]})
    site.luigi(*args)
    invariants.assert_converged(site.base, ref)
    before = snapshot(site.base)
    site.luigi(*args)
    assert snapshot(site.base) == before, "a rerun of finished work changed files"
    return reached


# --- the chains ------------------------------------------------------------------------------------

PROCESS_ALL = ("ProcessAll", "--run-id", "r")

# Each chain walks forward through the stages; every kill after the first lands in the recovery
# of the kill before it. Patterns match "<point> <detail>" (see pipeline/faults.py).
CHAINS: dict[str, list[Kill]] = {
    "download-to-plan": [
        Kill("Download", "atomic.link.after */_quarantine/*/cut.pdf", mode="group"),
        Kill("Download", "atomic.rename.after */cut.reason.json", mode="luigi"),
        Kill("Download", "download.rename.before */doc 1.pdf", mode="luigi"),
        Kill("Download", "atomic.rename.before */doc 2.meta.json", mode="group"),
        Kill("Download", "atomic.rename.after */doc 3.meta.json", mode="luigi"),
        Kill("Download", "manifest.append.before events.ndjson:downloaded", mode="group"),
        Kill("Download", "atomic.rename.before */_manifests/downloads/*", mode="luigi"),
        Kill("CreateBatch", "atomic.link.after */batch_*/doc 2.pdf", mode="group"),
        Kill("CreateBatch", "atomic.rename.before */batch_*/batch.json", mode="luigi"),
        Kill("CreateBatch", "manifest.append.before events.ndjson:batch_created", mode="group"),
        Kill("PlanChunks", "atomic.rename.after */chunks/chunk_001.txt", mode="luigi"),
        Kill("PlanChunks", "atomic.rename.before */batch_*/chunks.json", mode="group"),
    ],
    "ocr-and-split": [
        Kill("OCRBatch", "atomic.rename.before */logs/job.sh", mode="group"),
        # luigi dies after chunk 0; the job of chunk 1, already started, runs on as an orphan
        Kill("OCRBatch", "manifest.append.after metrics.ndjson:", n=1, mode="luigi"),
        Kill("OCRBatch", "atomic.rename.before */results/results/output_*", n=1, mode="paused"),
        Kill("OCRBatch", "atomic.rename.before */done/chunk_002.done", mode="group"),
        Kill("OCRBatch", "manifest.append.before events.ndjson:chunk_done", mode="group"),
        Kill("OCRBatch", "atomic.rename.after */chunks/retries.json", mode="luigi"),
        Kill("OCRBatch", "atomic.rename.before */done/ocr_batch.done", mode="group"),
        Kill("SplitResults", "atomic.rename.before */04_ocr_completed/*", n=2, mode="luigi"),
        Kill("SplitResults", "atomic.rename.after */04_ocr_completed/*", n=4, mode="group"),
        Kill("SplitResults", "atomic.rename.before */split_report.json", mode="luigi"),
        Kill("Finalize", "atomic.delete.after */batch_*/*.pdf", n=1, mode="group"),
        Kill("Finalize", "atomic.delete.before */01_downloaded/*.pdf", n=2, mode="luigi"),
        Kill("Finalize", "atomic.delete.after */01_downloaded/*.meta.json", n=2, mode="group"),
    ],
    "chunk-jobs": [
        Kill("OCRBatch", "atomic.rename.after */results/results/output_*", n=1, mode="luigi"),
        Kill("OCRBatch", "atomic.rename.after */done/chunk_001.done", mode="paused"),
    ],
    "finalize-and-summary": [
        Kill("Finalize", "atomic.rename.after */05_processed/*.ocr.json", n=2, mode="group"),
        Kill("Finalize", "atomic.rename.before */05_processed/*.metadata.json", n=3, mode="luigi"),
        Kill("Finalize", "manifest.append.before events.ndjson:finalized", mode="luigi"),
        Kill("Finalize", "atomic.rename.after */finalize_report.json", mode="group"),
        Kill("Finalize", "atomic.rename.before */batch_*/finalized.json", mode="luigi"),
        Kill("Finalize", "manifest.append.before events.ndjson:batch_finalized", mode="group"),
        Kill("ProcessAll", "atomic.rename.before */_manifests/runs/process_all_r.json", mode="luigi"),
    ],
}


def test_the_reduced_sweep_has_30_distinct_points_over_every_file_stage():
    points = {(k.pattern, k.n) for kills in CHAINS.values() for k in kills}
    stages = {k.stage for kills in CHAINS.values() for k in kills}
    assert len(points) >= 30
    assert stages >= {"Download", "CreateBatch", "PlanChunks", "OCRBatch", "SplitResults", "Finalize", "ProcessAll"}
    assert {k.mode for kills in CHAINS.values() for k in kills} == set(MODES)


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_killed_at_each_point_of_a_chain_and_rerun_loses_nothing(chain, tmp_path, incoming, reference):
    site = new_site(tmp_path / "site", incoming)
    reached = run_chain(site, PROCESS_ALL, CHAINS[chain], reference, tmp_path / "faults")
    assert len(reached) == len(CHAINS[chain])
    if any(k.mode == "paused" for k in CHAINS[chain]):  # the chunk-job kills did hit a chunk job
        assert all(r["chunk_job"] for r in reached if r["kill"].mode == "paused")
