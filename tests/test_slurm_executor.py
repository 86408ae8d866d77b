"""pipeline.executors.slurm.executor: the decision logic on a scripted cluster, then the real dev cluster.

Tests marked ``slurm`` need ``slurm/dev-cluster.sh start`` (as root) and fail when it is not up.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import events
from pipeline.executors.base import ChunkRun
from pipeline.executors.slurm.client import SlurmClient
from pipeline.executors.slurm.executor import SlurmExecutor, latest_submissions
from pipeline.executors.slurm.parse import JobState, SlurmError, task_key
from pipeline.executors.walltime import WalltimeModel, capped
from pipeline.layout import BatchPaths, Layout

from .test_slurm_client import cluster  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


@pytest.fixture
def paths(layout: Layout) -> BatchPaths:
    paths = BatchPaths(layout.batch_dir(7))
    paths.dir.mkdir(parents=True)
    return paths


def logged(layout: Layout, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.read(layout.events) if e["event"] == kind]


def write_marker(paths: BatchPaths, index: int) -> None:
    marker = paths.done_marker(index)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"chunk": index, "missing": []}))


# --- a scripted cluster -----------------------------------------------------------------------

class FakeCluster:
    """Stands in for the executor's SlurmClient: each poll runs the next step of a script, on a fake clock."""

    def __init__(self, steps: list[Callable[[FakeCluster], Any]]) -> None:
        self.steps = steps
        self.now = 1_000_000.0
        self.submissions: list[dict[str, Any]] = []
        self.queries: list[set[str]] = []
        self.cancelled: list[str] = []

    def query_controller(self, job_ids: set[str]) -> dict[str, JobState]:
        return {}

    def partition_max_time(self, partition: str | None = None) -> int:
        return 3600

    def cancel(self, job_ids: list[str]) -> None:
        self.cancelled.extend(job_ids)

    def submit(self, script: Path, *, array_indices: list[int], time: int, **options: Any) -> str:
        job = str(100 + len(self.submissions))
        self.submissions.append({"job": job, "indices": list(array_indices), "time": time, **options})
        return job

    def query(self, job_ids: set[str]) -> dict[str, JobState]:
        self.queries.append(set(job_ids))
        answer = self.steps.pop(0)(self) if self.steps else {}
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def job(self, n: int = -1) -> str:
        return self.submissions[n]["job"]


def states(job: str, **by_index: str) -> dict[str, JobState]:
    out = {}
    for name, state in by_index.items():
        index = int(name.lstrip("c"))
        exit_code = "5:0" if state == "FAILED" else "0:0"
        out[task_key(job, index)] = JobState(job, index, state, exit_code, 1, "t0", "t1", None)
    return out


def fake_executor(layout: Layout, fake: FakeCluster, **options: Any) -> SlurmExecutor:
    return SlurmExecutor(layout, ["true"], client=fake, sleep=fake.sleep, clock=fake.clock,  # type: ignore[arg-type]
                         walltime=WalltimeModel(60, 1, 0), poll_initial=10, poll_max=60, **options)


CHUNKS = [ChunkRun(0, 10, 2), ChunkRun(1, 20, 3)]


def test_waits_through_preemption_and_needs_the_marker(layout: Layout, paths: BatchPaths) -> None:
    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states(f.job(), c0="COMPLETED", c1="RUNNING")

    fake = FakeCluster([
        lambda f: {},  # sacct does not know the job yet
        lambda f: states(f.job(), c0="PENDING", c1="RUNNING"),
        lambda f: states(f.job(), c0="PREEMPTED", c1="RUNNING"),
        lambda f: states(f.job(), c0="REQUEUED", c1="RUNNING"),
        finish,
        lambda f: states(f.job(), c0="COMPLETED", c1="COMPLETED"),
    ])
    messages: list[str] = []
    fake_executor(layout, fake).run(paths, CHUNKS, lambda done, total, msg: messages.append(msg))
    assert len(fake.submissions) == 1
    submission = fake.submissions[0]
    assert submission["indices"] == [0, 1] and submission["time"] == 80  # the larger chunk's walltime
    assert submission["job_name"] == "ocr-0007" and submission["output"].endswith("logs/chunk_%3a.log")
    assert all(q == {"100"} for q in fake.queries)
    [event] = logged(layout, "slurm_submitted")
    assert (event["batch"], event["chunks"], event["job_id"], event["walltime"]) == ("0007", [0, 1], "100", 80)
    metrics = list(events.read(layout.metrics))
    assert [(m["chunk"], m.get("state")) for m in metrics] == [(0, None), (1, None), (0, "COMPLETED"),
                                                               (1, "COMPLETED")]
    assert metrics[0]["walltime_requested"] == 80 and metrics[0]["submitted_at"]
    assert any("preempted" in m for m in messages)
    # The visualizer's status: chunks done of total, counts by state, the job.
    assert "0/2 chunks done; 1 pending, 1 running (job 100)" in messages


