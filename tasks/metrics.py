"""MetricsSummary: how fast chunks run here and how long the waiting work will take."""
from __future__ import annotations

import luigi

from pipeline import atomic, events
from pipeline.config import OCRConfig, SlurmConfig
from pipeline.executors.slurm.client import SlurmError
from pipeline.executors.slurm.executor import record_missing_ends
from pipeline.ops import metrics

from .base import ProgressMixin, layout


class MetricsSummary(ProgressMixin, luigi.Task):
    """Compact _manifests/metrics.ndjson into metrics_summary.json and print the figures."""

    checked_at_start = ("base_dir",)  # see pipeline/run_control.py
    _written = False

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(layout().manifests / "metrics_summary.json"))

    def complete(self) -> bool:
        # A report of the moment, not a product: every invocation recomputes it.
        return self._written

    def run(self) -> None:
        lay = layout()
        ocr = OCRConfig()
        note = ""
        if ocr.executor == "slurm":
            try:
                added = record_missing_ends(lay)
                note = f"; {added} job ends read back from sacct" if added else ""
            except SlurmError as exc:
                note = f"; jobs without end records stay unmeasured ({exc})"
        parallel = SlurmConfig().array_throttle if ocr.executor == "slurm" else ocr.parallel_chunks
        summary = metrics.summarize(metrics.attempts(events.read(lay.metrics)), metrics.waiting_work(lay),
                                    pages_per_chunk=ocr.pages_per_chunk, parallel=parallel or None)
        atomic.write_json(self.output().path, {**summary, "time": events.now_iso()})
        self._written = True
        self.report(1, 1, f"{summary['chunks_done']} chunks, {summary['pages_done']} pages measured{note}")
        print("\n" + metrics.format_summary(summary), flush=True)
