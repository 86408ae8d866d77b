"""Parsers of what sbatch, sacct, squeue and scontrol print, in the formats the client asks for.

Pure functions of text; tests/fixtures/slurm holds output captured from a real cluster. Output that
does not read as expected raises SlurmError: it says nothing about the jobs.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.executors.slurm.states import base_state, outcome

SACCT_FIELDS = ("JobID", "State", "ExitCode", "ElapsedRaw", "Start", "End", "Reason")
# Free text (the reason) goes last, so a "|" in it cannot shift the other fields.
SQUEUE_FORMAT = "%i|%T|%M|%S|%e|%r"
_SQUEUE_FIELDS = SQUEUE_FORMAT.count("|") + 1

_ARRAY_ID = re.compile(r"^(\d+)_(\d+)$")
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]*)\]$")
_PLAIN_ID = re.compile(r"^(\d+)$")
_KEY_VALUE = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)")


class SlurmError(RuntimeError):
    """A SLURM command failed or answered something unreadable; the jobs themselves may be fine."""


@dataclass(frozen=True)
class JobState:
    """One array task (or plain job) as SLURM reports it."""

    job_id: str                 # the id sbatch returned (the array's job id)
    array_task: int | None      # the array index; None for a plain job
    state: str                  # base state: 'CANCELLED by 0' -> 'CANCELLED'
    exit_code: str | None = None  # SLURM's 'code:signal', e.g. '3:0'; None when not known
    elapsed_seconds: int | None = None
    start: str | None = None    # ISO time, None while unknown
    end: str | None = None
    reason: str | None = None   # why pending, or why it ended (squeue/scontrol), None when 'None'

    @property
    def key(self) -> str:
        return task_key(self.job_id, self.array_task)

    @property
    def outcome(self) -> str:
        return outcome(self.state)


def task_key(job_id: str, array_task: int | None) -> str:
    """'123_4' for an array task, '123' for a plain job: the keys of query()'s answer."""
    return f"{job_id}_{array_task}" if array_task is not None else str(job_id)


def parse_duration(text: str) -> int | None:
    """Seconds of SLURM's time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for UNLIMITED etc."""
    text = text.strip()
    days = 0
    if "-" in text:
        day_part, text = text.split("-", 1)
        if not day_part.isdigit():
            return None
        days = int(day_part)
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    numbers = [int(p) for p in parts]
    if days:
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 1:
        hours, minutes, seconds = 0, numbers[0], 0
    elif len(numbers) == 2:
        hours, minutes, seconds = 0, numbers[0], numbers[1]
    else:
        hours, minutes, seconds = numbers
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def expand_indices(spec: str) -> list[int]:
    """'5-9%2' -> [5..9]; '1,3,5-7' -> [1, 3, 5, 6, 7]; '0-8:4' -> [0, 4, 8]. '%N' is the throttle."""
    spec = spec.split("%", 1)[0]
    indices: list[int] = []
    for part in filter(None, spec.split(",")):
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        first, _, last = part.partition("-")
        indices.extend(range(int(first), int(last or first) + 1, step))
    return indices