def test_poll_interval_grows_while_quiet(layout: Layout, paths: BatchPaths) -> None:
    times: list[float] = []

    def pending(f: FakeCluster) -> dict[str, JobState]:
        times.append(f.now)
        return states(f.job(), c0="PENDING", c1="PENDING")

    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states(f.job(), c0="COMPLETED", c1="COMPLETED")

    fake = FakeCluster([pending] * 6 + [finish])
    start = fake.now
    fake_executor(layout, fake).run(paths, CHUNKS, lambda *a: None)
    gaps = [round(b - a, 2) for a, b in zip([start] + times, times, strict=False)]
    assert gaps == [10, 10, 15, 22.5, 33.75, 50.62]


def test_failures_are_resubmitted_and_timeouts_get_more_time(layout: Layout, paths: BatchPaths) -> None:
    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return {**states(f.job(-2), c0="COMPLETED"), **states(f.job(), c1="COMPLETED")}

    fake = FakeCluster([
        lambda f: states(f.job(), c0="TIMEOUT", c1="FAILED"),
        lambda f: states(f.job(), c0="TIMEOUT", c1="RUNNING"),
        lambda f: {**states(f.job(-2), c1="OUT_OF_MEMORY"), **states(f.job(), c0="RUNNING")},
        finish,
    ])
    fake_executor(layout, fake, max_retries=2).run(paths, CHUNKS, lambda *a: None)
    assert [(s["indices"], s["time"]) for s in fake.submissions] == [
        ([0, 1], 80), ([0, 1], 120), ([0], 180), ([1], 120)]
    # Every poll asks once, for every job still in play.
    assert fake.queries == [{"100"}, {"101"}, {"101", "102"}, {"102", "103"}]
    failed = logged(layout, "slurm_chunk_failed")
    assert [(e["chunk"], e["state"], e["attempt"]) for e in failed] == [
        (0, "TIMEOUT", 1), (1, "FAILED", 1), (0, "TIMEOUT", 2), (1, "OUT_OF_MEMORY", 2)]
    assert failed[1]["exit_code"] == "5:0"


def test_final_failure_names_everything(layout: Layout, paths: BatchPaths) -> None:
    fake = FakeCluster([
        lambda f: states(f.job(), c0="FAILED", c1="COMPLETED"),
        lambda f: states(f.job(), c0="CANCELLED", c1="NODE_FAIL"),
    ])
    messages: list[str] = []
    outcomes = fake_executor(layout, fake, max_retries=1).run(
        paths, CHUNKS, lambda done, total, msg: messages.append(msg))
    assert "0/2 chunks done; 2 submitted (job 101)" in messages and messages[-1] == "0/2 chunks done; 2 failed"
    assert sorted(outcomes) == [0, 1] and not any(o.done for o in outcomes.values())
    assert [(o.state, o.exit_code, o.attempts, o.log) for o in outcomes.values()] == [
        ("CANCELLED", "0:0", 2, str(paths.chunk_log(0))), ("NODE_FAIL", "0:0", 2, str(paths.chunk_log(1)))]
    message = outcomes[0].message
    assert "batch 0007 chunk 0: job 101_0 ended CANCELLED (exit code 0:0) after 2 attempts" in message
    assert "batch 0007 chunk 1: job 101_1 ended NODE_FAIL" in outcomes[1].message
    assert str(paths.chunk_log(0)) in message and str(paths.chunk_log(1)) in outcomes[1].message
    first = logged(layout, "slurm_chunk_failed")[1]
    assert first["state"] == "COMPLETED"  # COMPLETED without a done marker is a failure too


