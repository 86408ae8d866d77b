"""The per-batch task chain: CreateBatch -> PlanChunks -> OCRBatch -> SplitResults -> Finalize."""
from __future__ import annotations

from collections.abc import Callable

import luigi

from pipeline import atomic, events
from pipeline.config import OCRConfig, PipelineConfig, SlurmConfig
from pipeline.executors.base import Progress, make_executor, planned_walltime
from pipeline.stages import batches, bisect, integrity, split
from pipeline.stages import chunks as planning
from pipeline.stages import ocr as ocr_pass
from pipeline.stages.finalize import Provenance, finalize_many
from pipeline.stages.quarantine import quarantine, read_reasons

from .base import BatchTask


class CreateBatch(BatchTask):
    """Take waiting PDFs into a new batch folder, or adopt a batch folder made by the older scripts."""

    checked_at_start = ("base_dir",)  # it opens the batch

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.manifest))

    def run(self) -> None:
        config = PipelineConfig()
        self.set_status_message(f"creating batch {self.batch}")
        record = batches.create_batch(self.layout, self.batch, max_documents=config.batch_size,
                                      max_pages=config.batch_pages)
        self.report(1, 1, f"batch {self.batch}: {len(record['documents'])} documents, {record['pages']} pages"
                          f"{' (adopted)' if record['adopted'] else ''}")


class PlanChunks(BatchTask):
    """Pack the batch's documents that have no OCR result yet into chunks of at most pages_per_chunk."""

    def requires(self) -> CreateBatch:
        self.require_existing_batch()
        return CreateBatch(batch=self.batch)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.chunk_plan))

    def run(self) -> None:
        ocr = OCRConfig()
        paths = self.paths
        documents = atomic.read_json(paths.manifest)["documents"]
        have = batches.existing_results(paths)
        todo = {i: d["pages"] for i, d in documents.items() if i not in have}
        chunks = planning.pack_chunks(todo, ocr.pages_per_chunk)
        model = planned_walltime(self.layout, OCRConfig(), SlurmConfig())
        plan = []
        for chunk in chunks:
            record = {
                "index": chunk.index,
                "pages": chunk.pages,
                "documents": sorted(chunk.identifiers),
                "walltime_seconds": model.seconds(chunk.pages),
                "file": str(paths.chunk_list(chunk.index).relative_to(paths.dir)),
            }
            integrity.write_chunk_list(paths, record)
            plan.append(record)
        events.append(self.layout.events, [
            events.event("chunk_planned", batch=self.batch, chunk=c["index"], pages=c["pages"],
                           documents=len(c["documents"])) for c in plan
        ])
        atomic.write_json(paths.chunk_plan, {
            "batch": self.batch,
            "pages_per_chunk": ocr.pages_per_chunk,
            "chunks": plan,
            "already_have_results": sorted(have & set(documents)),
        })
        self.report(1, 1, f"{len(plan)} chunks, {sum(todo.values())} pages to OCR; "
                          f"{len(have & set(documents))} documents already have results")


class OCRBatch(BatchTask):
    """Run the OCR engine for every chunk without a done marker, retry missing PDFs once, and split
    chunks that fail as a whole down to the documents that make them fail (quarantined)."""

    def requires(self) -> PlanChunks:
        return PlanChunks(batch=self.batch)

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
        context = ocr_context(self, lambda message: self.report(*self._counts, message))
        record = ocr_pass.run_ocr(context, SlurmConfig().max_retries, self._progress)
        self.report(1, 1, ocr_pass.describe(record))

    _counts = (0, 1)  # the last chunks done / total shown, for messages between executor updates

    def _progress(self, label: str) -> Progress:
        def progress(done: int, total: int, message: str) -> None:
            self._counts = (done, total)
            self.report(done, total, f"{label}: {message}")
        return progress


def ocr_context(task: BatchTask, say: Callable[[str], None]) -> bisect.Context:
    """What running chunks of the task's batch needs: the executor, page counts, walltime model, engine."""
    pages = {i: d["pages"] for i, d in atomic.read_json(task.paths.manifest)["documents"].items()}
    ocr, slurm = OCRConfig(), SlurmConfig()
    return bisect.Context(make_executor(task.layout, task.paths, ocr, slurm), task.layout, task.paths, pages,
                          planned_walltime(task.layout, ocr, slurm), ocr.engine, say)


