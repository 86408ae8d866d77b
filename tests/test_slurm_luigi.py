"""OCR on the dev SLURM cluster through the real `luigi` command line.

Status queries and submissions are counted by wrappers placed before the real sacct, squeue,
scontrol, sbatch and scancel on PATH: each logs the call with its parent pid (the luigi process
that made it), then execs the real program. The OCR program (engine = command) holds every
document until the test releases it, so chunks stay in flight as long as a test needs.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import events, samples
from pipeline.executors.slurm.client import SlurmClient
from pipeline.executors.slurm.parse import parse_key_values
from pipeline.layout import BatchPaths

from .test_slurm_client import cluster  # noqa: F401  (the fixture)

# The commands of the dev cluster.
slurm = SlurmClient()

POLL = 0.5  # seconds between status queries in these sites (initial = max, no growth)

WRAPPER = """#!/bin/bash
if [ -n "${{SLURM_CALL_LOG:-}}" ]; then
    printf '%s %s %s %s\\n' "$(date +%s.%N)" "$PPID" "$(basename "$0")" "$*" >> "$SLURM_CALL_LOG"
fi
if [ -n "${{SLURM_OUTPUT_LOG:-}}" ]; then
    output=$({real} "$@"); status=$?
    if [ -n "$output" ]; then
        printf '%s\\n' "$output"
        printf '%s\\n' "$output" | sed "s/^/$PPID $(basename "$0") /" >> "$SLURM_OUTPUT_LOG"
    fi
    exit $status