def test_failed_queries_are_retried_then_reported(layout: Layout, paths: BatchPaths) -> None:
    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states(f.job(), c0="COMPLETED", c1="COMPLETED")

    error = SlurmError("sacct failed (exit 1): Connection refused")
    fake = FakeCluster([lambda f: error, lambda f: error, finish])
    messages: list[str] = []
    fake_executor(layout, fake).run(paths, CHUNKS, lambda done, total, msg: messages.append(msg))
    assert not logged(layout, "slurm_chunk_failed") and len(fake.submissions) == 1
    assert sum("status query failed" in m for m in messages) == 2

    fake = FakeCluster([lambda f: error] * 10)
    with pytest.raises(SlurmError, match="3 status queries in a row failed.*re-attach"):
        fake_executor(layout, fake, max_query_failures=3).run(
            BatchPaths(layout.batch_dir(8)), CHUNKS, lambda *a: None)


def test_a_job_nobody_knows_is_lost_after_a_while(layout: Layout, paths: BatchPaths) -> None:
    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states(f.job(), c0="COMPLETED", c1="COMPLETED")

    fake = FakeCluster([lambda f: {}] * 4 + [finish])
    fake_executor(layout, fake, lost_after=25).run(paths, CHUNKS, lambda *a: None)
    assert len(fake.submissions) == 2
    assert {e["state"] for e in logged(layout, "slurm_chunk_failed")} == {"LOST"}


def test_restart_reattaches_instead_of_submitting(layout: Layout, paths: BatchPaths) -> None:
    fake = FakeCluster([])
    events.log_event(layout.events, "slurm_submitted", batch="0007", chunks=[0, 1], job_id="77", walltime=80)
    events.log_event(layout.events, "slurm_submitted", batch="0008", chunks=[0, 1], job_id="78", walltime=80)

    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states("77", c0="COMPLETED", c1="COMPLETED")

    fake.steps = [lambda f: states("77", c0="RUNNING", c1="PENDING"), finish]
    fake_executor(layout, fake).run(paths, CHUNKS, lambda *a: None)
    assert fake.submissions == [] and fake.queries == [{"77"}, {"77"}]
    assert logged(layout, "slurm_reattached")[0]["job_ids"] == ["77"]
    assert latest_submissions(layout.events, "0007")[1]["job_id"] == "77"


def test_restart_resubmits_what_ended_badly(layout: Layout, paths: BatchPaths) -> None:
    events.log_event(layout.events, "slurm_submitted", batch="0007", chunks=[0, 1], job_id="77", walltime=80)

    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states(f.job(), c0="COMPLETED", c1="COMPLETED")

    fake = FakeCluster([lambda f: states("77", c0="TIMEOUT", c1="FAILED"), finish])
    fake_executor(layout, fake).run(paths, CHUNKS, lambda *a: None)
    assert [(s["indices"], s["time"]) for s in fake.submissions] == [([0, 1], 120)]


def test_a_chunk_can_have_its_own_retry_limit(layout: Layout, paths: BatchPaths) -> None:
    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 1)
        return states(f.job(), c1="COMPLETED")

    fake = FakeCluster([lambda f: states(f.job(), c0="OUT_OF_MEMORY", c1="FAILED"), finish])
    chunks = [ChunkRun(0, 10, 2, max_retries=0), ChunkRun(1, 20, 3)]
    outcomes = fake_executor(layout, fake, max_retries=2).run(paths, chunks, lambda *a: None)
    assert [s["indices"] for s in fake.submissions] == [[0, 1], [1]]
    assert (outcomes[0].done, outcomes[0].state, outcomes[0].attempts) == (False, "OUT_OF_MEMORY", 1)
    assert (outcomes[1].done, outcomes[1].attempts) == (True, 2)


