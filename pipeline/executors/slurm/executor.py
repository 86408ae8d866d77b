"""The SLURM executor: one array job per batch (array index = chunk index), watched until done.

Same contract as pipeline.executors.local.LocalExecutor: ``run(paths, chunks, progress)`` returns when
every chunk has its done marker or has failed for good, with each chunk's outcome (state, exit
code, log, attempts).

- Every submission is written to the event log (``slurm_submitted``) before any waiting, so a
  restarted task re-attaches to the batch's jobs that are still pending or running.
- One status query per poll covers every job of the batch; the interval grows while nothing
  changes. A failed query is retried with backoff and never taken for a job failure.
- A chunk is done when its done marker exists. FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL,
  CANCELLED, BOOT_FAIL, DEADLINE and COMPLETED-without-marker are failures: resubmitted up to
  ``max_retries`` times (or the chunk's own limit), after a TIMEOUT with ``timeout_walltime_factor``
  times the walltime. Failed attempts are logged (``slurm_chunk_failed``) and counted across reruns,
  also the failure of a job that ended while no executor watched it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import events
from pipeline.executors import records
from pipeline.executors.attempts import (
    ChunkOutcome,
    ChunkRun,
    Progress,
    attempt_count,
    describe_end,
    failed_attempts,
)
from pipeline.executors.jobscript import render, write_job_script
from pipeline.executors.slurm.client import Backoff, PollInterval, SlurmClient, job_name
from pipeline.executors.slurm.parse import JobState, SlurmError, task_key
from pipeline.executors.slurm.states import FAILED, TIMEOUT
from pipeline.executors.walltime import WalltimeModel, capped
from pipeline.layout import BatchPaths, Layout

LOG_PATTERN = "chunk_%3a.log"  # SLURM's zero-padded array index: the same name as BatchPaths.chunk_log


@dataclass
class _Chunk:
    """One chunk's life on the cluster during one run."""

    run: ChunkRun
    walltime: int               # seconds asked for (or to ask for) in its current submission
    job_id: str | None = None
    seen: float = 0.0           # clock of the submission or of the last time SLURM reported it
    state: str | None = None
    failures: int = 0
    limit: int = 0              # failed attempts after which the chunk is given up
    failed_jobs: set[str] = field(default_factory=set)  # jobs whose failure is counted in ``failures``

    @property
    def index(self) -> int:
        return self.run.index

    @property
    def key(self) -> str:
        return task_key(self.job_id or "", self.index)


def latest_submissions(log: Path, batch: str) -> dict[int, dict[str, Any]]:
    """The last ``slurm_submitted`` event of every chunk of ``batch``, from the event log."""
    return events.facts(log).batch(batch).submissions


def record_missing_ends(layout: Layout, client: SlurmClient) -> int:
    """Add end records for SLURM jobs that ended while no executor watched them (one sacct call).

    A task killed while its jobs ran, or stopped before the last jobs left the queue, leaves submit
    records without an end; the rerun does not watch chunks that are done by then. Returns how many
    records were added.
    """
    open_runs = records.unmeasured(records.attempts(events.read(layout.metrics)))
    if not open_runs:
        return 0
    states = client.query({r.job_id for r in open_runs if r.job_id})
    ended = []
    for run in open_runs:
        state = states.get(task_key(run.job_id or "", run.chunk))
        if state is not None and state.outcome != "waiting":
            ended.append(records.end_record(run.batch, run.chunk, run.pages, state.job_id, state.state,
                                            state.exit_code, state.elapsed_seconds, state.start, state.end))
    events.append(layout.metrics, ended)
    return len(ended)


def _epoch(iso: str | None) -> float:
    try:
        return _dt.datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


