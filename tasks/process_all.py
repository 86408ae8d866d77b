"""ProcessAll: what cron runs. Download, open new batches, finalize every open batch, summarize."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import luigi

from pipeline import atomic, events
from pipeline.config import BackpressureConfig, DownloadConfig, PipelineConfig
from pipeline.ops import report
from pipeline.stages import batches

from .base import InCollection, ProgressMixin, compact_events, layout
from .batch import CreateBatch, Finalize
from .download import Download, RunParameter
from .report import write_report


class ProcessAll(InCollection, ProgressMixin, luigi.Task):
    """One pass of the whole pipeline; a new ``run_id`` (default: this minute) starts a new pass."""

    checked_at_start = ("base_dir", "source_if_set")  # see pipeline/run_control.py
    run_id = RunParameter(default="", description="names this pass; default: the current UTC minute")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.effective_run = self.run_id
        # Set when the task is scheduled, so it survives run() being restarted after each yield.
        self.started_at = events.now_iso()
        self.started = time.time()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(layout().manifests / "runs" / f"process_all_{self.effective_run}.json"))

    def done_summary(self) -> str:
        """The summary of the run, from its output: what every site prints, whoever ran it."""
        return "\n" + report.format_summary(atomic.read_json(self.output().path))

    def run(self) -> Iterator[Any]:
        lay = layout()
        compact_events(lambda message: self.progress(0, message))
        if DownloadConfig().source:
            yield Download(run_id=self.effective_run, collection=self.collection)
        open_batches = batches.open_batches(lay)
        while numbers := batches.batches_to_open(
                lay, len(open_batches), BackpressureConfig().max_open_batches, PipelineConfig().batch_size,
                PipelineConfig().lease_seconds, status=lambda message: self.progress(0, message, force=True)):
            self.set_status_message(f"creating batches {', '.join(numbers)}")
            # all at once: run() restarts per yield
            yield [CreateBatch(batch=number, collection=self.collection) for number in numbers]
            open_batches += numbers
        if open_batches:
            self.report(0, len(open_batches), f"finalizing batches {', '.join(open_batches)}")
        yield [Finalize(batch=b, collection=self.collection) for b in open_batches]
        touched = report.batches_since(lay, self.started_at)
        summary = report.collection_summary(lay, touched, time.time() - self.started, self.started_at)
        write_report(lay, record_snapshot=True)  # _manifests/report.html, and this run's Status snapshot
        atomic.write_json(self.output().path, {"run": self.effective_run, "batches": touched, **summary})
        self.progress(100, report.status_line(summary, touched), force=True)
        print("\n" + report.format_summary(summary), flush=True)
