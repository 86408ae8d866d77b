"""Render the chunk job script from slurm/job.sh.tmpl (used by the local and the SLURM executor)."""
from __future__ import annotations

import shlex
import string
import sys
from pathlib import Path

from pipeline.engines import EngineSettings

_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "slurm" / "job.sh.tmpl",  # a source checkout
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
    env_setup: list[str] = (),
    sbatch_directives: list[str] = (),
) -> str:
    """The job script text. Every datum is shell-quoted; ``env_setup`` lines come from luigi.cfg as written."""
    template = string.Template(template_path().read_text())
    return template.substitute(
        batch=batch,
        sbatch_directives="\n".join(f"#SBATCH {d}" for d in sbatch_directives),
        env_setup="\n".join(env_setup),
        command=shlex.join(command),
    )
