"""Report: _manifests/report.html, the Status table and plots of the collection over time
(pipeline/ops/report_html.py). ProcessAll rewrites it at its end too."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import luigi

from pipeline.config import OCRConfig, SlurmConfig, StatusConfig
from pipeline.executors.slurm.client import SlurmClient
from pipeline.layout import Layout
from pipeline.ops import report_html, status

from .base import InCollection, ProgressMixin, layout


def write_report(lay: Layout, *, record_snapshot: bool = False,
                 progress: Callable[[str], None] = lambda message: None) -> Path:
    """The report with this site's Status settings ([status], and sacct on a SLURM site)."""
    limits, on_slurm = StatusConfig(), OCRConfig().executor == "slurm"
    return report_html.refresh(
        lay, thresholds=status.Thresholds(limits.disk_threshold_percent, limits.stalled_hours, limits.stale_job_hours),
        slurm=SlurmClient(SlurmConfig().command_timeout) if on_slurm else None,
        record_snapshot=record_snapshot, progress=progress)


class Report(InCollection, ProgressMixin, luigi.Task):
    """Write _manifests/report.html and print its path. Always runs: a report of the moment."""

    checked_at_start = ("base_dir",)  # see pipeline/run_control.py
    _written = False

    def complete(self) -> bool:
        return self._written

    def run(self) -> None:
        path = write_report(layout(), progress=lambda message: self.progress(0, message))
        self._written = True
        self.progress(100, f"report written: {path}", force=True)
        print(f"report: {path}", flush=True)
