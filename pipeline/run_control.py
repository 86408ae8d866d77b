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

A task says what it needs checked at start with a class attribute ``checked_at_start`` (this module
imports no task): any of CHECKS below. Luigi's command line is where the site's settings meet the
task, so this module reads them (through pipeline.config) as a task would.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import luigi
import luigi.interface
import luigi.worker
from luigi.cmdline_parser import CmdlineParser

from pipeline import config, startup_checks
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


def start(task: luigi.Task) -> None:
    """Check the settings for ``task`` (exit on a problem), then watch the run for failures."""
    problems = startup_problems(task)
    if problems:
        for problem in problems:
            print(f"ERROR: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(SETTINGS_ERROR)
    lock_per_collection(luigi.configuration.get_config())
    global _run
    fd, path = tempfile.mkstemp(prefix="ocr-pipeline-failures-")
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    _run = _Run(os.getpid(), fd)
    atexit.register(_print_reasons)


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


def _print_reasons() -> None:
    run = _run
    if run is None or os.getpid() != run.main_pid:
        return
    size = os.fstat(run.reasons_fd).st_size
    lines = os.pread(run.reasons_fd, size, 0).decode("utf-8", "replace").splitlines()
    for line in dict.fromkeys(lines):
        print(f"ERROR: {line}", file=sys.stderr, flush=True)


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