class SplitResults(BatchTask):
    """One 04_ocr_completed/<ab>/<id>.ocr.jsonl per document, and the batch's split report."""

    def requires(self) -> OCRBatch:
        return OCRBatch(batch=self.batch)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.split_report))

    def run(self) -> None:
        paths = self.paths
        identifiers = set(atomic.read_json(paths.manifest)["documents"])
        plan = split.plan_split(paths.results, identifiers)
        untrusted = integrity.untrusted_markers(paths, bisect.settled_chunks(paths), set(plan.winners))
        if untrusted:  # results cut short or gone: OCR those chunks again, then split what is there
            integrity.withdraw(self.layout, paths, untrusted)
            redo = [c for c in bisect.all_chunks(paths) if c["index"] in untrusted]
            bisect.run_with_bisection(ocr_context(self, self.set_status_message), redo,
                                      lambda done, total, message: self.report(done, total, f"chunks run again: {message}"))
            plan = split.plan_split(paths.results, identifiers)
        written = split.write_split(plan, self.layout.completed_jsonl)
        result = split.report(plan, identifiers, written)
        events.log_event(self.layout.events, "split", batch=self.batch, documents=result["split"],
                           unmatched=len(plan.unmatched), malformed=len(plan.malformed),
                           duplicates=len(plan.duplicates))
        atomic.write_json(paths.split_report, result)
        self.report(1, 1, f"split {result['split']} documents; {len(plan.unmatched)} unmatched records, "
                          f"{len(plan.malformed)} malformed lines, {len(plan.duplicates)} duplicates")


def provenance_lookup(task: BatchTask):
    """identifier -> Provenance, from the chunk plan, retries, halves and done markers."""
    paths = task.paths
    chunk_of: dict[str, int] = {}
    for chunk in bisect.all_chunks(paths):  # in index order: a later chunk that is done wins
        done = paths.done_marker(chunk["index"]).exists()
        for identifier in chunk["documents"]:
            if done or identifier not in chunk_of:
                chunk_of[identifier] = chunk["index"]
    markers: dict[int, dict] = {}

    def lookup(identifier: str) -> Provenance:
        index = chunk_of.get(identifier)
        if index is not None and index not in markers:
            marker = paths.done_marker(index)
            markers[index] = atomic.read_json(marker) if marker.exists() else {}
        done = markers.get(index, {})
        return Provenance(task.batch, index, done.get("engine", OCRConfig().engine if index is not None else None),
                          done.get("finished"))

    return lookup


class Finalize(BatchTask):
    """Consolidate into 05_processed and delete the PDFs; --partial frees space before OCR is over."""

    partial = luigi.BoolParameter(default=False, description="finalize what has results now; OCR nothing")

    def requires(self):
        self.require_existing_batch()
        return CreateBatch(batch=self.batch) if self.partial else SplitResults(batch=self.batch)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.paths.finalized))

    def run(self) -> None:
        layout, paths = self.layout, self.paths
        batch_record = atomic.read_json(paths.manifest)
        documents = batch_record["documents"]
        split_summary = None
        if self.partial:
            plan = split.plan_split(paths.results, set(documents))
            split_summary = split.report(plan, set(documents), split.write_split(plan, layout.completed_jsonl))
        lookup = provenance_lookup(self)
        outcomes = finalize_many(
            layout, paths, documents, lookup, workers=PipelineConfig().workers,
            progress=lambda done, total: self.report(done, total, "documents finalized"),
        )
        reasons = read_reasons(layout, [i for i in documents if i not in outcomes])
        remaining = sorted(i for i in documents if i not in outcomes and i not in reasons)
        if remaining and not self.partial:
            for identifier in remaining:
                index = lookup(identifier).chunk
                where = f"chunk {index}, log {paths.chunk_log(index)}" if index is not None else "no chunk"
                failure = integrity.failure_of(paths, index, paths.pdf(identifier).name)
                why = f": {failure['error']}: {failure['message']}" if failure else ""
                reasons[identifier] = {"reason": "no_ocr_result"}
                quarantine(layout, identifier, [paths.pdf(identifier), layout.downloaded_pdf(identifier)],
                           "no_ocr_result", f"the OCR engine produced no record, also on retry ({where}){why}",
                           also_remove=(layout.downloaded_meta(identifier),), batch=self.batch, chunk=index)
            remaining = []
        quarantined = {i: r["reason"] for i, r in sorted(reasons.items())}
        quarantined.update(batch_record.get("quarantined", {}))
        finalized = sorted(outcomes)
        summary = {
            "batch": self.batch,
            "documents": len(documents),
            "finalized": len(finalized),
            "finalized_now": sum(1 for o in outcomes.values() if o == "finalized"),
            "pages": sum(documents[i]["pages"] for i in finalized),
            "quarantined": quarantined,
            "remaining": remaining,
            "partial": self.partial,
            "split": split_summary,
        }
        atomic.write_json(paths.finalize_report, {**summary, "time": events.now_iso()})
        if remaining:
            self.report(len(finalized), len(documents),
                        f"partial: {len(remaining)} documents have no result yet and stay in {paths.dir}")
            return
        atomic.write_json(paths.finalized, {**summary, "finished_at": events.now_iso()})
        events.log_event(layout.events, "batch_finalized", batch=self.batch, finalized=len(finalized),
                           quarantined=len(quarantined))
        self.report(len(documents), len(documents), f"batch {self.batch} finalized")
