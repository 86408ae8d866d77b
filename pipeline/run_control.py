"""What ``luigi --module pipeline <Task>`` gets from this package besides its tasks.

- Luigi settings the pipeline relies on, where the site's luigi.cfg leaves them out
  (config.LUIGI_DEFAULTS: exit codes that tell cron about a failure, a worker that waits for
  another site's running task).
- Settings checked once, when Luigi's command line makes the task, before anything is scheduled:
  a problem prints one line saying what to fix and exits with SETTINGS_ERROR; nothing has moved.
- The first failure ends the run: the worker starts no new task (SIGUSR1 is Luigi's own "stop
  asking for work" signal), lets running ones finish and exits with its [retcode]. Without this
  a worker with keep_alive waits for Luigi's retry of the failed task (15 minutes, then again).
- The reason of each failure is printed at exit as one line, after Luigi's execution summary.
- Luigi's own lock (one run of a command line at a time on this host, else exit 10) is kept per
  collection: its pid files go to a folder of [core] lock_pid_dir named after base_dir, so two
  collections with the same command line (another LUIGI_CONFIG_PATH) never block each other.
- The collection's name (every task's ``collection`` parameter, pipeline/collection.py) is checked
  against the one recorded in base_dir, and recorded by the first run.
- Work other sites did counts as done: through luigid, a run whose tasks were run (or are still
  being run) by another site's worker ends, in Luigi's eyes, with tasks it did not run (exit
  not_run or already_running). When its task is complete when Luigi's run ends (its output
  targets say so), whoever ran which part, the run exits 0 and prints the task's summary (the same
  on every site); else the last line names what is still running elsewhere.

A task says what it needs checked at start with a class attribute ``checked_at_start`` (this module
imports no task): any of CHECKS below. Luigi's command line is where the site's settings meet the
task, so this module reads them (through pipeline.config) as a task would.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import re
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import luigi
import luigi.execution_summary
import luigi.interface
import luigi.worker
from luigi.cmdline_parser import CmdlineParser

from pipeline import collection, config, startup_checks
from pipeline.config import DownloadConfig, PipelineConfig
from pipeline.layout import Layout

# Exit code when the command line or the settings are wrong (like argparse's usage errors).
SETTINGS_ERROR = 2
# What a task's ``checked_at_start`` may name (a task without it: only the settings and luigid):
CHECKS = {
    "base_dir": "it works under [pipeline] base_dir (the cloud shard tasks do not: they work on S3)",
    "batch": "its ``batch`` parameter names a batch that must exist (only CreateBatch opens one)",
    "source": "it downloads: its ``source`` parameter, else [download] source, must be set and exist",
    "source_if_set": "it may download: [download] source, when set, must exist",
}
_LINE_LIMIT = 1000


@dataclass(frozen=True)
class _Run:
    """A command-line run: its main process, and where task processes (forked) leave failure reasons."""

    main_pid: int
    reasons_fd: int  # an unlinked append-only file: each reason one write, read back at exit


_run: _Run | None = None
# How the run ended when tasks were left to other sites: what to print last (see _settle_elsewhere).
_elsewhere: list[str] = []
# Luigi's statuses of tasks this worker did not run because another worker ran or runs them.
_LEFT_TO_OTHERS = ("run_by_other_worker", "upstream_run_by_other_worker", "not_run")


def install() -> None:
    """Called on import of the pipeline package; doing it twice changes nothing."""
    config.add_luigi_defaults(luigi.configuration.get_config())
    config.rename_scheduler_keys(luigi.configuration.get_config())
    # Luigi has no hook between parsing the command line and scheduling; the command line's task is
    # made by CmdlineParser.get_task_obj, once, with the parsed options in force (--local-scheduler).
    make_task = CmdlineParser.get_task_obj
    if getattr(make_task, "_checks_settings", False):
        return

    def get_task_obj(self: CmdlineParser) -> luigi.Task:
        task = make_task(self)
        start(task)
        return task

    get_task_obj._checks_settings = True  # type: ignore[attr-defined]
    CmdlineParser.get_task_obj = get_task_obj  # type: ignore[method-assign]
    # Luigi's exit code and its execution summary both come from this one function.
    summarize = luigi.execution_summary._summary_dict

    def summary_dict(worker: luigi.worker.Worker) -> dict[str, set[luigi.Task]]:
        task_sets = summarize(worker)
        if _run is not None and os.getpid() == _run.main_pid and worker._add_task_history:
            _settle_elsewhere(task_sets, luigi.execution_summary._root_task(worker),
                              luigi.execution_summary._get_external_workers(worker))
        return task_sets

    luigi.execution_summary._summary_dict = summary_dict
    luigi.worker.Worker._keep_alive = _waiting_for_others(luigi.worker.Worker._keep_alive)  # type: ignore[method-assign]


def _waiting_for_others(keep_alive: Any) -> Any:
    """Luigi's keep_alive waits while a task this worker asked for is pending, but not while another
    site's worker runs it: a site would end before the task it asked for (say ProcessAll's last
    step) did. With keep_alive on, it waits for that too; a worker asked to stop stops."""
    def waiting(worker: luigi.worker.Worker, response: Any) -> bool:
        running = response.running_tasks if isinstance(response.running_tasks, list) else []
        return bool(keep_alive(worker, response) or worker._config.keep_alive and not worker._stop_requesting_work
                    and any(task.get("worker") != worker._id for task in running))

    return waiting


def start(task: luigi.Task) -> None:
    """Check the settings for ``task`` (exit on a problem), then watch the run for failures."""
    problems = startup_problems(task)
    if not problems:
        lock_per_collection(luigi.configuration.get_config())
        problems = [p for p in [record_collection(task)] if p]
    if problems:
        for problem in problems:
            print(f"ERROR: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(SETTINGS_ERROR)
    global _run
    fd, path = tempfile.mkstemp(prefix="ocr-pipeline-failures-")
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    _run = _Run(os.getpid(), fd)
    atexit.register(_at_exit)


def lock_per_collection(parser: Any) -> Path:
    """Set [core] lock_pid_dir to a folder of its own for this base_dir, in Luigi's parser; returns it.

    Luigi names its pid file after the command line alone. A --lock-pid-dir on the command line
    wins over the parser: it is used as given."""
    base = os.path.realpath(Path(PipelineConfig().base_dir).expanduser())
    parent = Path(luigi.interface.core().lock_pid_dir)  # the site's setting, else Luigi's default
    folder = parent / f"collection-{hashlib.sha1(base.encode()).hexdigest()[:16]}"
    parent.mkdir(parents=True, exist_ok=True)  # Luigi makes only the last folder
    parser.set("core", "lock_pid_dir", str(folder))
    return folder


def record_collection(task: luigi.Task) -> str | None:
    """Record the task's collection in base_dir unless one is; a line when another was recorded at
    the same moment by another site (the task was made with the name it saw before)."""
    name = getattr(task, "collection", None)
    if name is None or "base_dir" not in tuple(getattr(task, "checked_at_start", ())):
        return None
    base = Path(PipelineConfig().base_dir).expanduser().absolute()
    try:
        found = collection.record(base, name)
    except OSError:  # a full or read-only disk: the run's own work reports it; a later run records the name
        return None
    if found == name:
        return None
    return (f"another run recorded base_dir {base} as collection {found} at the same moment as this one "
            "started; run the same command again")


def startup_problems(task: luigi.Task) -> list[str]:
    """Every problem with the settings ``task`` needs, one line each; empty when it may run."""
    problem = startup_checks.config_file_problem(os.environ.get("LUIGI_CONFIG_PATH"))
    if problem:
        return [problem]  # every other setting would be Luigi's default
    parser = luigi.configuration.get_config()
    problems = config.invalid_values(parser)
    if problems:
        return problems
    found: list[str | None] = [*task_problems(task)]
    core = luigi.interface.core()
    address = startup_checks.scheduler_address(core.scheduler_url, core.scheduler_host, core.scheduler_port)
    if address and not core.local_scheduler:
        found.append(startup_checks.scheduler_problem(*address))
    return [p for p in found if p]


def task_problems(task: luigi.Task) -> list[str]:
    """The problems found by the checks ``task`` names in its ``checked_at_start`` (see CHECKS)."""
    checks = tuple(getattr(task, "checked_at_start", ()))
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise TypeError(f"{type(task).__name__}.checked_at_start: unknown checks {sorted(unknown)}; "
                        f"use {sorted(CHECKS)}")
    found: list[str | None] = []
    if "base_dir" in checks:
        settings = PipelineConfig()
        base = Path(settings.base_dir).expanduser().absolute()
        found.append(startup_checks.base_dir_problem(base, settings.create_base_dir))
        if not found[-1] and hasattr(task, "collection"):
            found.append(collection.problem(base, settings.collection, task.collection))
        if not found[-1] and "batch" in checks:
            layout = Layout(base, settings.shard_width)
            found.append(startup_checks.missing_batch_problem(layout, getattr(task, "batch", "")))
    if "source" in checks or "source_if_set" in checks:
        source = getattr(task, "source", "") or DownloadConfig().source
        if source:
            found.append(startup_checks.download_source_problem(source))
        elif "source" in checks:
            found.append("no download source: set [download] source in luigi.cfg or pass --source")
    return [p for p in found if p]


def failure_line(task: luigi.Task, what: str, exception: BaseException | None = None) -> str:
    """One line: the task, what went wrong and, for errors not of this package, the generic remedy."""
    text = what
    if exception is not None and type(exception).__module__.startswith(("pipeline", "tasks")):
        text = f"{what}: {exception}"  # this package's errors name the file, chunk or batch and what to do
    elif exception is not None:
        text = (f"{what}: {type(exception).__name__}: {exception} "
                "(fix the cause, then run the same command again: finished work is kept)")
    line = " ".join(f"{task} {text}".split())
    return line if len(line) <= _LINE_LIMIT else line[:_LINE_LIMIT - 3] + "..."


def _stop(line: str) -> None:
    """Record the reason and ask the main process's worker to start nothing new."""
    run = _run
    if run is None:  # not a command-line run of this package (e.g. luigi.build in a script)
        return
    os.write(run.reasons_fd, (line + "\n").encode("utf-8", "replace"))
    if not luigi.worker.worker().no_install_shutdown_handler:  # else SIGUSR1 would kill the process
        os.kill(run.main_pid, signal.SIGUSR1)


