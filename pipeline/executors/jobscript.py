"""The chunk job script, rendered from slurm/job.sh.tmpl and written to the batch's logs/ (both executors run it)."""
from __future__ import annotations

import os
import shlex
import string
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import atomic
from pipeline.engines import EngineSettings
from pipeline.layout import BatchPaths

_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "slurm" / "job.sh.tmpl",  # a source checkout
    Path(sys.prefix) / "share" / "ocr-pipeline" / "slurm" / "job.sh.tmpl",  # pip install .
)


def template_path() -> Path:
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"job script template not found in {[str(c) for c in _CANDIDATES]}; reinstall")


def job_command(batch_dir: Path, engine: str, settings: EngineSettings, python: str = sys.executable) -> list[str]:
    """The command every chunk runs, as an argument list (``--chunk N`` is appended by the script)."""
    return [
        python, "-m", "pipeline.chunk_job",
        "--batch-dir", str(batch_dir),
        "--engine", engine,
        "--settings", settings.to_json(),
    ]


def render(
    *,
    batch: str,
    command: list[str],
    env_setup: Sequence[str] = (),
    sbatch_directives: Sequence[str] = (),
) -> str:
    """The job script text. Every datum is shell-quoted; ``env_setup`` lines come from luigi.cfg as written."""
    template = string.Template(template_path().read_text())
    return template.substitute(
        batch=batch,
        sbatch_directives="\n".join(f"#SBATCH {d}" for d in sbatch_directives),
        env_setup="\n".join(env_setup),
        command=shlex.join(command),
    )


def write_job_script(paths: BatchPaths, text: str, name: str = "job.sh") -> Path:
    """Write the script (atomically, executable) to the batch's logs/; returns its path."""
    script = paths.logs / name
    atomic.write_bytes(script, text.encode("utf-8"))
    os.chmod(script, 0o755)
    return script
