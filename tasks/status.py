"""Status: the operator's view of the base_dir (pipeline/ops/status.py), printed as plain text."""
from __future__ import annotations

import json

import luigi

from pipeline.config import OCRConfig, SlurmConfig, StatusConfig
from pipeline.executors.slurm.client import SlurmClient
from pipeline.ops import status

from .base import InCollection, ProgressMixin, layout


class Status(InCollection, ProgressMixin, luigi.Task):
    """Print documents, pages and disk per stage, open batches, throughput and what needs a person.

    Always runs; fails (exit [retcode] task_failed, the reason as the last line) when something
    needs a person.
    """

    checked_at_start = ("base_dir",)  # see pipeline/run_control.py
    json = luigi.BoolParameter(default=False, description="print JSON instead of the table")
    _shown = False

    def complete(self) -> bool:
        return self._shown  # a view of the moment: every invocation looks again

    def run(self) -> None:
        limits, on_slurm = StatusConfig(), OCRConfig().executor == "slurm"
        result = status.collect(
            layout(), slurm=SlurmClient(SlurmConfig().command_timeout) if on_slurm else None,
            thresholds=status.Thresholds(limits.disk_threshold_percent, limits.stalled_hours, limits.stale_job_hours),
            progress=lambda message: self.progress(0, message))
        print(json.dumps(result, indent=2) if self.json else status.format_status(result), flush=True)
        self._shown = True
        problem = status.last_line(result)
        if problem:
            raise status.NeedsAPerson(problem)
