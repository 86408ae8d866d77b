"""Download: fetch new documents from the configured source into 01_downloaded."""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

import luigi

from pipeline.config import BackpressureConfig, DownloadConfig, PipelineConfig
from pipeline.stages import download

from .base import InCollection, ProgressMixin, layout


def this_minute() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%M")


class RunParameter(luigi.Parameter):
    """A pass's name; left out, the current UTC minute. The task id then names the pass: ProcessAll
    started by two sites' cron in different minutes is two passes (sharing their batches' tasks
    through luigid), never one task whose output each site looks for under another name."""

    def normalize(self, x: object) -> str:
        return str(x) or this_minute()


class Download(InCollection, ProgressMixin, luigi.Task):
    """One pass over the source; ``run`` (default: this minute) lets cron start a new pass each time."""

    checked_at_start = ("base_dir", "source")  # see pipeline/run_control.py
    source = luigi.Parameter(default="", description="folder, URL list or s3:// prefix; default [download] source")
    run_id = RunParameter(default="", description="names this pass (ProcessAll passes its own); default: now")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.effective_source = self.source or DownloadConfig().source
        self.effective_run = self.run_id

    def output(self) -> luigi.LocalTarget:
        key = hashlib.sha1(self.effective_source.encode()).hexdigest()[:12]
        return luigi.LocalTarget(str(layout().manifests / "downloads" / f"{key}_{self.effective_run}.json"))

    def run(self) -> None:
        pressure = BackpressureConfig()
        download.download_pass(
            layout(), self.effective_source, Path(self.output().path), timeout=DownloadConfig().timeout,
            workers=PipelineConfig().workers, max_waiting=pressure.max_waiting_documents,
            min_free_gb=pressure.min_free_gb, progress=self.report, status=self.set_status_message,
            lease_seconds=PipelineConfig().lease_seconds)
