"""A small SLURM client: sbatch, sacct, squeue, scontrol and scancel through ``sh``.

Commands get argument lists, never a shell string, and each may take ``timeout`` seconds: a hung
controller must not hang the pipeline. Every command failure raises SlurmError: a failed query says
nothing about the jobs, so callers retry with backoff (see Backoff) and never take it for a job
failure. Status queries cost one call for all jobs (sacct), or one squeue call when sacct cannot
answer (accounting off, slurmdbd down).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sh

from pipeline.executors.slurm.parse import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    JobState,
    SlurmError,
    compress_indices,
    parse_config,
    parse_duration,
    parse_partitions,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_jobs,
    parse_squeue,
)
from pipeline.executors.walltime import format_walltime

_ACCOUNTING_OFF = "accounting storage is disabled"


class AccountingDisabled(SlurmError):
    """sacct cannot answer because the cluster keeps no accounting."""


def job_name(batch: str) -> str:
    """The job name that tags a batch's jobs in squeue/sacct."""
    return f"ocr-{batch}"


@dataclass
class SlurmClient:
    """The SLURM commands of one submit host; cluster settings are read once per client."""

    timeout: float = 120.0  # seconds one command may take ([slurm] command_timeout)
    _config: dict[str, str] | None = field(default=None, init=False, repr=False)
    _partitions: dict[str, dict[str, str]] | None = field(default=None, init=False, repr=False)

    def _run(self, command: str, args: Sequence[str]) -> str:
        try:
            return str(sh.Command(command)(*args, _timeout=self.timeout, _tty_out=False))
        except sh.CommandNotFound as exc:
            raise SlurmError(f"{command} not found on PATH: is this a SLURM submit host?") from exc
        except sh.TimeoutException as exc:
            raise SlurmError(f"{command} did not answer within {self.timeout:.0f} s") from exc
        except sh.ErrorReturnCode as exc:
            message = (exc.stderr.decode("utf-8", "replace").strip()
                       or exc.stdout.decode("utf-8", "replace").strip())
            error = AccountingDisabled if _ACCOUNTING_OFF in message.lower() else SlurmError
            raise error(f"{command} {' '.join(args)} failed (exit {exc.exit_code}): {message}") from exc

    def submit(
        self,
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
        limit = self.max_array_size()
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
        return parse_sbatch(self._run("sbatch", args))

    def cluster_config(self) -> dict[str, str]:
        """``scontrol show config``, read once per client."""
        if self._config is None:
            self._config = parse_config(self._run("scontrol", ["show", "config"]))
        return self._config

    def max_array_size(self) -> int:
        """MaxArraySize: array indices must be below it."""
        return int(self.cluster_config().get("MaxArraySize", "1001"))

    def partitions(self) -> dict[str, dict[str, str]]:
        """``scontrol show partition``, read once per client."""
        if self._partitions is None:
            self._partitions = parse_partitions(self._run("scontrol", ["--oneliner", "show", "partition"]))
        return self._partitions

    def partition_max_time(self, partition: str | None = None) -> int | None:
        """MaxTime of ``partition`` (or the default partition) in seconds; None when unlimited."""
        known = self.partitions()
        if partition:
            if partition not in known:
                raise SlurmError(f"partition {partition!r} does not exist; known: {', '.join(sorted(known))}")
            return parse_duration(known[partition].get("MaxTime", "UNLIMITED"))
        default = [values for values in known.values() if values.get("Default") == "YES"]
        return parse_duration(default[0].get("MaxTime", "UNLIMITED")) if default else None

    def query(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """States of every task of ``job_ids`` in one sacct call; squeue (+ scontrol) when sacct cannot answer.

        sacct fails when accounting is off, and while slurmdbd or its database is down; the controller
        still knows every job that pends, runs or ended less than MinJobAge ago. Only when both fail
        does this raise. Tasks SLURM does not report yet (sacct lags the controller) are simply absent.
        """
        ids = sorted({str(j) for j in job_ids}, key=int)
        if not ids:
            return {}
        try:
            text = self._run("sacct", [
                "-j", ",".join(ids), "-X", "--parsable2", "--noheader", f"--format={','.join(SACCT_FIELDS)}",
            ])
        except AccountingDisabled:
            return self.query_controller(ids)
        except SlurmError as sacct_error:
            try:
                return self.query_controller(ids)
            except SlurmError as controller_error:
                raise SlurmError(f"{sacct_error}; the controller could not answer either: {controller_error}") \
                    from controller_error
        return parse_sacct(text)

    def query_controller(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """States from slurmctld itself (jobs it still holds, MinJobAge after their end).

        One squeue call; then ``scontrol show job`` for each job with finished tasks, since only it
        knows their exit codes.
        """
        ids = sorted({str(j) for j in job_ids}, key=int)
        if not ids:
            return {}
        try:
            text = self._run("squeue", ["--noheader", "--states=all", f"--format={SQUEUE_FORMAT}",
                                        "-j", ",".join(ids)])
        except SlurmError as exc:
            # squeue rejects the call when every id is unknown to the controller: that is no answer.
            if "invalid job id" in str(exc).lower():
                return {}
            raise
        found = parse_squeue(text)
        for job_id in sorted({s.job_id for s in found.values() if s.outcome != "waiting"}, key=int):
            detail = parse_scontrol_jobs(self._run("scontrol", ["--oneliner", "show", "job", job_id]))
            found.update({key: state for key, state in detail.items() if key in found})
        return found

    def cancel(self, job_ids: Iterable[str]) -> None:
        """scancel every job (all its array tasks)."""
        ids = sorted({str(j) for j in job_ids}, key=int)
        if ids:
            self._run("scancel", ids)


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
