"""A small SLURM client (sbatch, sacct, squeue, scontrol, scancel through ``sh``) and state mapping.

Commands get argument lists, never a shell string. Every command failure raises SlurmError: a
failed query says nothing about the jobs, so callers retry with backoff (see Backoff) and never
take it for a job failure. Status queries cost one call for all jobs (sacct), or one squeue call
when sacct cannot answer (accounting off, slurmdbd down).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sh

from pipeline.stages.chunks import format_walltime

FAILED_STATES = frozenset({
    "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE",
})
WAIT_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "PREEMPTED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
})
COMPLETED = "COMPLETED"

# Seconds one SLURM command may take; a hung controller must not hang the pipeline.
COMMAND_TIMEOUT = 120.0

SACCT_FIELDS = ("JobID", "State", "ExitCode", "ElapsedRaw", "Start", "End", "Reason")
# Free text (the reason) goes last, so a "|" in it cannot shift the other fields.
SQUEUE_FORMAT = "%i|%T|%M|%S|%e|%r"
_SQUEUE_FIELDS = SQUEUE_FORMAT.count("|") + 1

_ARRAY_ID = re.compile(r"^(\d+)_(\d+)$")
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]*)\]$")
_PLAIN_ID = re.compile(r"^(\d+)$")
_KEY_VALUE = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)")
_ACCOUNTING_OFF = "accounting storage is disabled"


class SlurmError(RuntimeError):
    """A SLURM command failed or answered something unreadable; the jobs themselves may be fine."""


class AccountingDisabled(SlurmError):
    """sacct cannot answer because the cluster keeps no accounting."""


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


def job_name(batch: str) -> str:
    """The job name that tags a batch's jobs in squeue/sacct."""
    return f"ocr-{batch}"


# --- states -----------------------------------------------------------------------------------