def _reasons() -> list[str]:
    run = _run
    if run is None:
        return []
    size = os.fstat(run.reasons_fd).st_size
    return list(dict.fromkeys(os.pread(run.reasons_fd, size, 0).decode("utf-8", "replace").splitlines()))


def _print_reasons() -> None:
    run = _run
    if run is None or os.getpid() != run.main_pid:
        return
    for line in _reasons():
        print(f"ERROR: {line}", file=sys.stderr, flush=True)


def _at_exit() -> None:
    _print_reasons()
    if _run is not None and os.getpid() == _run.main_pid and not _reasons():
        for text in _elsewhere[-1:]:  # Luigi summarizes more than once: the last word counts
            print(text, flush=True)


def _settle_elsewhere(task_sets: dict[str, set[luigi.Task]], root: luigi.Task,
                      others: dict[str, set[luigi.Task]]) -> None:
    """When the run left tasks to other workers and nothing failed here, count them done if ``root``
    is complete now (its outputs are the truth), in ``task_sets`` as Luigi's exit code and summary
    read them; either way say what happened as the run's last line."""
    # A task whose run() yielded tasks that another worker then ran stays "pending, not runnable" in
    # this worker's history, which Luigi counts as a missing external input: only an external task is one.
    missing = {task for task in task_sets["still_pending_ext"] if getattr(task, "run", None) is None}
    left = set().union(*(task_sets[status] for status in _LEFT_TO_OTHERS), task_sets["still_pending_ext"] - missing)
    if not left or missing or task_sets["failed"] or task_sets["scheduling_error"]:
        return
    try:
        done = bool(root.complete())
    except Exception:  # Luigi reported it already; the exit code stays Luigi's
        return
    if done:
        moved = (left | task_sets["still_pending_not_ext"]) - task_sets["completed"]
        for status in (*_LEFT_TO_OTHERS, "still_pending_not_ext", "still_pending_ext"):
            task_sets[status] = set()
        task_sets["already_done"] |= moved
        if root not in task_sets["completed"]:  # else this run printed its summary as it ended
            _elsewhere.append(_done_summary(root, len(moved)))
        return
    running = sorted(f"{task} ({_worker_name(worker)})" for worker, tasks in others.items() for task in tasks)
    _elsewhere.append(f"NOT DONE: {root} is not complete yet; "
                      + (f"still running on another site: {', '.join(running)}; " if running else
                         f"luigid did not let this run do {', '.join(sorted(map(str, left)))}; ")
                      + "a later run finds it done or does the rest")