def test_restart_counts_the_attempts_of_earlier_runs(layout: Layout, paths: BatchPaths) -> None:
    # An earlier run saw chunk 0's first job fail and resubmitted it as job 78 with chunk 1; it was
    # killed; both ended badly while nobody watched.
    events.log_event(layout.events, "slurm_submitted", batch="0007", chunks=[0, 1], job_id="77", walltime=80)
    events.log_event(layout.events, "slurm_chunk_failed", batch="0007", chunk=0, job_id="77", state="FAILED",
                       exit_code="1:0", attempt=1)
    events.log_event(layout.events, "slurm_submitted", batch="0007", chunks=[0, 1], job_id="78", walltime=80)
    fake = FakeCluster([lambda f: states("78", c0="FAILED", c1="FAILED"),
                                     lambda f: states(f.job(), c1="FAILED")])
    outcomes = fake_executor(layout, fake, max_retries=1).run(paths, CHUNKS, lambda *a: None)
    # Chunk 0 has had its two attempts; chunk 1 gets its second one, and fails again.
    assert [s["indices"] for s in fake.submissions] == [[1]]
    assert [(o.done, o.attempts, o.state) for o in outcomes.values()] == [(False, 2, "FAILED"), (False, 2, "FAILED")]
    failed = logged(layout, "slurm_chunk_failed")
    assert [(e["chunk"], e["job_id"], e["attempt"]) for e in failed] == [
        (0, "77", 1), (0, "78", 2), (1, "78", 1), (1, "100", 2)]

    # A third run asks SLURM nothing: every chunk is decided.
    fake = FakeCluster([])
    outcomes = fake_executor(layout, fake, max_retries=1).run(paths, CHUNKS, lambda *a: None)
    assert fake.submissions == [] and fake.queries == []
    assert "chunk 1: job 100_1 ended FAILED (exit code 5:0) after 2 attempts" in outcomes[1].message

    # After a reset (the cause was fixed) the chunks start afresh; the failure of job 100 is not counted twice.
    events.log_event(layout.events, "chunk_attempts_reset", batch="0007", chunks=[0, 1])

    def finish(f: FakeCluster) -> dict[str, JobState]:
        write_marker(paths, 0)
        write_marker(paths, 1)
        return states(f.job(), c0="COMPLETED", c1="COMPLETED")

    fake = FakeCluster([lambda f: {**states("78", c0="FAILED"), **states("100", c1="FAILED")},
                                     finish])
    outcomes = fake_executor(layout, fake, max_retries=1).run(paths, CHUNKS, lambda *a: None)
    assert [s["indices"] for s in fake.submissions] == [[0, 1]]
    assert all(o.done and o.attempts == 1 for o in outcomes.values())


# --- the real cluster -------------------------------------------------------------------------

# The commands of the dev cluster.
slurm = SlurmClient()


@pytest.mark.slurm
def test_walltime_is_capped_by_the_partition(cluster: None) -> None:
    model = WalltimeModel(300, 6, 0.2)
    assert capped(model, slurm.partition_max_time("short")).seconds(1000) == 60  # MaxTime=00:01:00
    # (300 + 5400) * 1.2, under the default partition's 2 h
    assert capped(model, slurm.partition_max_time()).seconds(900) == 6840
    assert capped(model, slurm.partition_max_time()).seconds(2000) == 7200


JOB = """#!/bin/bash
# Test chunk job: $1 = batch dir; '--chunk N' follows. plan_NNN lists one mode per attempt.
dir=$1 chunk=$3
n=$(printf %03d "$chunk")
echo run >> "$dir/attempts_$n"
attempt=$(wc -l < "$dir/attempts_$n")
read -r -a modes < "$dir/plan_$n"
mode=${modes[$((attempt - 1))]:-${modes[-1]}}
echo "chunk $chunk attempt $attempt: $mode"
marker() {
    mkdir -p "$dir/results/done"
    echo '{"chunk": '"$chunk"', "missing": []}' > "$dir/results/done/.chunk_$n.tmp"
    mv "$dir/results/done/.chunk_$n.tmp" "$dir/results/done/chunk_$n.done"
}
case $mode in
    ok) marker ;;
    slow) sleep 6; marker ;;
    fail) exit 1 ;;
    nomarker) exit 0 ;;
    hang) sleep 600 ;;
    cancel) scancel "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"; sleep 60 ;;
esac
"""