def base_state(raw: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'CANCELLED+' (sacct's truncation mark) -> 'CANCELLED'."""
    words = raw.split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def is_failed(state: str) -> bool:
    return base_state(state) in FAILED_STATES


def is_waiting(state: str) -> bool:
    return base_state(state) in WAIT_STATES


def is_completed(state: str) -> bool:
    return base_state(state) == COMPLETED


def outcome(state: str) -> str:
    """'completed', 'failed' or 'waiting'. States not listed wait: only a known failure may fail a chunk."""
    if is_completed(state):
        return "completed"
    return "failed" if is_failed(state) else "waiting"


# --- parsing ----------------------------------------------------------------------------------

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
    ordered = sorted(set(indices))
    parts: list[str] = []
    start = prev = None
    for index in ordered + [None]:
        if start is not None and (index is None or index != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if index is not None and start is None:
            start = index
        prev = index
    return ",".join(parts)


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
        tasks: list[int | None] = expand_indices(task_spec) if task_spec else [None]
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


# --- commands ---------------------------------------------------------------------------------

def _run(command: str, args: Sequence[str]) -> str:
    try:
        return str(sh.Command(command)(*args, _timeout=COMMAND_TIMEOUT, _tty_out=False))
    except sh.CommandNotFound as exc:
        raise SlurmError(f"{command} not found on PATH: is this a SLURM submit host?") from exc
    except sh.TimeoutException as exc:
        raise SlurmError(f"{command} did not answer within {COMMAND_TIMEOUT:.0f} s") from exc
    except sh.ErrorReturnCode as exc:
        message = exc.stderr.decode("utf-8", "replace").strip() or exc.stdout.decode("utf-8", "replace").strip()
        error = AccountingDisabled if _ACCOUNTING_OFF in message.lower() else SlurmError
        raise error(f"{command} {' '.join(args)} failed (exit {exc.exit_code}): {message}") from exc


def submit(
    script: Path,
    *,
    job_name: str,
    array_indices: Sequence[int],
    throttle: int | None = None,
    comment: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    gres: str | None = None,
    cpus: int | None = None,
    mem: str | None = None,
    time: int | None = None,
    output: str | None = None,
    chdir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """Submit ``script`` as an array job; returns the job id. ``time`` is in seconds."""
    if not array_indices:
        raise ValueError("no array indices to submit")
    if min(array_indices) < 0:
        raise ValueError("array indices must not be negative")
    limit = max_array_size()
    if max(array_indices) >= limit:
        raise ValueError(f"array index {max(array_indices)} is beyond the cluster's MaxArraySize={limit} "
                         f"(largest index {limit - 1})")
    array = compress_indices(array_indices) + (f"%{throttle}" if throttle else "")
    args = ["--parsable", f"--job-name={job_name}", f"--array={array}"]
    options = {
        "comment": comment, "partition": partition, "account": account, "gres": gres,
        "cpus-per-task": cpus, "mem": mem, "time": format_walltime(time) if time else None,
        "output": output, "chdir": chdir,
    }
    args += [f"--{name}={value}" for name, value in options.items() if value]
    args += [*extra_args, str(script)]
    answer = _run("sbatch", args).strip()
    job_id = answer.splitlines()[-1].split(";", 1)[0].strip() if answer else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {answer!r}, not a job id")
    return job_id


@functools.lru_cache(maxsize=1)
def cluster_config() -> dict[str, str]:
    """``scontrol show config``, read once per process."""
    return parse_config(_run("scontrol", ["show", "config"]))


def max_array_size() -> int:
    """MaxArraySize: array indices must be below it."""
    return int(cluster_config().get("MaxArraySize", "1001"))


@functools.cache
def partitions() -> dict[str, dict[str, str]]:
    return parse_partitions(_run("scontrol", ["--oneliner", "show", "partition"]))


def partition_max_time(partition: str | None = None) -> int | None:
    """MaxTime of ``partition`` (or the default partition) in seconds; None when unlimited."""
    known = partitions()
    if partition:
        if partition not in known:
            raise SlurmError(f"partition {partition!r} does not exist; known: {', '.join(sorted(known))}")
        return parse_duration(known[partition].get("MaxTime", "UNLIMITED"))
    default = [values for values in known.values() if values.get("Default") == "YES"]
    return parse_duration(default[0].get("MaxTime", "UNLIMITED")) if default else None


def query(job_ids: Iterable[str]) -> dict[str, JobState]:
    """States of every task of ``job_ids`` in one sacct call; squeue (+ scontrol) when sacct cannot answer.

    sacct fails when accounting is off, and while slurmdbd or its database is down; the controller
    still knows every job that pends, runs or ended less than MinJobAge ago. Only when both fail
    does this raise. Tasks SLURM does not report yet (sacct lags the controller) are simply absent.
    """
    ids = sorted({str(j) for j in job_ids}, key=int)
    if not ids:
        return {}
    try:
        text = _run("sacct", [
            "-j", ",".join(ids), "-X", "--parsable2", "--noheader", f"--format={','.join(SACCT_FIELDS)}",
        ])
    except AccountingDisabled:
        return query_controller(ids)
    except SlurmError as sacct_error:
        try:
            return query_controller(ids)
        except SlurmError as controller_error:
            raise SlurmError(f"{sacct_error}; the controller could not answer either: {controller_error}") \
                from controller_error
    return parse_sacct(text)


def query_controller(job_ids: Iterable[str]) -> dict[str, JobState]:
    """States from slurmctld itself (jobs it still holds, MinJobAge after their end).

    One squeue call; then ``scontrol show job`` for each job with finished tasks, since only it
    knows their exit codes.
    """
    ids = sorted({str(j) for j in job_ids}, key=int)
    if not ids:
        return {}
    try:
        text = _run("squeue", ["--noheader", "--states=all", f"--format={SQUEUE_FORMAT}", "-j", ",".join(ids)])
    except SlurmError as exc:
        # squeue rejects the call when every id is unknown to the controller: that is no answer.
        if "invalid job id" in str(exc).lower():
            return {}
        raise
    found = parse_squeue(text)
    for job_id in sorted({s.job_id for s in found.values() if s.outcome != "waiting"}, key=int):
        detail = parse_scontrol_jobs(_run("scontrol", ["--oneliner", "show", "job", job_id]))
        found.update({key: state for key, state in detail.items() if key in found})
    return found


def cancel(job_ids: Iterable[str]) -> None:
    """scancel every job (all its array tasks)."""
    ids = sorted({str(j) for j in job_ids}, key=int)
    if ids:
        _run("scancel", ids)


# --- polling helpers (pure) -------------------------------------------------------------------

@dataclass
class PollInterval:
    """Adaptive poll interval: short at first, ``growth`` times longer while nothing changes."""

    initial: float = 10.0
    maximum: float = 300.0
    growth: float = 1.5

    def __post_init__(self) -> None:
        self.current = min(self.initial, self.maximum)

    def next(self, changed: bool) -> float:
        """The wait before the next poll, given whether the last poll saw any change."""
        self.current = self.initial if changed else self.current * self.growth
        self.current = min(self.current, self.maximum)
        return self.current


@dataclass(frozen=True)
class Backoff:
    """Waits between retries of a failed query: ``base * factor**n``, at most ``maximum``."""

    base: float = 5.0
    factor: float = 2.0
    maximum: float = 300.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 = the first)."""
        return min(self.maximum, self.base * self.factor ** max(0, failures - 1))
