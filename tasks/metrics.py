"""MetricsSummary: how fast chunks run here and how long the waiting work will take."""
from __future__ import annotations

from pathlib import Path

import luigi

from pipeline.config import OCRConfig, SlurmConfig
from pipeline.executors.slurm.client import SlurmClient
from pipeline.ops import metrics

from .base import InCollection, ProgressMixin, layout


class MetricsSummary(InCollection, ProgressMixin, luigi.Task):
    """Compact _manifests/metrics.ndjson into metrics_summary.json and print the figures."""

    checked_at_start = ("base_dir",)  # see pipeline/run_control.py
    _written = False

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(layout().manifests / "metrics_summary.json"))

    def complete(self) -> bool:
        # A report of the moment, not a product: every invocation recomputes it.
        return self._written

    def run(self) -> None:
        ocr, slurm = OCRConfig(), SlurmConfig()
        on_slurm = ocr.executor == "slurm"
        summary, note = metrics.write_summary(
            layout(), Path(self.output().path), pages_per_chunk=ocr.pages_per_chunk,
            parallel=(slurm.array_throttle if on_slurm else ocr.parallel_chunks) or None,
            slurm=SlurmClient(slurm.command_timeout) if on_slurm else None)
        self._written = True
        self.report(1, 1, f"{summary['chunks_done']} chunks, {summary['pages_done']} pages measured{note}")
        print("\n" + metrics.format_summary(summary), flush=True)