def _done_summary(root: luigi.Task, by_others: int) -> str:
    """What the task says of its finished work (``done_summary``, e.g. ProcessAll's summary), else one line."""
    line = f"{root} is done; other sites ran {by_others} of its tasks"
    summary = getattr(root, "done_summary", None)
    try:
        return summary() if summary else line
    except (OSError, ValueError, KeyError) as exc:  # its output is the truth of done, not of the summary
        return f"{line} (its summary cannot be read: {exc})"


def _worker_name(worker_id: str) -> str:
    """Luigi's worker id names host and pid among other things: keep those two."""
    found = dict(re.findall(r"(host|pid)=([^,)]+)", worker_id))
    return f"host {found['host']}, pid {found['pid']}" if len(found) == 2 else worker_id


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _on_failure(task: luigi.Task, exception: BaseException) -> None:
    _stop(failure_line(task, "failed", exception))


@luigi.Task.event_handler(luigi.Event.BROKEN_TASK)
def _on_broken(task: luigi.Task, exception: BaseException) -> None:
    _stop(failure_line(task, "could not be scheduled", exception))


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_MISSING)
def _on_missing(task: luigi.Task) -> None:
    if getattr(task, "run", None) is None:  # an external task: its data is made elsewhere
        _stop(failure_line(task, "does not exist and this run cannot make it; make it first, then run again"))
    else:
        _stop(failure_line(task, "could not be checked: its complete() failed (see the traceback above)"))


@luigi.Task.event_handler(luigi.Event.PROCESS_FAILURE)
def _on_process_failure(task: luigi.Task, message: str) -> None:
    _stop(failure_line(task, f"died: {message}; run the same command again"))


@luigi.Task.event_handler(luigi.Event.TIMEOUT)
def _on_timeout(task: luigi.Task, message: str) -> None:
    _stop(failure_line(task, f"timed out: {message}; raise [worker] timeout or run the same command again"))
