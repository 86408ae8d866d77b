"""Download: fetch new documents from the configured source into 01_downloaded."""
from __future__ import annotations

import datetime as _dt
import hashlib

import luigi

from pipeline import atomic
from pipeline.config import BackpressureConfig, DownloadConfig, PipelineConfig
from pipeline.stages import batches, download

from .base import ProgressMixin, layout


def this_minute() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%M")


class Download(ProgressMixin, luigi.Task):
    """One pass over the source; ``run`` (default: this minute) lets cron start a new pass each time."""

    checked_at_start = ("base_dir", "source")  # see pipeline/run_control.py
    source = luigi.Parameter(default="", description="folder, URL list or s3:// prefix; default [download] source")
    run_id = luigi.Parameter(default="", description="names this pass (ProcessAll passes its own); default: now")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.effective_source = self.source or DownloadConfig().source
        self.effective_run = self.run_id or this_minute()

    def output(self) -> luigi.LocalTarget:
        key = hashlib.sha1(self.effective_source.encode()).hexdigest()[:12]
        return luigi.LocalTarget(str(layout().manifests / "downloads" / f"{key}_{self.effective_run}.json"))

    def run(self) -> None:
        if not self.effective_source:
            raise ValueError("no download source: set [download] source in luigi.cfg or pass --source")
        lay = layout()
        pressure = BackpressureConfig()
        waiting = len(batches.waiting_documents(lay))
        self.set_status_message(f"listing {download.redact(self.effective_source)}")
        items = list(download.iter_source(self.effective_source, DownloadConfig().timeout))

        def progress(s: download.DownloadSummary) -> None:
            done = s.rejected + s.fetched + s.skipped + s.quarantined + s.failed
            self.report(done, len(items), f"{s.fetched} fetched, {s.skipped} already present, "
                                          f"{s.quarantined} quarantined, {s.failed} failed")

        summary = download.download_all(
            lay, items,
            workers=PipelineConfig().workers, max_waiting=pressure.max_waiting_documents,
            waiting_now=waiting, min_free_gb=pressure.min_free_gb, progress=progress,
        )
        result = {"source": download.redact(self.effective_source), **vars(summary)}
        atomic.write_json(self.output().path, result)
        self.report(1, 1, f"download: {summary.fetched} fetched, {summary.skipped} already present, "
                          f"{summary.quarantined} quarantined, {summary.rejected} rejected names, "
                          f"{summary.failed} failed{'; paused: ' + summary.paused if summary.paused else ''}")