@dataclass
class SlurmExecutor:
    """Runs a batch's chunks as one SLURM array job and waits for their done markers.

    ``command`` is the chunk job (``--chunk N`` appended by the job script); the other fields are
    the [slurm] settings (pipeline.executors.base.make_executor fills them in).
    """

    layout: Layout
    command: list[str]
    max_retries: int = 2
    client: SlurmClient = field(default_factory=SlurmClient)
    partition: str = ""
    account: str = ""
    gres: str = ""
    cpus_per_task: int = 0
    mem: str = ""
    extra_args: list[str] = field(default_factory=list)
    directives: list[str] = field(default_factory=list)
    env_setup: list[str] = field(default_factory=list)
    array_throttle: int = 0
    walltime: WalltimeModel = field(default_factory=WalltimeModel)  # uncapped: run() caps it at the partition's
    timeout_walltime_factor: float = 1.5
    poll_initial: float = 10.0
    poll_max: float = 300.0
    poll_growth: float = 1.5
    max_query_failures: int = 10
    lost_after: float = 900.0
    cancel_on_exit: bool = False
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time

    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Progress) -> dict[int, ChunkOutcome]:
        return _BatchRun(self, paths, chunks, progress).run()


class _BatchRun:
    """The state of one ``SlurmExecutor.run`` call."""

    def __init__(self, executor: SlurmExecutor, paths: BatchPaths, chunks: list[ChunkRun],
                 progress: Progress) -> None:
        self.executor = executor
        self.paths = paths
        self.batch = paths.number
        self.progress = progress
        self.total = len(chunks)
        self.done = 0
        self.active: dict[int, _Chunk] = {}
        self.unmeasured: dict[int, _Chunk] = {}  # done chunks whose job SLURM still shows as running
        self.outcomes: dict[int, ChunkOutcome] = {}
        self.model = capped(executor.walltime, executor.client.partition_max_time(executor.partition or None))
        self.cap = self.model.max_seconds
        earlier = failed_attempts(executor.layout.events, self.batch)
        ever = failed_attempts(executor.layout.events, self.batch, forget=False)
        for run in chunks:
            if paths.done_marker(run.index).exists():
                self.done += 1
                self.outcomes[run.index] = ChunkOutcome(run.index, True, 0, log=str(paths.chunk_log(run.index)))
                continue
            logged = earlier.get(run.index, [])
            chunk = _Chunk(run, self.model.seconds(run.pages), failures=len(logged),
                           limit=executor.max_retries if run.max_retries is None else run.max_retries,
                           failed_jobs={str(e.get("job_id")) for e in ever.get(run.index, [])})
            if chunk.failures > chunk.limit:  # gave up in an earlier run, before it could act on it
                last = logged[-1]
                chunk.job_id = str(last.get("job_id") or "") or None
                self._give_up(chunk, JobState(chunk.job_id or "", run.index, str(last.get("state", FAILED)),
                                              last.get("exit_code"), reason=last.get("reason")))
            else:
                self.active[run.index] = chunk
        self.script = write_job_script(paths, render(batch=self.batch, command=executor.command,
                                                     env_setup=executor.env_setup,
                                                     sbatch_directives=executor.directives))

    # --- the steps ----------------------------------------------------------------------------

    def run(self) -> dict[int, ChunkOutcome]:
        try:
            with self._sigterm_raises() if self.executor.cancel_on_exit else contextlib.nullcontext():
                fresh = self._reattach()
                if fresh:
                    self._submit(fresh)
                self._wait()
        except (KeyboardInterrupt, SystemExit):
            if self.executor.cancel_on_exit:
                self._cancel()
            raise
        self._measure_last()
        return self.outcomes

    def _reattach(self) -> list[_Chunk]:
        """Adopt the chunks whose last logged job still pends or runs; return the ones to submit."""
        submissions = latest_submissions(self.executor.layout.events, self.batch)
        logged = {i: r for i, r in submissions.items() if i in self.active}
        if not logged:
            return list(self.active.values())
        states = self._confirmed(self._query_with_retries({str(r["job_id"]) for r in logged.values()}),
                                 {task_key(str(r["job_id"]), i) for i, r in logged.items()})
        fresh, adopted = [], []
        now = self.executor.clock()
        for index, chunk in list(self.active.items()):
            record = logged.get(index)
            if record is None:
                fresh.append(chunk)
                continue
            job_id, submitted = str(record["job_id"]), _epoch(record.get("time"))
            state = states.get(task_key(job_id, index))
            if self.paths.done_marker(index).exists():  # ended well while nobody watched
                chunk.job_id = job_id
                self._chunk_done(chunk, state)
                continue
            if state is not None and state.outcome != "waiting" and job_id not in chunk.failed_jobs:
                # Ended badly while nobody watched: an attempt like any other.
                chunk.job_id, chunk.walltime = job_id, int(record.get("walltime") or chunk.walltime)
                if self._chunk_failed(chunk, state):
                    fresh.append(chunk)
                continue
            recent = state is None and now - submitted < self.executor.lost_after  # sacct may not know it yet
            if recent or (state is not None and state.outcome == "waiting"):
                chunk.job_id, chunk.walltime = job_id, int(record.get("walltime") or chunk.walltime)
                chunk.seen = submitted if recent else now
                chunk.state = state.state if state else None
                adopted.append(chunk)
                continue
            if state is not None and state.state == TIMEOUT:
                chunk.walltime = self._longer(int(record.get("walltime") or chunk.walltime))
            fresh.append(chunk)
        if adopted:
            jobs = sorted({c.job_id for c in adopted if c.job_id}, key=int)
            events.log_event(self.executor.layout.events, "slurm_reattached", batch=self.batch,
                               chunks=[c.index for c in adopted], job_ids=jobs)
            self.progress(self.done, self.total, f"re-attached to job {', '.join(jobs)} for "
                                                 f"{len(adopted)} chunks still pending or running")
        return fresh

    def _submit(self, chunks: list[_Chunk]) -> None:
        walltime = max(c.walltime for c in chunks)
        indices = sorted(c.index for c in chunks)
        executor = self.executor
        job_id = executor.client.submit(
            self.script, job_name=job_name(self.batch), array_indices=indices,
            throttle=executor.array_throttle or None, comment=f"ocr batch {self.batch}",
            partition=executor.partition or None, account=executor.account or None, gres=executor.gres or None,
            cpus=executor.cpus_per_task or None, mem=executor.mem or None, time=walltime,
            output=str(self.paths.logs / LOG_PATTERN),
            # Logs of earlier attempts of a chunk stay above the new attempt's output.
            extra_args=["--open-mode=append", *executor.extra_args],
        )
        events.log_event(executor.layout.events, "slurm_submitted", batch=self.batch, chunks=indices,
                           job_id=job_id, walltime=walltime)
        submitted_at = events.now_iso()
        events.append(executor.layout.metrics, [records.submission_record(
            self.batch, c.index, c.run.pages, job_id, walltime, c.failures + 1, submitted_at) for c in chunks])
        now = executor.clock()
        for chunk in chunks:
            chunk.job_id, chunk.walltime, chunk.seen, chunk.state = job_id, walltime, now, None
        self.progress(self.done, self.total, f"submitted job {job_id} for {len(indices)} chunks "
                                             f"(walltime {walltime} s)")

    def _wait(self) -> None:
        interval = PollInterval(self.executor.poll_initial, self.executor.poll_max, self.executor.poll_growth)
        pause = interval.current
        while self.active:
            self.executor.sleep(pause)
            changed = self._poll()
            pause = interval.next(changed)

    def _poll(self) -> bool:
        """One status query for every job; returns whether anything changed."""
        states = self._confirmed(self._query_with_retries(self._job_ids()), {
            c.key for i, c in self.active.items() if not self.paths.done_marker(i).exists()})
        now = self.executor.clock()
        changed = False
        retry: list[_Chunk] = []
        lost: list[_Chunk] = []
        for index, chunk in list(self.active.items()):
            state = states.get(chunk.key)
            if state is not None:
                chunk.seen = now
            # The query comes first: a job SLURM reports as ended wrote its marker before it ended.
            if self.paths.done_marker(index).exists():
                self._chunk_done(chunk, state)
                changed = True
            elif state is None:
                if now - chunk.seen > self.executor.lost_after:
                    lost.append(chunk)
            elif state.outcome == "waiting":
                changed |= state.state != chunk.state
                chunk.state = state.state
            else:
                changed = True
                if self._chunk_failed(chunk, state):
                    retry.append(chunk)
        self._measure(states)
        retry += self._lost(lost)
        if retry:
            self._submit(retry)
            changed = True
        if changed:
            self._report()
        return changed

    def _confirmed(self, states: dict[str, JobState], keys: set[str]) -> dict[str, JobState]:
        """``states`` with the endings of ``keys`` (chunks not done) checked against the controller.

        sacct shows a job requeued after a node failure as NODE_FAIL for a few seconds while the
        controller already holds it as PENDING again: such a chunk waits, it is not submitted twice.
        When the controller cannot answer, those chunks are left out until the next query.
        """
        ended = {k for k in keys if k in states and states[k].outcome != "waiting"}
        if not ended:
            return states
        try:
            known = self.executor.client.query_controller({states[k].job_id for k in ended})
        except SlurmError:
            return {k: s for k, s in states.items() if k not in ended}
        return {**states, **{k: known[k] for k in ended if k in known and known[k].outcome == "waiting"}}

    def _lost(self, chunks: list[_Chunk]) -> list[_Chunk]:
        """Chunks sacct has not reported for lost_after seconds: failed unless the controller knows them."""
        if not chunks:
            return []
        try:
            known = self.executor.client.query_controller({c.job_id for c in chunks if c.job_id})
        except SlurmError:
            return []
        retry = []
        for chunk in chunks:
            state = known.get(chunk.key)
            if state is not None and state.outcome == "waiting":
                chunk.seen, chunk.state = self.executor.clock(), state.state
            elif self._chunk_failed(chunk, state or JobState(
                    chunk.job_id or "", chunk.index, "LOST",
                    reason=f"neither sacct nor squeue reports it {self.executor.lost_after:.0f} s after submission")):
                retry.append(chunk)
        return retry

    def _chunk_done(self, chunk: _Chunk, state: JobState | None) -> None:
        del self.active[chunk.index]
        self.done += 1
        self.outcomes[chunk.index] = ChunkOutcome(chunk.index, True, chunk.failures + 1,
                                                  log=str(self.paths.chunk_log(chunk.index)))
        if state is not None and state.outcome != "waiting":
            self._metrics_end(chunk, state)
        else:
            self.unmeasured[chunk.index] = chunk

    def _chunk_failed(self, chunk: _Chunk, state: JobState) -> bool:
        """Record a failed attempt; True when the chunk gets another one."""
        self._metrics_end(chunk, state)
        chunk.failures += 1
        chunk.failed_jobs.add(chunk.job_id or "")
        events.log_event(self.executor.layout.events, "slurm_chunk_failed", batch=self.batch, chunk=chunk.index,
                           job_id=chunk.job_id, state=state.state, exit_code=state.exit_code,
                           reason=state.reason, attempt=chunk.failures)
        if chunk.failures <= chunk.limit:
            if state.state == TIMEOUT:
                chunk.walltime = self._longer(chunk.walltime)
            self.progress(self.done, self.total, f"chunk {chunk.index} (job {chunk.key}) ended "
                                                 f"{describe_end(state.state, state.exit_code)}; "
                                                 f"resubmitting (attempt {chunk.failures + 1})")
            return True
        del self.active[chunk.index]
        self._give_up(chunk, state)
        return False

    def _give_up(self, chunk: _Chunk, state: JobState) -> None:
        what = describe_end(state.state, state.exit_code)
        log = str(self.paths.chunk_log(chunk.index))
        self.outcomes[chunk.index] = ChunkOutcome(chunk.index, False, chunk.failures, state.state, state.exit_code,
                                                  log, (
            f"batch {self.batch} chunk {chunk.index}: job {chunk.key} ended {what}"
            + (f", reason {state.reason}" if state.reason else "")
            + f" after {attempt_count(chunk.failures)}; log: {log}"))
        self.progress(self.done, self.total, f"chunk {chunk.index} FAILED: {what}")

    def _longer(self, walltime: int) -> int:
        longer = math.ceil(walltime * self.executor.timeout_walltime_factor)
        return min(longer, self.cap) if self.cap else longer

    # --- metrics ------------------------------------------------------------------------------

    def _metrics_end(self, chunk: _Chunk, state: JobState) -> None:
        events.append(self.executor.layout.metrics, [records.end_record(
            self.batch, chunk.index, chunk.run.pages, chunk.job_id or "", state.state, state.exit_code,
            state.elapsed_seconds, state.start, state.end)])

    def _measure(self, states: dict[str, JobState]) -> None:
        for index, chunk in list(self.unmeasured.items()):
            state = states.get(chunk.key)
            if state is not None and state.outcome != "waiting":
                self._metrics_end(chunk, state)
                del self.unmeasured[index]

    def _measure_last(self) -> None:
        """The last chunks' jobs end moments after their markers appear: a few short polls catch that."""
        for _ in range(3):
            if not self.unmeasured:
                return
            self.executor.sleep(self.executor.poll_initial)
            try:
                self._measure(self.executor.client.query(self._job_ids()))
            except SlurmError:
                return

    # --- queries, signals, cancel -------------------------------------------------------------

    def _job_ids(self) -> set[str]:
        return {c.job_id for c in [*self.active.values(), *self.unmeasured.values()] if c.job_id}

    def _query_with_retries(self, job_ids: set[str]) -> dict[str, JobState]:
        backoff = Backoff(base=self.executor.poll_initial, maximum=self.executor.poll_max)
        for failures in range(1, self.executor.max_query_failures + 1):
            try:
                return self.executor.client.query(job_ids)
            except SlurmError as exc:
                if failures == self.executor.max_query_failures:
                    raise SlurmError(
                        f"batch {self.batch}: {failures} status queries in a row failed, the last with: {exc}. "
                        f"The jobs ({', '.join(sorted(job_ids, key=int))}) keep running; run the same command "
                        "again to re-attach to them."
                    ) from exc
                delay = backoff.delay(failures)
                self.progress(self.done, self.total, f"status query failed ({exc}); retrying in {delay:.0f} s")
                self.executor.sleep(delay)
        raise AssertionError("unreachable")

    def _report(self) -> None:
        counts: dict[str, int] = {}
        for chunk in self.active.values():
            counts[chunk.state or "SUBMITTED"] = counts.get(chunk.state or "SUBMITTED", 0) + 1
        failed = sum(1 for o in self.outcomes.values() if not o.done)
        if failed:
            counts["FAILED"] = failed  # out of retries; the others are in the queue again
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        jobs = ", ".join(sorted({c.job_id for c in self.active.values() if c.job_id}, key=int))
        self.progress(self.done, self.total, f"{self.done}/{self.total} chunks done"
                                             + (f"; {states}" if states else "") + (f" (job {jobs})" if jobs else ""))

    @contextlib.contextmanager
    def _sigterm_raises(self) -> Iterator[None]:
        """Turn SIGTERM into SystemExit so the jobs can be cancelled on the way out."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def terminate(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _cancel(self) -> None:
        jobs = sorted({c.job_id for c in self.active.values() if c.job_id}, key=int)
        if not jobs:
            return
        try:
            self.executor.client.cancel(jobs)
            error = None
        except SlurmError as exc:
            error = str(exc)
        events.log_event(self.executor.layout.events, "slurm_cancelled", batch=self.batch, job_ids=jobs,
                           chunks=sorted(self.active), error=error)
