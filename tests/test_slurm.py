"""pipeline.executors.slurm.client: parsers on output captured from the real cluster, then the client against it.

The tests marked ``slurm`` need the dev cluster (``slurm/dev-cluster.sh start``, as root); they
fail, never skip, when it is not up. tests/fixtures/slurm/capture.py re-captures the fixtures.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.executors.slurm import client as slurm
from pipeline.executors.slurm.client import Backoff, JobState, PollInterval

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slurm"
JOBS = json.loads((FIXTURES / "jobs.json").read_text())


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- states -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("COMPLETED", "completed"),
    ("FAILED", "failed"), ("TIMEOUT", "failed"), ("OUT_OF_MEMORY", "failed"), ("NODE_FAIL", "failed"),
    ("CANCELLED", "failed"), ("CANCELLED by 0", "failed"), ("CANCELLED+", "failed"),
    ("BOOT_FAIL", "failed"), ("DEADLINE", "failed"),
    ("PENDING", "waiting"), ("RUNNING", "waiting"), ("REQUEUED", "waiting"), ("PREEMPTED", "waiting"),
    ("CONFIGURING", "waiting"), ("COMPLETING", "waiting"), ("SUSPENDED", "waiting"), ("RESIZING", "waiting"),
    # A state this client does not know never fails a chunk on its own.
    ("SPECIAL_EXIT", "waiting"), ("", "waiting"),
])
def test_outcome_of_states(raw: str, expected: str) -> None:
    assert slurm.outcome(raw) == expected


def test_base_state_drops_who_cancelled() -> None:
    assert slurm.base_state("CANCELLED by 1234") == "CANCELLED"
    assert slurm.is_failed("CANCELLED by 0") and not slurm.is_waiting("CANCELLED by 0")
    assert slurm.is_completed("COMPLETED") and slurm.is_waiting("PREEMPTED")


# --- ids, ranges, durations -------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("123_4", [("123", 4)]),
    ("123", [("123", None)]),
    ("123_[5-9]", [("123", i) for i in range(5, 10)]),
    ("123_[5-9%2]", [("123", i) for i in range(5, 10)]),
    ("123_[1,3,5-7]", [("123", 1), ("123", 3), ("123", 5), ("123", 6), ("123", 7)]),
    ("123_[0-8:4%1]", [("123", 0), ("123", 4), ("123", 8)]),
])
def test_parse_job_id(text: str, expected: list) -> None:
    assert slurm.parse_job_id(text) == expected


def test_parse_job_id_rejects_the_unknown() -> None:
    with pytest.raises(slurm.SlurmError, match="unexpected job id"):
        slurm.parse_job_id("123.batch")


@pytest.mark.parametrize("indices, spec", [
    ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([3], "3"), ([9, 1, 2, 2], "1-2,9"), ([], ""),
])
def test_compress_indices_round_trips(indices: list[int], spec: str) -> None:
    assert slurm.compress_indices(indices) == spec
    assert slurm.expand_indices(spec) == sorted(set(indices))


@pytest.mark.parametrize("text, seconds", [
    ("0:02", 2), ("1:12", 72), ("02:00:00", 7200), ("00:01:00", 60), ("1-00:00:00", 86400),
    ("2-03", 2 * 86400 + 3 * 3600), ("1-01:30", 86400 + 5400), ("30", 1800),
    ("UNLIMITED", None), ("INFINITE", None), ("", None), ("N/A", None),
])
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert slurm.parse_duration(text) == seconds


# --- sacct ------------------------------------------------------------------------------------

def test_sacct_final_states() -> None:
    states = slurm.parse_sacct(fixture("sacct_final.txt"))
    completed, failed, timeout, throttled, plain = (JOBS[k] for k in
                                                    ("completed", "failed", "timeout", "throttled", "plain"))
    for task in range(3):
        state = states[f"{completed}_{task}"]
        assert (state.state, state.exit_code, state.outcome) == ("COMPLETED", "0:0", "completed")
        assert state.elapsed_seconds is not None and state.start and state.end
    assert sorted(k for k in states if k.startswith(f"{failed}_")) == [f"{failed}_{i}" for i in (1, 3, 5, 6, 7)]
    assert {states[f"{failed}_{i}"].exit_code for i in (1, 3, 5, 6, 7)} == {"3:0"}
    assert states[f"{failed}_1"].outcome == "failed"
    timed_out = states[f"{timeout}_0"]
    assert timed_out.state == "TIMEOUT" and timed_out.elapsed_seconds >= 60
    assert states[f"{throttled}_0"].state == "CANCELLED" and states[f"{throttled}_0"].start
    # The never-started tasks come as one cancelled range '17_[1-9%1]'.
    for task in range(1, 10):
        assert states[f"{throttled}_{task}"] == JobState(
            throttled, task, "CANCELLED", exit_code="0:0", elapsed_seconds=0, start=None,
            end=states[f"{throttled}_{task}"].end, reason=None)
    assert states[plain] == JobState(plain, None, "COMPLETED", "0:0", 2, states[plain].start,
                                     states[plain].end, None)
    assert states[plain].key == plain


def test_sacct_while_running_expands_pending_ranges() -> None:
    states = slurm.parse_sacct(fixture("sacct_running.txt"))
    throttled = JOBS["throttled"]
    assert [states[f"{throttled}_{i}"].state for i in range(10)] == ["PENDING"] * 10
    assert states[f"{JOBS['failed']}_5"].state == "PENDING"
    assert states[f"{JOBS['timeout']}_0"].state == "RUNNING"
    assert states[f"{JOBS['completed']}_0"].state == "COMPLETED"
    assert states[JOBS["plain"]].state == "PENDING"


def test_a_task_line_beats_a_stale_pending_range() -> None:
    # Captured: sacct still listed 6_0 inside the pending range after 6_0 had started.
    text = ("6_0|RUNNING|0:0|5|2026-11-23T15:52:56|Unknown|None\n"
            "6_[0-9%2]|PENDING|0:0|0|Unknown|Unknown|None\n")
    states = slurm.parse_sacct(text)
    assert states["6_0"].state == "RUNNING" and states["6_0"].start == "2026-11-23T15:52:56"
    assert states["6_9"].state == "PENDING" and len(states) == 10


def test_sacct_rejects_lines_of_another_format() -> None:
    with pytest.raises(slurm.SlurmError, match="unexpected sacct line"):
        slurm.parse_sacct("1_0|COMPLETED|0:0\n")


# --- squeue / scontrol ------------------------------------------------------------------------

def test_squeue_running() -> None:
    states = slurm.parse_squeue(fixture("squeue_running.txt"))
    throttled, failed, timeout = JOBS["throttled"], JOBS["failed"], JOBS["timeout"]
    assert {states[f"{throttled}_{i}"].state for i in range(10)} == {"PENDING"}
    assert [k for k in states if k.startswith(f"{failed}_")] == [f"{failed}_{i}" for i in (1, 3, 5, 6, 7)]
    running = states[f"{timeout}_0"]
    # squeue's end time of a running job is a forecast, not an end.
    assert running.state == "RUNNING" and running.start and running.end is None
    assert states[f"{throttled}_3"].reason == "Priority" and states[f"{throttled}_3"].start is None


def test_squeue_final_has_states_but_no_exit_codes() -> None:
    states = slurm.parse_squeue(fixture("squeue_final.txt"))
    timed_out = states[f"{JOBS['timeout']}_0"]
    assert (timed_out.state, timed_out.reason, timed_out.elapsed_seconds) == ("TIMEOUT", "TimeLimit", 72)
    assert timed_out.exit_code is None and timed_out.end
    assert states[f"{JOBS['failed']}_7"].reason == "NonZeroExitCode"
    assert {states[f"{JOBS['throttled']}_{i}"].state for i in range(10)} == {"CANCELLED"}


def test_scontrol_jobs() -> None:
    failed = slurm.parse_scontrol_jobs(fixture("scontrol_job_failed.txt"))
    job = JOBS["failed"]
    assert sorted(failed) == sorted(f"{job}_{i}" for i in (1, 3, 5, 6, 7))
    assert {s.exit_code for s in failed.values()} == {"3:0"}
    assert {s.reason for s in failed.values()} == {"NonZeroExitCode"}
    pending = slurm.parse_scontrol_jobs(fixture("scontrol_job_throttled.txt"))
    assert sorted(pending, key=lambda k: int(k.split("_")[1])) == [f"{JOBS['throttled']}_{i}" for i in range(10)]
    assert {s.state for s in pending.values()} == {"PENDING"}


def test_scontrol_config_and_partitions() -> None:
    config = slurm.parse_config(fixture("scontrol_config.txt"))
    assert config["MaxArraySize"] == "1001"
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
    for name in ("scontrol_partition.txt", "scontrol_partition_oneliner.txt"):
        partitions = slurm.parse_partitions(fixture(name))
        assert set(partitions) == {"debug", "short"}
        assert slurm.parse_duration(partitions["debug"]["MaxTime"]) == 7200
        assert partitions["debug"]["Default"] == "YES"
        assert slurm.parse_duration(partitions["short"]["MaxTime"]) == 60


def test_accounting_disabled_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    message = fixture("sacct_accounting_disabled.stderr").strip()
    calls: list[str] = []

    def fake_run(command: str, args: list[str]) -> str:
        calls.append(command)
        if command == "sacct":
            raise slurm.AccountingDisabled(message)
        if command == "squeue":
            return fixture("squeue_final.txt")
        return fixture("scontrol_job_failed.txt") if args[-1] == JOBS["failed"] else ""

    monkeypatch.setattr(slurm, "_run", fake_run)
    states = slurm.query([JOBS["failed"], JOBS["completed"]])
    assert states[f"{JOBS['failed']}_3"].exit_code == "3:0"
    assert states[f"{JOBS['completed']}_1"].state == "COMPLETED"
    # One squeue for all jobs; scontrol only for jobs with finished tasks, once each.
    assert calls.count("sacct") == 1 and calls.count("squeue") == 1
    assert calls.count("scontrol") == len({s.job_id for s in states.values()})


# --- polling helpers --------------------------------------------------------------------------

def test_poll_interval_grows_while_quiet_and_resets_on_change() -> None:
    poll = PollInterval(initial=10, maximum=40, growth=1.5)
    assert poll.current == 10
    assert [poll.next(changed=False) for _ in range(5)] == [15, 22.5, 33.75, 40, 40]
    assert poll.next(changed=True) == 10
    assert poll.next(changed=False) == 15


def test_backoff() -> None:
    backoff = Backoff(base=5, factor=2, maximum=60)
    assert [backoff.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_job_name() -> None:
    assert slurm.job_name("0007") == "ocr-0007"


# --- the real cluster -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> None:
    """Fails (not skips) with what to do when the dev cluster does not answer."""
    try:
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"SLURM is not installed or not answering ({exc}); run `slurm/dev-cluster.sh start` as "
                    "root before pytest")
    if nodes.returncode or not nodes.stdout.strip() or accounting.returncode:
        pytest.fail("the dev SLURM cluster is not up: run `slurm/dev-cluster.sh start` as root before pytest\n"
                    f"sinfo: {nodes.stdout}{nodes.stderr}\nsacct: {accounting.stderr}")
    slurm.cluster_config.cache_clear()
    slurm.partitions.cache_clear()


def wait_for(job_ids: list[str], keys: list[str], done, timeout: float = 120) -> dict[str, JobState]:
    deadline = time.monotonic() + timeout
    while True:
        states = slurm.query(job_ids)
        if all(k in states and done(states[k]) for k in keys):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs {job_ids} not there after {timeout} s: {states}")
        time.sleep(1)


def finished(state: JobState) -> bool:
    return state.outcome != "waiting"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\n"
                    'echo "task $SLURM_ARRAY_TASK_ID"\n'
                    'if [ "$SLURM_ARRAY_TASK_ID" = 2 ]; then exit 4; fi\n'
                    'sleep "${SLEEP:-0}"\n')
    return path


@pytest.mark.slurm
def test_cluster_limits(cluster: None) -> None:
    assert slurm.max_array_size() >= 1001
    assert slurm.partition_max_time() == 7200
    assert slurm.partition_max_time("short") == 60
    with pytest.raises(slurm.SlurmError, match="does not exist"):
        slurm.partition_max_time("nope")


@pytest.mark.slurm
def test_submit_query_array(cluster: None, script: Path, tmp_path: Path) -> None:
    job = slurm.submit(script, job_name=slurm.job_name("9999"), array_indices=[0, 2, 3], throttle=2,
                       comment="batch 9999", partition="debug", cpus=1, mem="100M", time=120,
                       output=str(tmp_path / "chunk_%a.log"), chdir=tmp_path, extra_args=["--export=ALL"])
    assert job.isdigit()
    keys = [f"{job}_{i}" for i in (0, 2, 3)]
    states = wait_for([job], keys, finished)
    assert set(states) == set(keys)
    assert states[f"{job}_0"].state == "COMPLETED" and states[f"{job}_0"].exit_code == "0:0"
    assert (states[f"{job}_2"].state, states[f"{job}_2"].exit_code) == ("FAILED", "4:0")
    assert (tmp_path / "chunk_3.log").read_text() == "task 3\n"
    # The controller's view (the fallback when accounting is off) agrees.
    controller = slurm.query_controller([job])
    assert {k: (s.state, s.exit_code) for k, s in controller.items()} == {
        k: (s.state, s.exit_code) for k, s in states.items()}


@pytest.mark.slurm
def test_query_without_accounting(cluster: None, script: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = slurm.submit(script, job_name="ocr-test", array_indices=[1, 2], output=str(tmp_path / "%a.log"))
    wait_for([job], [f"{job}_1", f"{job}_2"], finished)
    conf = tmp_path / "slurm.conf"
    conf.write_text(Path("/etc/slurm/slurm.conf").read_text()
                    .replace("accounting_storage/slurmdbd", "accounting_storage/none"))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    states = slurm.query([job])
    assert (states[f"{job}_1"].state, states[f"{job}_2"].state) == ("COMPLETED", "FAILED")
    assert states[f"{job}_2"].exit_code == "4:0"


@pytest.mark.slurm
def test_cancel(cluster: None, script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEP", "300")
    job = slurm.submit(script, job_name="ocr-test", array_indices=list(range(5)), throttle=1,
                       output=str(tmp_path / "%a.log"))
    wait_for([job], [f"{job}_0"], lambda s: s.state == "RUNNING")
    slurm.cancel([job])
    states = wait_for([job], [f"{job}_{i}" for i in range(5)], finished)
    assert {s.state for s in states.values()} == {"CANCELLED"}
    slurm.cancel([job])  # cancelling a finished job is no error


@pytest.mark.slurm
def test_failures_raise_slurm_errors(cluster: None, tmp_path: Path) -> None:
    with pytest.raises(slurm.SlurmError, match="sbatch"):
        slurm.submit(tmp_path / "missing.sh", job_name="ocr-test", array_indices=[0])
    with pytest.raises(ValueError, match="MaxArraySize"):
        slurm.submit(tmp_path / "missing.sh", job_name="ocr-test", array_indices=[slurm.max_array_size()])
    assert slurm.query([]) == {}
    assert slurm.query_controller(["999999"]) == {}
    assert slurm.query(["999999"]) == {}