@pytest.fixture
def job_command(tmp_path: Path, paths: BatchPaths) -> list[str]:
    script = tmp_path / "fake_chunk_job.sh"
    script.write_text(JOB)
    return ["bash", str(script), str(paths.dir)]


def plan(paths: BatchPaths, **modes: str) -> list[ChunkRun]:
    for name, mode in modes.items():
        (paths.dir / f"plan_{int(name.lstrip('c')):03d}").write_text(mode + "\n")
    return [ChunkRun(int(name.lstrip("c")), 5, 1) for name in modes]


def real_executor(layout: Layout, command: list[str], **options: Any) -> SlurmExecutor:
    settings: dict[str, Any] = dict(walltime=WalltimeModel(120, 1, 0), poll_initial=1, poll_max=3,
                                    cpus_per_task=1, mem="100M")
    return SlurmExecutor(layout, command, **{**settings, **options})


@pytest.mark.slurm
def test_real_failures_are_retried_then_reported(cluster: None, layout: Layout, paths: BatchPaths,
                                                 job_command: list[str]) -> None:
    # One array for every way a job can end badly; the TIMEOUT runs on one CPU while the rest cycle.
    chunks = plan(paths, c0="ok", c1="fail ok", c2="fail", c3="nomarker", c4="cancel", c5="hang fail")
    outcomes = real_executor(layout, job_command, max_retries=1, walltime=WalltimeModel(40, 0, 0)).run(
        paths, chunks, lambda *a: None)
    first, *again = logged(layout, "slurm_submitted")
    assert first["chunks"] == [0, 1, 2, 3, 4, 5] and first["walltime"] == 40
    assert sorted(c for e in again for c in e["chunks"]) == [1, 2, 3, 4, 5]
    last_job = {c: e["job_id"] for e in again for c in e["chunks"]}
    # After the TIMEOUT the chunk asks for 1.5 times the walltime; the others keep theirs.
    assert {c: e["walltime"] for e in again for c in e["chunks"]} == {1: 40, 2: 40, 3: 40, 4: 40, 5: 60}
    failed = logged(layout, "slurm_chunk_failed")
    assert {c: [e["state"] for e in failed if e["chunk"] == c] for c in range(1, 6)} == {
        1: ["FAILED"], 2: ["FAILED", "FAILED"], 3: ["COMPLETED", "COMPLETED"], 4: ["CANCELLED", "CANCELLED"],
        5: ["TIMEOUT", "FAILED"]}
    assert [outcomes[i].done for i in range(6)] == [True, True, False, False, False, False]
    for chunk, ending in ((2, "FAILED (exit code 1:0"), (3, "COMPLETED without writing its done marker"),
                          (4, "CANCELLED"), (5, "FAILED (exit code 1:0")):
        message = outcomes[chunk].message
        assert f"batch 0007 chunk {chunk}: job {last_job[chunk]}_{chunk} ended {ending}" in message, message
        assert f"after 2 attempts; log: {paths.chunk_log(chunk)}" in message
        assert (outcomes[chunk].attempts, outcomes[chunk].log) == (2, str(paths.chunk_log(chunk)))
    assert [outcomes[i].state for i in range(2, 6)] == ["FAILED", "COMPLETED", "CANCELLED", "FAILED"]
    assert [paths.done_marker(i).exists() for i in range(6)] == [True, True, False, False, False, False]
    # Both attempts of a chunk are in its log.
    assert [line for line in paths.chunk_log(5).read_text().splitlines() if "attempt" in line] == [
        "chunk 5 attempt 1: hang", "chunk 5 attempt 2: fail"]
    ends = [m for m in events.read(layout.metrics) if "state" in m]
    assert {(m["chunk"], m["state"]) for m in ends} >= {(0, "COMPLETED"), (1, "COMPLETED"), (5, "TIMEOUT")}
    assert all(m["elapsed"] is not None and m["start"] and m["end"] for m in ends)


