"""Run control (pipeline.run_control), in-process: Luigi's defaults, the start-up checks each task
asks for, and the one line a failure leaves at the end of the output.

tests/test_failfast.py runs the same through the real ``luigi`` command; so do the tests here of
what a run prints about the luigid named in luigi.cfg.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import luigi
import luigi.execution_summary
import pytest
from luigi.cmdline_parser import CmdlineParser
from luigi.configuration import LuigiConfigParser

from pipeline import run_control
from pipeline.atomic import DiskFull
from pipeline.layout import Layout
from tasks import CountPages, CreateBatch, Download, Finalize, MetricsSummary, ProcessAll

from .conftest import luigi_executable, running_luigid, write_config

SiteConfig = Callable[..., Path]


@pytest.fixture
def site_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SiteConfig:
    """site_config(section={key: value}, ...) -> base_dir: a luigi.cfg this process reads, as `luigi` would."""

    def make(**sections: dict[str, object]) -> Path:
        base = tmp_path / "data"
        values: dict[str, dict[str, object]] = {"core": {"local_scheduler": "true"}, "pipeline": {"base_dir": base}}
        for section, keys in sections.items():
            values[section] = {**values.get(section, {}), **keys}
        path = tmp_path / "luigi.cfg"
        write_config(path, values)
        monkeypatch.setenv("LUIGI_CONFIG_PATH", str(path))
        parser = LuigiConfigParser()
        parser.read([str(path)])
        monkeypatch.setattr(LuigiConfigParser, "_instance", parser)  # the process's config, restored after
        return base

    return make


def test_the_packages_luigi_defaults_fill_in_what_the_site_left_out(site_config: SiteConfig) -> None:
    site_config(retcode={"task_failed": 3})
    run_control.install()
    run_control.install()  # a second import changes nothing
    parser = luigi.configuration.get_config()
    assert parser.getint("retcode", "task_failed") == 3  # the site's own value wins
    assert parser.getint("retcode", "missing_data") == 20
    assert parser.getint("retcode", "already_running") == 10
    assert parser.getboolean("worker", "keep_alive") is True
    assert getattr(CmdlineParser.get_task_obj, "_checks_settings", False)


def test_a_batch_task_for_a_batch_never_opened_stops_at_the_command_line(
        site_config: SiteConfig, capsys: pytest.CaptureFixture[str]) -> None:
    base = site_config()
    base.mkdir()
    run_control.install()
    with CmdlineParser.global_instance(["Finalize", "--Finalize-batch", "7"]) as command_line:
        with pytest.raises(SystemExit) as stopped:
            command_line.get_task_obj()
    assert stopped.value.code == run_control.SETTINGS_ERROR == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ERROR: batch 0007 does not exist under {Layout(base).processing}; run "
        "`luigi --module pipeline CreateBatch --batch 7` or ProcessAll to open one")
    assert list(base.iterdir()) == []


def test_each_task_gets_the_checks_it_names(site_config: SiteConfig, tmp_path: Path) -> None:
    missing_base = tmp_path / "unmounted" / "data"
    site_config(pipeline={"base_dir": missing_base})
    for task in (Finalize(batch="7"), CreateBatch(batch="7"), MetricsSummary(), ProcessAll(), Download()):
        (problem, *_) = run_control.startup_problems(task)
        assert problem.startswith(f"[pipeline] base_dir {missing_base} does not exist"), task
    output = tmp_path / "counts.csv"
    assert run_control.startup_problems(CountPages(source=str(tmp_path), output=str(output))) == []
    assert not missing_base.exists()

    base = site_config()
    base.mkdir()
    assert run_control.startup_problems(CreateBatch(batch="7")) == []  # CreateBatch opens it
    assert run_control.startup_problems(ProcessAll()) == []  # no source set: it only batches and finalizes
    assert run_control.startup_problems(Download()) == [
        "no download source: set [download] source in luigi.cfg or pass --source"]
    (problem,) = run_control.startup_problems(Download(source=str(tmp_path / "incomming")))
    assert problem.startswith(f"download source {tmp_path / 'incomming'} does not exist")

    site_config(download={"source": tmp_path / "incomming"})
    for task in (Download(), ProcessAll()):
        (problem,) = run_control.startup_problems(task)
        assert problem.startswith(f"download source {tmp_path / 'incomming'} does not exist"), task
    assert run_control.startup_problems(Download(source=str(tmp_path))) == []  # --source wins


def test_a_task_naming_an_unknown_check_is_a_programming_error(site_config: SiteConfig) -> None:
    class Misspelt(luigi.Task):
        checked_at_start = ("basedir",)

    site_config()
    with pytest.raises(TypeError, match="unknown checks"):
        run_control.startup_problems(Misspelt())


def test_an_error_of_this_package_is_its_own_message(tmp_path: Path) -> None:
    error = DiskFull(tmp_path / "05_processed" / "ab" / "doc.ocr.json")
    assert error.errno is not None and type(error).__module__ == "pipeline.atomic"
    line = run_control.failure_line(Finalize(batch="7"), "failed", error)
    assert line == f"Finalize(batch=0007, partial=False) failed: {error}"


def test_another_error_gets_its_type_and_what_to_do(tmp_path: Path) -> None:
    error = NotADirectoryError(20, "Not a directory", str(tmp_path / "05_processed"))
    line = run_control.failure_line(Finalize(batch="7"), "failed", error)
    assert line == (f"Finalize(batch=0007, partial=False) failed: NotADirectoryError: {error} "
                    "(fix the cause, then run the same command again: finished work is kept)")


def test_the_failure_line_is_one_line_of_bounded_length() -> None:
    error = ValueError("first line\n  second line\tand a tab\n" + "x" * 5000)
    line = run_control.failure_line(CreateBatch(batch="1"), "failed", error)
    assert "\n" not in line and "\t" not in line and "first line second line and a tab" in line
    assert len(line) == 1000 and line.endswith("...")


def test_each_reason_is_printed_once_at_exit(site_config: SiteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    site_config(worker={"no_install_shutdown_handler": "true"})  # no worker here to stop with SIGUSR1
    fd = os.open(tmp_path / "reasons", os.O_RDWR | os.O_CREAT | os.O_APPEND)
    monkeypatch.setattr(run_control, "_run", run_control._Run(os.getpid(), fd))
    task = Finalize(batch="7")
    error = NotADirectoryError(20, "Not a directory", "/srv/ocr/05_processed")
    try:
        task.trigger_event(luigi.Event.FAILURE, task, error)
        task.trigger_event(luigi.Event.FAILURE, task, error)  # the same reason twice (two sites, a retry)
        task.trigger_event(luigi.Event.PROCESS_FAILURE, task, "Task process died unexpectedly with exit code -9")
        run_control._print_reasons()
    finally:
        os.close(fd)
    assert capsys.readouterr().err.splitlines() == [
        f"ERROR: Finalize(batch=0007, partial=False) failed: NotADirectoryError: {error} "
        "(fix the cause, then run the same command again: finished work is kept)",
        "ERROR: Finalize(batch=0007, partial=False) died: Task process died unexpectedly with exit code -9; "
        "run the same command again",
    ]


def luigid_done_tasks(port: int) -> list[str]:
    query = urllib.parse.urlencode({"data": json.dumps({"status": "DONE"})})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?{query}", timeout=10) as response:
        return [task["name"] for task in json.load(response)["response"].values()]


@pytest.mark.parametrize("spelling", ["default-scheduler-{}", "default_scheduler_{}", "scheduler_{}"])
def test_a_site_naming_its_luigid_in_luigi_cfg_runs_through_it_without_a_warning(
        spelling: str, make_site: Callable, tmp_path: Path) -> None:
    (tmp_path / "luigid").mkdir()
    with running_luigid(tmp_path / "luigid") as port:
        site = make_site(**{f"core__{spelling.format('host')}": "127.0.0.1", f"core__{spelling.format('port')}": port})
        result = subprocess.run([luigi_executable(), "--module", "pipeline", "MetricsSummary"], env=site.env(),
                                cwd=site.root, capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "Warning" not in output, output[-4000:]
        assert luigid_done_tasks(port) == ["MetricsSummary"]  # the address in luigi.cfg was the one used


def test_a_key_luigi_does_not_read_is_still_warned_about(make_site: Callable) -> None:
    site = make_site(**{"core__default-scheduler-hots": "127.0.0.1"})
    output = site.luigi("MetricsSummary", merged=True).stdout
    assert "UnconsumedParameterWarning" in output and "'default_scheduler_hots'" in output


class _Made(luigi.Task):
    """A task whose output is a file named by the test."""

    path = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.path)


def _left_to_another_worker(root: luigi.Task, dependency: luigi.Task) -> dict[str, set]:
    """Luigi's task sets of a run that asked for ``root`` while another worker ran ``dependency``."""
    task_sets: dict[str, set] = {status: set() for status in luigi.execution_summary._ORDERED_STATUSES}
    task_sets["still_pending_not_ext"] = {root, dependency}
    task_sets["run_by_other_worker"] = {dependency}
    task_sets["upstream_run_by_other_worker"] = {root}
    return task_sets


