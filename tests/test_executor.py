"""pipeline.executors.base: the one factory that builds either executor from the [ocr] and [slurm]
settings, and the walltime a run plans with."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import events
from pipeline.config import OCRConfig, SlurmConfig
from pipeline.executors.base import make_executor, planned_walltime
from pipeline.executors.local import LocalExecutor
from pipeline.executors.slurm.executor import SlurmExecutor
from pipeline.executors.walltime import WalltimeModel
from pipeline.isolation import available_cpus
from pipeline.layout import BatchPaths, Layout

from .test_metrics import recorded
from .test_slurm_client import cluster  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


def test_the_factory_builds_the_local_executor_from_settings(layout: Layout) -> None:
    paths = BatchPaths(layout.batch_dir(4))
    executor = make_executor(layout, paths, OCRConfig(executor="local", engine="text", parallel_chunks=3),
                             SlurmConfig(max_retries=5))
    assert isinstance(executor, LocalExecutor)
    assert (executor.parallel, executor.max_retries) == (3, 5)
    assert executor.command[1:] == ["-m", "pipeline.chunk_job", "--batch-dir", str(paths.dir), "--engine", "text",
                                    "--settings", executor.command[-1]]


def test_the_factory_gives_the_local_executor_the_automatic_parallel_chunks_when_none_is_set(layout: Layout) -> None:
    paths = BatchPaths(layout.batch_dir(4))
    automatic = make_executor(layout, paths, OCRConfig(executor="local", engine="olmocr", parallel_chunks=0),
                              SlurmConfig())
    assert isinstance(automatic, LocalExecutor) and automatic.parallel == 1  # one GPU model at a time
    text = make_executor(layout, paths, OCRConfig(executor="local", engine="text", parallel_chunks=0,
                                                engine_workers=0), SlurmConfig())
    assert isinstance(text, LocalExecutor) and text.parallel == min(2, available_cpus())


def test_the_factory_builds_the_slurm_executor_from_settings(layout: Layout) -> None:
    paths = BatchPaths(layout.batch_dir(4))
    slurm = SlurmConfig(partition="short", account="lab", gres="gpu:1", cpus_per_task=4, mem="8G",
                        extra_args="--qos=high --comment='two words'", directives="--nice=7\n\n --hint=nomultithread",
                        env_setup="module load cuda\n", array_throttle=3, walltime_base_seconds=60,
                        walltime_seconds_per_page=2, walltime_buffer=0.5, max_retries=4, command_timeout=7,
                        poll_initial_seconds=2, cancel_on_exit=True)
    executor = make_executor(layout, paths, OCRConfig(executor="slurm", engine="tesseract"), slurm)
    assert isinstance(executor, SlurmExecutor)
    assert executor.client.timeout == 7  # [slurm] command_timeout reaches every SLURM command
    assert (executor.partition, executor.account, executor.gres, executor.cpus_per_task, executor.mem) == (
        "short", "lab", "gpu:1", 4, "8G")
    assert executor.extra_args == ["--qos=high", "--comment=two words"]  # split like a shell, never run by one
    assert executor.directives == ["--nice=7", "--hint=nomultithread"] and executor.env_setup == ["module load cuda"]
    assert (executor.array_throttle, executor.max_retries, executor.poll_initial, executor.cancel_on_exit) == (
        3, 4, 2, True)
    assert executor.walltime == WalltimeModel(60, 2, 0.5)  # capped when it runs, by the partition's MaxTime
    assert "--engine" in executor.command and "tesseract" in executor.command


def test_planned_walltime_of_a_local_run_needs_no_slurm(layout: Layout) -> None:
    events.append(layout.metrics, recorded())
    slurm = SlurmConfig(walltime_model="fitted", walltime_base_seconds=100)
    assert planned_walltime(layout, OCRConfig(executor="local"), slurm).seconds(100) == 288  # (40 + 2 * 100) * 1.2
    # In a process of its own: no SLURM module is loaded, no SLURM command runs (none is on PATH).
    # The package is imported as `python -m pipeline.<tool>` does, without the tasks (which load them all).
    code = ("import sys\n"
            "sys.argv[:1] = ['-m']\n"
            "from pathlib import Path\n"
            "from pipeline.config import OCRConfig, SlurmConfig\n"
            "from pipeline.executors.base import planned_walltime\n"
            "from pipeline.layout import Layout\n"
            f"model = planned_walltime(Layout(Path({str(layout.base)!r}), 2), OCRConfig(executor='local'), "
            "SlurmConfig(walltime_model='fitted'))\n"
            "print(model.seconds(100), sorted(m for m in sys.modules if m.startswith('pipeline.executors.slurm.')"
            " or m == 'sh'))\n")
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "288 ['pipeline.executors.slurm.states']"


@pytest.mark.slurm
def test_planned_walltime_of_a_slurm_run_is_capped_by_the_partition(cluster: None, layout: Layout) -> None:
    model = planned_walltime(layout, OCRConfig(executor="slurm"), SlurmConfig(partition="short"))
    assert model.seconds(1000) == 60  # MaxTime=00:01:00
    assert planned_walltime(layout, OCRConfig(executor="slurm"), SlurmConfig()).seconds(2000) == 7200  # default: 2 h
