"""The per-batch task chain: CreateBatch -> PlanChunks -> OCRBatch -> SplitResults -> Finalize."""
from __future__ import annotations

import luigi

from pipeline.config import OCRConfig, PipelineConfig, SlurmConfig
from pipeline.executors.base import planned_walltime
from pipeline.stages import batches, bisect, chunks, finalize, ocr, split

from .base import BatchTask, compact_events


class CreateBatch(BatchTask):
    """Take waiting PDFs into a new batch folder, or adopt a batch folder made by the older scripts."""

    checked_at_start = ("base_dir",)  # it opens the batch

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.batch_record))

    def run(self) -> None:
        config = PipelineConfig()
        self.set_status_message(f"creating batch {self.batch}")
        record = batches.create_batch(self.layout, self.batch, max_documents=config.batch_size,
                                      max_pages=config.batch_pages, lease_seconds=config.lease_seconds,
                                      status=lambda message: self.progress(0, message, force=True))
        self.report(1, 1, f"batch {self.batch}: {len(record['documents'])} documents, {record['pages']} pages"
                          f"{' (adopted)' if record['adopted'] else ''}")


class PlanChunks(BatchTask):
    """Pack the batch's documents that have no OCR result yet into chunks of at most pages_per_chunk."""

    def requires(self) -> CreateBatch:
        self.require_existing_batch()
        return CreateBatch(batch=self.batch, collection=self.collection)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.chunk_plan))

    def run(self) -> None:
        model = planned_walltime(self.layout, OCRConfig(), SlurmConfig())
        plan = chunks.plan_batch(self.layout, self.paths, OCRConfig().pages_per_chunk, model)
        self.report(1, 1, chunks.describe_plan(plan))


class OCRBatch(BatchTask):
    """Run the OCR engine for every chunk without a done marker, retry missing PDFs once, and split
    chunks that fail as a whole down to the documents that make them fail (quarantined)."""

    def requires(self) -> PlanChunks:
        return PlanChunks(batch=self.batch, collection=self.collection)

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        # One unit per batch that submits and watches jobs, so a luigid caps them across sites
        # ([resources] slurm_submit in the scheduler's luigi.cfg).
        return {"slurm_submit": 1} if OCRConfig().executor == "slurm" else {}

    def output(self) -> list[luigi.LocalTarget]:
        paths = self.paths
        return [luigi.LocalTarget(str(paths.ocr_marker))] + [
            luigi.LocalTarget(str(paths.done_marker(c["index"]))) for c in bisect.settled_chunks(paths)]

    def run(self) -> None:
        compact_events(lambda message: self.progress(0, message))  # before the executor reads the log
        ocr.ocr_batch(self.layout, self.paths, OCRConfig(), SlurmConfig(), self.report)


class SplitResults(BatchTask):
    """One 04_ocr_completed/<ab>/<id>.ocr.jsonl per document, and the batch's split report."""

    def requires(self) -> OCRBatch:
        return OCRBatch(batch=self.batch, collection=self.collection)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.split_report))

    def run(self) -> None:
        split.split_results(self.layout, self.paths, OCRConfig(), SlurmConfig(), self.report,
                            self.set_status_message, workers=PipelineConfig().workers)


class Finalize(BatchTask):
    """Consolidate into 05_processed and delete the PDFs; --partial frees space before OCR is over."""

    partial = luigi.BoolParameter(default=False, description="finalize what has results now; OCR nothing")

    def requires(self) -> CreateBatch | SplitResults:
        self.require_existing_batch()
        stage = CreateBatch if self.partial else SplitResults
        return stage(batch=self.batch, collection=self.collection)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.finalized))

    def run(self) -> None:
        finalize.finalize_batch(self.layout, self.paths, partial=self.partial, workers=PipelineConfig().workers,
                                engine=OCRConfig().engine, progress=self.report)