def test_a_run_whose_work_another_site_finished_counts_it_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_control, "_elsewhere", [])
    root, dependency = _Made(path=str(tmp_path / "root")), _Made(path=str(tmp_path / "dependency"))
    other = "Worker(salt=1, workers=1, host=node7, username=ocr, pid=4242)"

    task_sets = _left_to_another_worker(root, dependency)
    run_control._settle_elsewhere(task_sets, root, {other: {dependency}})
    assert task_sets == _left_to_another_worker(root, dependency)  # Luigi's exit code stays: already_running
    assert run_control._elsewhere[-1] == (
        f"NOT DONE: {root} is not complete yet; still running on another site: {dependency} (host node7, "
        "pid 4242); a later run finds it done or does the rest")

    (tmp_path / "root").touch()
    (tmp_path / "dependency").touch()
    task_sets = _left_to_another_worker(root, dependency)
    run_control._settle_elsewhere(task_sets, root, {other: {dependency}})
    assert luigi.execution_summary._tasks_status(task_sets) == luigi.execution_summary.LuigiStatusCode.SUCCESS
    assert task_sets["already_done"] == {root, dependency} and not task_sets["still_pending_not_ext"]
    assert run_control._elsewhere[-1] == f"{root} is done; other sites ran 2 of its tasks"

    task_sets = _left_to_another_worker(root, dependency)
    task_sets["failed"] = {_Made(path=str(tmp_path / "failed"))}  # a failure here is never hidden
    run_control._settle_elsewhere(task_sets, root, {other: {dependency}})
    assert task_sets["run_by_other_worker"] == {dependency} and not task_sets["already_done"]
