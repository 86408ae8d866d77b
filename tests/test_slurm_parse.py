"""pipeline.executors.slurm.parse on output captured from the real cluster (tests/fixtures/slurm).

tests/fixtures/slurm/capture.py re-captures the fixtures from the dev cluster.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.executors.slurm import parse as slurm
from pipeline.executors.slurm.parse import JobState, SlurmError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slurm"
JOBS = json.loads((FIXTURES / "jobs.json").read_text())


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


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
    with pytest.raises(SlurmError, match="unexpected job id"):
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
    with pytest.raises(SlurmError, match="unexpected sacct line"):
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