def compress_indices(indices: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8': sbatch's --array spec."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive indices
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def parse_job_id(text: str) -> list[tuple[str, int | None]]:
    """sacct/squeue job ids -> [(job id, array index)]: '123_4', '123_[5-9%2]', '123_[1,3]', '123'."""
    text = text.strip()
    if m := _ARRAY_ID.match(text):
        return [(m.group(1), int(m.group(2)))]
    if m := _ARRAY_RANGE.match(text):
        return [(m.group(1), i) for i in expand_indices(m.group(2))]
    if m := _PLAIN_ID.match(text):
        return [(m.group(1), None)]
    raise SlurmError(f"unexpected job id {text!r} in SLURM output")


def _value(text: str) -> str | None:
    text = text.strip()
    return None if text in {"", "None", "Unknown", "N/A", "NONE", "(null)"} else text


def _combine(records: Iterable[tuple[JobState, bool]]) -> dict[str, JobState]:
    """{task key: JobState} from (record, came from a range) pairs.

    A task's own line beats a pending range that still lists it: sacct updates ranges late.
    """
    found: dict[str, JobState] = {}
    from_ranges: list[JobState] = []
    for record, from_range in records:
        if from_range:
            from_ranges.append(record)
        else:
            found[record.key] = record
    for record in from_ranges:
        found.setdefault(record.key, record)
    return found


def parse_sacct(text: str) -> dict[str, JobState]:
    """Output of ``sacct --parsable2 --noheader --format=<SACCT_FIELDS>`` -> {task key: JobState}."""
    return _combine(_sacct_records(text))


def _sacct_records(text: str) -> Iterator[tuple[JobState, bool]]:
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", len(SACCT_FIELDS) - 1)
        if len(fields) != len(SACCT_FIELDS):
            raise SlurmError(f"unexpected sacct line {line!r}: expected {len(SACCT_FIELDS)} fields")
        job, raw_state, exit_code, elapsed, start, end, reason = fields
        state = base_state(raw_state)
        for job_id, task in parse_job_id(job):
            yield JobState(
                job_id, task, state,
                exit_code=_value(exit_code),
                elapsed_seconds=int(elapsed) if elapsed.isdigit() else None,
                start=_value(start), end=_value(end), reason=_value(reason),
            ), "[" in job


def parse_squeue(text: str) -> dict[str, JobState]:
    """Output of ``squeue --noheader --format=<SQUEUE_FORMAT>`` -> {task key: JobState}.

    squeue knows no exit codes; it shows start/end times of pending and running jobs as forecasts,
    which are dropped here.
    """
    return _combine(_squeue_records(text))


def _squeue_records(text: str) -> Iterator[tuple[JobState, bool]]:
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", _SQUEUE_FIELDS - 1)
        if len(fields) != _SQUEUE_FIELDS:
            raise SlurmError(f"unexpected squeue line {line!r}")
        job, raw_state, used, start, end, reason = (f.strip() for f in fields)
        state = base_state(raw_state)
        finished = outcome(state) != "waiting"
        for job_id, task in parse_job_id(job):
            yield JobState(
                job_id, task, state,
                elapsed_seconds=parse_duration(used),
                start=_value(start) if state != "PENDING" else None,
                end=_value(end) if finished else None,
                reason=_value(reason),
            ), "[" in job


def parse_key_values(text: str) -> dict[str, str]:
    """``Key=Value`` pairs of one scontrol record (values with spaces keep their first word)."""
    return {m.group(1): m.group(2) for m in _KEY_VALUE.finditer(text)}


def parse_scontrol_jobs(text: str) -> dict[str, JobState]:
    """Output of ``scontrol --oneliner show job`` -> {task key: JobState}, with exit codes."""
    return _combine(_scontrol_records(text))


def _scontrol_records(text: str) -> Iterator[tuple[JobState, bool]]:
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        values = parse_key_values(line)
        job_id = values.get("ArrayJobId") or values["JobId"]
        task_spec = values.get("ArrayTaskId")
        tasks: list[int | None] = list(expand_indices(task_spec)) if task_spec else [None]
        state = base_state(values.get("JobState", ""))
        finished = outcome(state) != "waiting"
        is_range = task_spec is not None and not task_spec.isdigit()
        for task in tasks:
            yield JobState(
                job_id, task, state,
                exit_code=_value(values.get("ExitCode", "")),
                elapsed_seconds=parse_duration(values.get("RunTime", "")),
                start=_value(values.get("StartTime", "")) if state != "PENDING" else None,
                end=_value(values.get("EndTime", "")) if finished else None,
                reason=_value(values.get("Reason", "")),
            ), is_range


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` -> {key: value} (lines ``Key = Value``)."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def parse_partitions(text: str) -> dict[str, dict[str, str]]:
    """``scontrol show partition`` (either layout) -> {name: {key: value}}."""
    partitions: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        values = parse_key_values(line)
        if "PartitionName" in values:
            current = partitions.setdefault(values["PartitionName"], {})
        if current is not None:
            current.update(values)
    return partitions


def parse_sbatch(answer: str) -> str:
    """The job id of ``sbatch --parsable``'s answer ('123', or '123;cluster' on a federation)."""
    answer = answer.strip()
    job_id = answer.splitlines()[-1].split(";", 1)[0].strip() if answer else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {answer!r}, not a job id")
    return job_id
