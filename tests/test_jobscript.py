"""pipeline.executors.jobscript: the real template rendered, valid bash, every datum quoted."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engines import EngineSettings
from pipeline.executors.jobscript import job_command, render, template_path, write_job_script
from pipeline.layout import BatchPaths

ROOT = Path(__file__).resolve().parent.parent
# Names a shell would act on if they reached it unquoted.
HOSTILE = ["it's here", 'say "hi"', "$(touch PWNED)", "`touch PWNED`", "a;touch PWNED", "line\nbreak",
           "*", "$HOME", "--chunk", "back\\slash", "tab\there", "ünïcödé"]


def run_script(script: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, **env})


def test_the_template_of_this_checkout_is_used() -> None:
    assert template_path() == ROOT / "slurm" / "job.sh.tmpl"


def test_the_script_is_valid_bash_with_directives_before_the_first_command(tmp_path: Path) -> None:
    text = render(batch="0012", command=["true"], env_setup=["module load cuda", "export A=1"],
                  sbatch_directives=["--qos=high", "--constraint=a100"])
    script = tmp_path / "job.sh"
    script.write_text(text)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    # sbatch reads #SBATCH lines only up to the first command.
    first_command = next(n for n, line in enumerate(lines) if line and not line.startswith("#"))
    assert lines[1:3] == ["#SBATCH --qos=high", "#SBATCH --constraint=a100"] and first_command > 2
    assert "module load cuda" in lines and "export A=1" in lines


def test_hostile_arguments_reach_the_command_unchanged(tmp_path: Path) -> None:
    printer = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    script = tmp_path / "job.sh"
    script.write_text(render(batch="0001", command=[*printer, *HOSTILE]))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    result = run_script(script, tmp_path, SLURM_ARRAY_TASK_ID="4")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [*HOSTILE, "--chunk", "4"]
    assert not list(tmp_path.rglob("PWNED")), "a name was run by the shell"


def test_the_job_command_names_the_batch_engine_and_settings(tmp_path: Path) -> None:
    batch_dir = tmp_path / "it's a $(batch)" / "batch_0001"
    settings = EngineSettings(document_timeout=7, workers=1)
    command = job_command(batch_dir, "text", settings, python="/opt/py/bin/python3")
    assert command == ["/opt/py/bin/python3", "-m", "pipeline.chunk_job", "--batch-dir", str(batch_dir),
                       "--engine", "text", "--settings", settings.to_json()]
    assert EngineSettings.from_json(command[-1]) == settings


def test_without_an_array_index_the_script_stops_and_says_why(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(render(batch="0001", command=["touch", str(tmp_path / "ran")]))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0 and "SLURM_ARRAY_TASK_ID is not set" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_a_failing_setup_line_stops_the_chunk(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(render(batch="0001", command=["touch", str(tmp_path / "ran")], env_setup=["false"]))
    assert run_script(script, tmp_path, SLURM_ARRAY_TASK_ID="0").returncode != 0
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["job.sh", "retry.sh"])
def test_the_written_script_is_executable_and_complete(tmp_path: Path, name: str) -> None:
    paths = BatchPaths(tmp_path / "batch_0001")
    text = render(batch="0001", command=["true"])
    script = write_job_script(paths, text, name)
    assert script == paths.logs / name and script.read_text() == text
    assert script.stat().st_mode & stat.S_IXUSR
    assert [p.name for p in paths.logs.iterdir()] == [name]  # no temp file left beside it