@pytest.mark.slurm
def test_real_restart_reattaches(cluster: None, layout: Layout, paths: BatchPaths, job_command: list[str]) -> None:
    chunks = plan(paths, c0="slow", c1="slow")

    class Killed(Exception):
        pass

    def die(seconds: float) -> None:
        raise Killed

    with pytest.raises(Killed):
        real_executor(layout, job_command, sleep=die).run(paths, chunks, lambda *a: None)
    real_executor(layout, job_command).run(paths, chunks, lambda *a: None)
    assert len(logged(layout, "slurm_submitted")) == 1
    assert logged(layout, "slurm_reattached")[0]["chunks"] == [0, 1]
    assert all(paths.done_marker(c.index).exists() for c in chunks)
    assert [(paths.dir / f"attempts_{i:03d}").read_text() for i in (0, 1)] == ["run\n", "run\n"]


@pytest.mark.slurm
def test_real_sigterm_cancels_when_asked(cluster: None, layout: Layout, paths: BatchPaths,
                                         job_command: list[str]) -> None:
    plan(paths, c0="hang", c1="hang")
    program = f"""
import sys
from pathlib import Path
from pipeline.executors.base import ChunkRun
from pipeline.layout import BatchPaths, Layout
from pipeline.executors.walltime import WalltimeModel
from pipeline.executors.slurm.executor import SlurmExecutor
executor = SlurmExecutor(Layout(Path({str(layout.base)!r}), 2), {job_command!r}, walltime=WalltimeModel(120, 0, 0),
                         poll_initial=1, poll_max=2, cancel_on_exit=True)
executor.run(BatchPaths(Path({str(paths.dir)!r})), [ChunkRun(0, 1, 1), ChunkRun(1, 1, 1)], lambda *a: None)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", program], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not logged(layout, "slurm_submitted"):
            assert time.monotonic() < deadline and child.poll() is None, "the executor did not submit"
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
    job = logged(layout, "slurm_submitted")[0]["job_id"]
    [cancelled] = logged(layout, "slurm_cancelled")
    assert cancelled["job_ids"] == [job] and cancelled["error"] is None
    deadline = time.monotonic() + 60
    while {s.state for s in slurm.query([job]).values()} != {"CANCELLED"}:
        assert time.monotonic() < deadline, slurm.query([job])
        time.sleep(1)


@pytest.mark.slurm
def test_real_finalize_through_luigi_on_slurm(cluster: None, make_site, tmp_path: Path) -> None:
    from pipeline import samples

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    texts = {"alpha": ["Alpha first page", "Alpha second page"], "gamma": [f"Gamma {n}" for n in range(1, 25)]}
    for name, pages in texts.items():
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf(pages))
    site = make_site(source=incoming, engine="text", ocr__executor="slurm", slurm__poll_initial_seconds=1,
                     slurm__poll_max_seconds=2, slurm__mem="200M", slurm__walltime_base_seconds=120)
    site.luigi("Download", "--run-id", "first")
    site.luigi("CreateBatch", "--batch", "3")
    site.luigi("Finalize", "--batch", "3")
    for identifier, pages in texts.items():
        record = json.loads(site.layout.processed_ocr(identifier).read_text())
        assert all(page in record["text"] for page in pages)
    [submitted] = logged(site.layout, "slurm_submitted")
    assert submitted["batch"] == "0003" and submitted["chunks"] == [0, 1]
    # gamma (24 pages) has chunk 0 to itself: (120 + 6 * 24) * 1.2 = 316.8; alpha's is (120 + 6 * 2) * 1.2.
    plan = json.loads(BatchPaths(site.layout.batch_dir(3)).chunk_plan.read_text())["chunks"]
    assert [c["walltime_seconds"] for c in plan] == [317, 159] and submitted["walltime"] == 317
    # The executor records a job's end when sacct shows it in time; MetricsSummary reads back the rest.
    site.luigi("MetricsSummary")
    ends = [m for m in events.read(site.layout.metrics) if m.get("executor") == "slurm" and "state" in m]
    assert sorted((m["chunk"], m["state"]) for m in ends) == [(0, "COMPLETED"), (1, "COMPLETED")]
    summary = json.loads((site.layout.manifests / "metrics_summary.json").read_text())
    assert (summary["chunks_done"], summary["pages_done"]) == (2, 26)
