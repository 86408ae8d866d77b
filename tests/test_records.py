"""pipeline.executors.records: the metrics records both executors write, and how they are read back."""
from __future__ import annotations

from pathlib import Path

from pipeline import events
from pipeline.executors import records

from .test_metrics import TIMES, end, recorded


def test_attempts_join_submit_and_end_records() -> None:
    runs = records.attempts(recorded())
    assert len(runs) == 8
    first = next(r for r in runs if r.chunk == 0)
    assert (first.walltime_requested, first.state, first.elapsed, first.submitted_at) == (
        600, "COMPLETED", 241, "2026-01-01T22:59:00+00:00")
    assert [(r.chunk, r.job_id) for r in records.unmeasured(runs)] == [(5, "12")]
    # Measuring a job twice (a rerun read its end again) is still one attempt.
    again = records.attempts(recorded() + [end(0, 100, "11", "COMPLETED", 241, *TIMES[0])])
    assert len(again) == 8


def test_a_local_attempt_completed_only_with_exit_0_and_its_done_marker(tmp_path: Path) -> None:
    log = tmp_path / "metrics.ndjson"
    events.append(log, [
        records.local_record("0003", 0, 12, 0, True, 8.25, "2026-01-01T10:00:00+00:00"),
        records.local_record("0003", 1, 30, 0, False, 1.0, "2026-01-01T10:00:01+00:00"),  # no marker
        records.local_record("0003", 1, 30, -6, False, 0.5, "2026-01-01T10:00:02+00:00"),  # killed
    ])
    runs = records.attempts(events.read(log))
    assert [(r.chunk, r.executor, r.state, r.exit_code, r.completed) for r in runs] == [
        (0, "local", "COMPLETED", "0", True), (1, "local", "FAILED", "0", False), (1, "local", "FAILED", "-6", False)]
    assert [r.chunk for r in records.completed_chunks(runs)] == [0]
    assert records.unmeasured(runs) == []  # a local attempt's one record is its end


def test_submission_and_end_of_one_job_make_one_attempt() -> None:
    submitted = records.submission_record("0003", 2, 40, "55", 600, 1, "2026-01-01T09:00:00+00:00")
    runs = records.attempts([submitted])
    assert [(r.job_id, r.walltime_requested, r.state) for r in runs] == [("55", 600, None)]
    assert records.unmeasured(runs) == runs
    ended = records.end_record("0003", 2, 40, "55", "TIMEOUT", "0:15", 720, "2026-01-01T09:01:00",
                               "2026-01-01T09:13:00")
    [run] = records.attempts([submitted, ended])
    assert (run.state, run.exit_code, run.elapsed, run.walltime_requested, run.completed) == (
        "TIMEOUT", "0:15", 720, 600, False)