fi
exec {real} "$@"
"""

ENGINE = '''\
"""Test OCR program: waits until its PDFs (or 'all') are released, holds, then writes one record each."""
import hashlib, json, os, sys, time
chunk_list, output, release, hold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pdfs = open(chunk_list).read().splitlines()
while not (os.path.exists(os.path.join(release, "all"))
           or all(os.path.exists(os.path.join(release, os.path.basename(p))) for p in pdfs)):
    time.sleep(0.2)
time.sleep(hold)
with open(output, "w") as out:
    for path in pdfs:
        text = "Text of " + os.path.basename(path)
        out.write(json.dumps({
            "id": hashlib.sha1(text.encode()).hexdigest(), "text": text, "source": "olmocr",
            "added": "2026-01-01", "created": "2026-01-01",
            "metadata": {"Source-File": path, "olmocr-version": "test-1", "pdf-total-pages": 1,
                         "total-input-tokens": 0, "total-output-tokens": 0, "total-fallback-pages": 0},
            "attributes": {"pdf_page_numbers": [[0, len(text), 1]]},
        }) + "\\n")
'''


@dataclass(frozen=True)
class Call:
    time: float
    parent: int
    command: str
    args: str


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Wrappers for the SLURM commands first on PATH; returns the log they write."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    for name in ("sbatch", "sacct", "squeue", "scontrol", "scancel"):
        real = shutil.which(name)
        assert real, f"{name} is not installed"
        (wrappers / name).write_text(WRAPPER.format(real=shlex.quote(real)))
        (wrappers / name).chmod(0o755)
    log = tmp_path / "slurm_calls.log"
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CALL_LOG", str(log))
    return log


def read_calls(log: Path, parent: int | None = None) -> list[Call]:
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        moment, pid, command, args = (line.split(" ", 3) + [""])[:4]
        if parent is None or int(pid) == parent:
            calls.append(Call(float(moment), int(pid), command, args))
    return calls


@pytest.fixture
def release(tmp_path: Path) -> Path:
    folder = tmp_path / "release"
    folder.mkdir()
    return folder


def slurm_site(make_site, tmp_path: Path, release: Path, documents: list[str], hold: float = 0.0, **overrides: Any):
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    for name in documents:
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"Page of {name}"]))
    engine = tmp_path / "engine.py"
    engine.write_text(ENGINE)
    settings: dict[str, Any] = {
        "ocr__executor": "slurm", "ocr__pages_per_chunk": 1,
        "ocr__command": f"{sys.executable} {engine} {{chunk_list}} {{output}} {release} {hold}",
        "slurm__poll_initial_seconds": POLL, "slurm__poll_max_seconds": POLL, "slurm__poll_growth": 1,
        "slurm__cpus_per_task": 1, "slurm__mem": "200M", "slurm__walltime_base_seconds": 120,
    }
    return make_site(source=incoming, engine="command", **{**settings, **overrides})


def logged(site, kind: str, batch: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events.read(site.layout.events)
            if e["event"] == kind and (batch is None or e.get("batch") == batch)]


def wait_until(condition: Callable[[], Any], what: str, process: subprocess.Popen | None = None,
               timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert process is None or process.poll() is None, f"luigi exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)
    return found


def polls_while_in_flight(site, batch: str, chunks: int, log: Path, seconds: float = 4.0) -> tuple[str, list[Call]]:
    """Run Finalize until its array is submitted, log the SLURM calls of ``seconds`` of waiting, stop it."""
    site.luigi("CreateBatch", "--batch", batch)
    process = site.popen("Finalize", "--batch", batch)
    job = None
    try:
        [submitted] = wait_until(lambda: logged(site, "slurm_submitted", f"{int(batch):04d}"), "submission", process)
        job = submitted["job_id"]
        assert submitted["chunks"] == list(range(chunks))
        wait_until(lambda: [c for c in read_calls(log, process.pid) if c.command == "sacct"], "poll", process)
        start = time.time()
        time.sleep(seconds)
        window = [c for c in read_calls(log, process.pid) if start <= c.time <= time.time()]
        # sacct may learn of a new array a few seconds late (slurmdbd lags the controller under load).
        def all_tasks_known() -> dict | None:
            found = slurm.query([job])
            return found if len(found) == chunks else None

        states = wait_until(all_tasks_known, f"all {chunks} array tasks in sacct", process)
        assert all(s.outcome == "waiting" for s in states.values()), states
    finally:
        process.kill()
        process.wait()
        if job:
            slurm.cancel([job])
    return job, window


@pytest.mark.slurm
def test_one_status_query_per_poll_with_1_or_50_chunks_in_flight(cluster: None, make_site, call_log: Path,
                                                                 tmp_path: Path, release: Path) -> None:
    site = slurm_site(make_site, tmp_path, release, ["single"])
    site.luigi("Download", "--run-id", "one")
    polls = {1: polls_while_in_flight(site, "1", 1, call_log)}
    for n in range(50):
        (tmp_path / "incoming" / f"many_{n:02d}.pdf").write_bytes(samples.text_pdf([f"Page {n}"]))
    site.luigi("Download", "--run-id", "fifty")
    polls[50] = polls_while_in_flight(site, "2", 50, call_log)
    for chunks, (job, window) in polls.items():
        # Only sacct, once per poll, for the one array job whatever the number of chunks.
        assert {c.command for c in window} == {"sacct"}, (chunks, window)
        assert all(shlex.split(c.args)[:2] == ["-j", job] for c in window), (chunks, window)
        # Calls a poll apart, never a burst within one poll (the executor sleeps at least POLL between
        # polls, so this holds however loaded the machine is).
        gaps = [b.time - a.time for a, b in zip(window, window[1:], strict=False)]
        assert len(window) >= 3 and all(gap >= POLL for gap in gaps), (chunks, gaps)
    assert abs(len(polls[1][1]) - len(polls[50][1])) <= 1, {n: len(w) for n, (_, w) in polls.items()}


@pytest.mark.slurm
def test_sigkill_then_rerun_reattaches_without_submitting_again(cluster: None, make_site, call_log: Path,
                                                                tmp_path: Path, release: Path) -> None:
    site = slurm_site(make_site, tmp_path, release, ["a", "b", "c"])
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    first = site.popen("Finalize", "--batch", "1")
    [submitted] = wait_until(lambda: logged(site, "slurm_submitted"), "submission", first)
    job = submitted["job_id"]
    wait_until(lambda: any(s.state == "RUNNING" for s in slurm.query([job]).values()), "a running chunk", first)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    states = slurm.query([job])
    assert len(states) == 3 and all(s.outcome == "waiting" for s in states.values()), states

    # Chunk 0 ends while nobody watches; chunks 1 and 2 are still in the queue at the rerun.
    paths = BatchPaths(site.layout.batch_dir(1))
    plan = json.loads(paths.chunk_plan.read_text())["chunks"]
    (release / f"{plan[0]['documents'][0]}.pdf").touch()
    wait_until(lambda: paths.done_marker(0).exists(), "chunk 0's done marker")
    second = site.popen("Finalize", "--batch", "1")
    [reattached] = wait_until(lambda: logged(site, "slurm_reattached"), "re-attach", second)
    (release / "all").touch()
    assert second.wait(timeout=120) == 0

    assert (reattached["job_ids"], reattached["chunks"]) == ([job], [1, 2])
    sbatch = [c for c in read_calls(call_log) if c.command == "sbatch"]
    assert [c.parent for c in sbatch] == [first.pid], sbatch
    assert len(logged(site, "slurm_submitted")) == 1
    assert paths.finalized.exists()
    for name in ("a", "b", "c"):
        assert "Text of " + name in json.loads(site.layout.processed_ocr(name).read_text())["text"]
    # The rerun watched chunks 1 and 2 to their end; chunk 0's end is read back from sacct.
    result = site.luigi("MetricsSummary")
    assert "1 job ends read back from sacct" in result.stderr
    ends = {m["chunk"]: m for m in events.read(site.layout.metrics) if m.get("state")}
    assert {c: (m["job_id"], m["state"]) for c, m in ends.items()} == {c: (job, "COMPLETED") for c in (0, 1, 2)}
    assert json.loads((site.layout.manifests / "metrics_summary.json").read_text())["chunks_done"] == 3


@pytest.mark.slurm
def test_process_all_on_slurm_one_submitter_at_a_time_then_metrics(cluster: None, make_site, tmp_path: Path,
                                                                   release: Path) -> None:
    (release / "all").touch()
    site = slurm_site(make_site, tmp_path, release, ["p1", "p2", "q1", "q2"], hold=2, pipeline__batch_size=2,
                      resources__slurm_submit=1, slurm__walltime_base_seconds=100,
                      slurm__walltime_seconds_per_page=10, slurm__walltime_buffer=0.5,
                      slurm__directives="--nice=7", slurm__env_setup="echo environment set up")
    site.luigi("ProcessAll", "--run-id", "r1", "--workers", "2")

    # The #SBATCH line and the setup line from luigi.cfg reached SLURM and the job.
    job = logged(site, "slurm_submitted", "0001")[0]["job_id"]
    shown = subprocess.run(["scontrol", "--oneliner", "show", "job", job], capture_output=True, text=True, check=True)
    assert {parse_key_values(line).get("Nice") for line in shown.stdout.splitlines()} == {"7"}
    assert "environment set up" in BatchPaths(site.layout.batch_dir(1)).chunk_log(0).read_text()

    # Two workers, but one slurm_submit unit: one batch's jobs are watched to their end before the next submits.
    spans = []
    for batch in ("0001", "0002"):
        assert BatchPaths(site.layout.batch_dir(batch)).finalized.exists()
        begin = min(e["time"] for e in logged(site, "slurm_submitted", batch))
        spans.append((begin, max(e["time"] for e in logged(site, "chunk_done", batch))))
    (first_begin, first_end), (second_begin, second_end) = sorted(spans)
    assert first_end < second_begin, spans

    # chunks.json shows what the executor asked for: (100 + 10 * 1 page) * 1.5.
    for batch in ("0001", "0002"):
        plan = json.loads(BatchPaths(site.layout.batch_dir(batch)).chunk_plan.read_text())["chunks"]
        assert [c["walltime_seconds"] for c in plan] == [165, 165]
        assert [e["walltime"] for e in logged(site, "slurm_submitted", batch)] == [165]

    result = site.luigi("MetricsSummary")
    summary = json.loads((site.layout.manifests / "metrics_summary.json").read_text())
    ends = [m for m in events.read(site.layout.metrics) if m.get("state")]
    elapsed = [m["elapsed"] for m in ends]
    assert len(ends) == 4 and {m["state"] for m in ends} == {"COMPLETED"}
    assert all(e >= 2 for e in elapsed), elapsed  # every document is held 2 s
    assert (summary["chunks_done"], summary["pages_done"], summary["timeouts"]) == (4, 4, 0)
    assert summary["walltime_requested_seconds"] == {"mean": 165, "max": 165}
    assert summary["elapsed_seconds"]["max"] == max(elapsed)
    assert summary["seconds_per_page"] == pytest.approx(sum(elapsed) / 4)
    assert summary["walltime_ratio"]["overall"] == pytest.approx(4 * 165 / sum(elapsed))
    assert (summary["waiting"]["pages"], summary["waiting"]["projected_seconds"]) == (0, 0)
    assert "chunks done:              4 (4 job attempts: 4 COMPLETED)" in result.stdout
    assert "projected time to finish: 0:00:00" in result.stdout


@pytest.mark.slurm
def test_process_all_with_two_workers_keeps_two_batches_on_the_cluster(cluster: None, make_site, tmp_path: Path,
                                                                       release: Path) -> None:
    site = slurm_site(make_site, tmp_path, release, ["p1", "p2", "q1", "q2"], pipeline__batch_size=2,
                      resources__slurm_submit=2)
    process = site.popen("ProcessAll", "--run-id", "r1", "--workers", "2")
    jobs: list[str] = []
    try:
        # Every document is held until released: the second batch's array can only reach the queue
        # while the first batch's chunks still wait, with its worker watching them.
        def both_submitted() -> list[dict[str, Any]] | None:
            found = logged(site, "slurm_submitted")
            return found if len(found) >= 2 else None

        submitted = wait_until(both_submitted, "two batches' arrays submitted", process, timeout=120)
        jobs = [e["job_id"] for e in submitted]
        assert sorted(e["batch"] for e in submitted) == ["0001", "0002"]
        assert all(s.outcome == "waiting" for s in slurm.query(jobs).values())
        (release / "all").touch()
        assert process.wait(timeout=180) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            slurm.cancel(jobs)

    # Each batch submitted once, each chunk done once, every document finalized once.
    assert sorted(e["batch"] for e in logged(site, "slurm_submitted")) == ["0001", "0002"]
    assert sorted((e["batch"], e["chunk"]) for e in logged(site, "chunk_done")) == [
        ("0001", 0), ("0001", 1), ("0002", 0), ("0002", 1)]
    for batch in ("0001", "0002"):
        assert BatchPaths(site.layout.batch_dir(batch)).finalized.exists()
    for name in ("p1", "p2", "q1", "q2"):
        assert "Text of " + name in json.loads(site.layout.processed_ocr(name).read_text())["text"]
    run = json.loads((site.layout.manifests / "runs" / "process_all_r1.json").read_text())
    assert (sorted(run["batches"]), run["documents_finalized"]) == (["0001", "0002"], 4)
