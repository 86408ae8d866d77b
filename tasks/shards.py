"""Luigi tasks of the cloud-shard deployment: CountPages, ShardManifest, RunShard, ShardStatus, Preflight.

Thin wrappers: the work is in pipeline.sharding and pipeline.s3. Locations are s3:// URIs or local
paths; shard, status and output prefixes and the node's work folder come from luigi.cfg [s3].
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import luigi

from pipeline.cloud import sharding
from pipeline.cloud.s3 import MarkerTarget, S3Settings, Storage, folder, join
from pipeline.config import OCRConfig, S3Config
from pipeline.engines import EngineSettings

__all__ = ["CountPages", "ShardManifest", "ShardFile", "RunShard", "ShardStatus", "Preflight"]

log = logging.getLogger("luigi-interface")
ENGINES = ("olmocr", "tesseract", "text", "command")


class _OutputLocation(str):
    """The value of ``--output``, which is also the task's ``output()``.

    The CLI contract names the parameter ``--output``, and Luigi sets parameters as attributes,
    which hides the ``output`` method; a location string that Luigi can call fills both roles.
    """

    def __call__(self) -> MarkerTarget:
        return MarkerTarget(str(self))


class _OutputParameter(luigi.Parameter):
    def normalize(self, x: Any) -> Any:
        return _OutputLocation(x)


class _Progress:
    """Visualizer status and percentage, plus a terminal line at most every few seconds."""

    def __init__(self, task: luigi.Task, every: float = 5.0) -> None:
        self.task, self.every, self.last = task, every, 0.0

    def __call__(self, percent: float, message: str, force: bool = False) -> None:
        if self.task.set_progress_percentage:  # None when run outside a Luigi worker
            self.task.set_progress_percentage(round(percent, 1))
            self.task.set_status_message(message)
        if force or time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            log.info("%s: %s", self.task.get_task_family(), message)


class CountPages(luigi.Task):
    """Page counts of every PDF under ``--source`` into the master CSV ``key,size,pages,error``.

    S3 objects are read with ranged GETs of just the tail and the objects that lead to
    /Root/Pages/Count. Parts of ``--chunk-size`` keys are written beside the output as they
    finish, after a snapshot of the listing, so a rerun resumes at the missing parts.
    """

    source = luigi.Parameter(description="s3://bucket/prefix/ or a local folder")
    output = _OutputParameter(description="master CSV: s3:// URI or local path")
    max_workers = luigi.IntParameter(default=32, description="documents counted at once")
    chunk_size = luigi.IntParameter(default=2000, description="keys per part")
    suffix = luigi.Parameter(default=".pdf", description="count keys ending in this (any case); '' = all")

    def run(self) -> None:
        storage = Storage(S3Settings.from_config(pool=self.max_workers))
        block = S3Config().range_block_bytes
        progress = _Progress(self)
        parts = sharding.parts_folder(self.output)
        listing_uri = join(parts, "listing.csv")
        snapshot = storage.read_optional(listing_uri)
        if snapshot is None:
            progress(0, f"listing {self.source}", force=True)
            items = sharding.list_documents(storage, self.source, self.suffix)
            storage.write_bytes(listing_uri, sharding.listing_bytes(items))
        else:
            items = sharding.parse_listing(snapshot)
        ranges = sharding.part_ranges(len(items), self.chunk_size)
        existing = storage.names(folder(parts))
        missing = [r for r in ranges if sharding.part_name(*r) not in existing]
        total = len(items)
        finished = total - sum(end - start for start, end in missing)
        progress(100 * finished / max(1, total),
                 f"{total:,} documents in {len(ranges)} parts, {len(missing)} to count", force=True)
        started, already = time.monotonic(), finished
        fetched = requests = size = 0

        def report(done: int) -> None:
            rate = (finished + done - already) / max(1e-9, time.monotonic() - started)
            progress(100 * (finished + done) / max(1, total),
                     f"{finished + done:,}/{total:,} documents, {rate:,.0f}/s, {fetched:,} bytes fetched")

        written: dict[tuple[int, int], bytes] = {}
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="count") as pool:
            for start, end in missing:
                rows = sharding.count_documents(pool, storage, items[start:end], block, report)
                written[start, end] = sharding.part_bytes(rows)
                storage.write_bytes(join(parts, sharding.part_name(start, end)), written[start, end])
                finished += end - start
                fetched += sum(r.bytes_fetched for r in rows)
                requests += sum(r.requests for r in rows)
                size += sum(r.size for r in rows)
                report(0)
            master = list(pool.map(
                lambda r: written.get(r) or storage.read_bytes(join(parts, sharding.part_name(*r))), ranges))
        self.output().write(sharding.master_bytes(master))
        share = f" ({100 * fetched / size:.2f}% of {size:,})" if size else ""
        progress(100, f"{total:,} documents counted; this run fetched {fetched:,} bytes{share} "
                      f"in {requests:,} requests, {time.monotonic() - started:.1f} s", force=True)


class ShardManifest(luigi.Task):
    """``shard_1.txt`` ... ``shard_N.txt`` (one URI a line) balanced by pages, and shard_summary.json."""

    page_counts = luigi.Parameter(description="master CSV from CountPages")
    shards = luigi.IntParameter(description="number of shards")
    min_pages = luigi.IntParameter(default=1, description="leave out documents with fewer pages")
    skip_errors = luigi.BoolParameter(default=False, description="leave out rows with an error instead of failing")
    output_prefix = luigi.Parameter(default="", description="where the shard files go; '' = [s3] shard_prefix")
    source_base = luigi.Parameter(default="", description="prefix for page-count keys that are not URIs")

    @property
    def prefix(self) -> str:
        prefix = self.output_prefix or S3Config().shard_prefix
        if not prefix:
            raise ValueError("ShardManifest needs --output-prefix or [s3] shard_prefix")
        return prefix

    def output(self) -> dict[str, MarkerTarget]:
        targets = {f"shard_{k}": MarkerTarget(join(self.prefix, sharding.shard_name(k))) for k in range(1, self.shards + 1)}
        return {**targets, "summary": MarkerTarget(join(self.prefix, sharding.SUMMARY_NAME))}

    def run(self) -> None:
        storage = Storage()
        rows = sharding.csv_rows(storage.read_bytes(self.page_counts))
        documents, skipped = sharding.select_documents(
            rows, min_pages=self.min_pages, skip_errors=self.skip_errors, source_base=self.source_base)
        assigned = sharding.balance(documents, self.shards)
        targets = self.output()
        for k, uris in enumerate(assigned, start=1):
            targets[f"shard_{k}"].write(sharding.shard_file_bytes(uris))
        summary = sharding.shard_summary(assigned, documents, skipped, page_counts=self.page_counts,
                                         min_pages=self.min_pages, skip_errors=self.skip_errors)
        # The summary is written last: it is the mark that every shard file is in place.
        targets["summary"].write((json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        log.info("ShardManifest: %s documents, %s pages in %s shards (max imbalance %.2f%%), %s skipped",
                 f"{summary['documents']:,}", f"{summary['pages']:,}", self.shards,
                 100 * summary["max_imbalance"], f"{len(skipped):,}")


class ShardFile(luigi.ExternalTask):
    """A shard manifest made elsewhere (by ShardManifest on another machine)."""

    uri = luigi.Parameter()

    def output(self) -> MarkerTarget:
        return MarkerTarget(self.uri)


def _required(cfg: S3Config, *names: str) -> None:
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise ValueError(f"set {', '.join(missing)} in luigi.cfg [s3]")


class RunShard(luigi.Task):
    """Process one shard on this node: every document without a .done marker, N at a time."""

    shard = luigi.IntParameter(description="shard number, from 1")

    def requires(self) -> ShardFile:
        cfg = S3Config()
        _required(cfg, "shard_prefix")
        return ShardFile(join(cfg.shard_prefix, sharding.shard_name(self.shard)))

    def output(self) -> MarkerTarget:
        cfg = S3Config()
        _required(cfg, "status_prefix")
        return MarkerTarget(sharding.shard_marker_uri(cfg.status_prefix, self.shard))

    def settings(self) -> sharding.ShardSettings:
        cfg, ocr = S3Config(), OCRConfig()
        _required(cfg, "status_prefix", "output_prefix", "work_dir")
        engine = cfg.engine or ocr.engine
        if engine not in ENGINES:
            raise ValueError(f"[s3] engine {engine!r} is unknown; use one of {', '.join(ENGINES)}")
        if engine == "command":
            _required(cfg, "command")
        return sharding.ShardSettings(
            shard=self.shard,
            status_prefix=cfg.status_prefix,
            output_prefix=cfg.output_prefix,
            work_dir=Path(cfg.work_dir).resolve(),
            engine=engine,
            command=cfg.command,
            engine_settings=EngineSettings(
                workers=ocr.engine_workers, tesseract_lang=ocr.tesseract_lang, tesseract_dpi=ocr.tesseract_dpi,
                olmocr_python=ocr.olmocr_python, olmocr_args=shlex.split(ocr.olmocr_args),
                max_page_error_rate=ocr.max_page_error_rate, document_timeout=ocr.document_timeout,
                document_memory_mb=ocr.document_memory_mb,
            ),
            parallel=cfg.parallel_documents,
            attempts=cfg.document_attempts,
            timeout=cfg.document_timeout,
        )

    def run(self) -> None:
        settings = self.settings()
        storage = Storage(S3Settings.from_config(pool=settings.parallel * 4))
        uris = sharding.parse_shard_file(self.input().read())
        plan = sharding.plan_shard(storage, settings, uris)
        progress = _Progress(self)
        for line in plan.rejected:
            log.warning("RunShard %s: shard file line rejected: %s", self.shard, line["reason"])
        if plan.redo:
            log.warning("RunShard %s: %s documents had a .done marker but not all its outputs (first: %s); "
                        "they are run again", self.shard, len(plan.redo), plan.redo[0])
        progress(100 * len(plan.done) / max(1, len(uris)),
                 f"shard {self.shard}: {len(uris):,} documents, {len(plan.done):,} done, "
                 f"{len(plan.gave_up):,} failed for good, {len(plan.todo):,} to run", force=True)
        counts = {"ok": 0, "failed": 0}

        def on_done(outcome: sharding.Outcome) -> None:
            counts["ok" if outcome.ok else "failed"] += 1
            if not outcome.ok:
                log.warning("RunShard %s: %s failed (attempt %s): %s", self.shard, outcome.uri,
                            outcome.attempts, outcome.error[:300])
            finished = len(plan.done) + counts["ok"]
            progress(100 * finished / max(1, len(uris)),
                     f"shard {self.shard}: {finished:,}/{len(uris):,} done, {counts['failed']:,} failed this run")

        outcomes = sharding.run_documents(storage, settings, plan.todo, on_done)
        ran = {o.uri: o.outputs for o in outcomes if o.ok}
        lost = sharding.drop_unconfirmed(storage, settings, list(ran), ran)
        if lost:
            uri, missing = next(iter(lost.items()))
            raise RuntimeError(
                f"shard {self.shard}: the uploaded outputs of {len(lost)} documents are not in storage "
                f"(first: {uri}: {missing[0]}); their .done markers were removed; rerun RunShard "
                f"--shard {self.shard} to run them again")
        retry = [o for o in outcomes if not o.ok and o.attempts < settings.attempts]
        if retry:
            raise RuntimeError(
                f"shard {self.shard}: {len(retry)} documents failed (first: {retry[0].uri}: {retry[0].error[:200]}); "
                f"their .failed markers are under {settings.status_prefix}; rerun RunShard --shard {self.shard} "
                f"to retry them (at most {settings.attempts} attempts each)"
            )
        gave_up = plan.gave_up + [o.uri for o in outcomes if not o.ok]
        self.output().write((json.dumps({
            "shard": self.shard,
            "documents": len(uris),
            "done": len(uris) - len(gave_up) - len(plan.rejected),
            "failed": gave_up,
            "rejected": plan.rejected,
        }, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        progress(100, f"shard {self.shard}: finished, {len(gave_up)} documents failed for good", force=True)


class _AlwaysRun(luigi.Task):
    def complete(self) -> bool:
        return False


class ShardStatus(_AlwaysRun):
    """Print done / failed / remaining documents and pages per shard, from one listing of the markers."""

    shard_prefix = luigi.Parameter(default="", description="'' = [s3] shard_prefix")
    status_prefix = luigi.Parameter(default="", description="'' = [s3] status_prefix")
    page_counts = luigi.Parameter(default="", description="'' = the master CSV the shard summary names")

    def run(self) -> None:
        cfg = S3Config()
        shard_prefix, status_prefix = self.shard_prefix or cfg.shard_prefix, self.status_prefix or cfg.status_prefix
        if not shard_prefix or not status_prefix:
            raise ValueError("set --shard-prefix and --status-prefix, or [s3] shard_prefix and status_prefix")
        status = sharding.collect_status(Storage(), shard_prefix, status_prefix, self.page_counts)
        print(sharding.format_status(status), flush=True)
        overall = status["overall"]
        if self.set_status_message and overall:
            self.set_status_message(f"{overall['done_documents']:,}/{overall['total_documents']:,} documents done")


class Preflight(_AlwaysRun):
    """Check this node before RunShard: disk space, temp dir, S3 access, GPU, engine command."""

    def run(self) -> None:
        cfg, ocr = S3Config(), OCRConfig()
        engine = cfg.engine or ocr.engine
        work = Path(cfg.work_dir).resolve()
        checks = [
            sharding.free_space_check("root volume free", Path("/"), cfg.min_root_free_gb),
            sharding.free_space_check("work volume free", work, cfg.min_work_free_gb),
            sharding.tempdir_check(work),
            *sharding.access_checks(
                Storage(),
                {"shard_prefix": cfg.shard_prefix, "status_prefix": cfg.status_prefix, "output_prefix": cfg.output_prefix},
                writable={"status_prefix", "output_prefix"},
            ),
            sharding.engine_check(engine, cfg.command, ocr.olmocr_python),
        ]
        if engine == "olmocr":
            checks.append(sharding.gpu_check())
        report = sharding.format_checks(checks)
        print(report, flush=True)
        failed = [c for c in checks if not c.ok]
        if failed:
            raise RuntimeError(f"Preflight: {len(failed)} checks failed: " + "; ".join(
                f"{c.name}: {c.fix}" for c in failed))
