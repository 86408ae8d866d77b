"""FinalizeReady: what a frequent cron runs to free disk: finalize the documents of open batches
whose OCR results are there, start no OCR."""
from __future__ import annotations

import luigi

from pipeline.config import OCRConfig, PipelineConfig
from pipeline.stages import finalize_ready

from .base import InCollection, ProgressMixin, layout


class FinalizeReady(InCollection, ProgressMixin, luigi.Task):
    """For every open batch, finalize the documents that have results (as Finalize --partial does),
    leaving those a chunk still to run lists; print one line: documents finalized, disk freed.

    Always runs (a view of the moment, like Status) and exits 0 when nothing is ready.
    """

    checked_at_start = ("base_dir",)  # see pipeline/run_control.py
    _done = False

    def complete(self) -> bool:
        return self._done

    def run(self) -> None:
        config = PipelineConfig()
        summary = finalize_ready.finalize_ready(layout(), workers=config.workers, engine=OCRConfig().engine,
                                                progress=self.report, lease_seconds=config.lease_seconds)
        print(summary.line(), flush=True)
        self._done = True
