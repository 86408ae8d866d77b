"""Luigi tasks of the cloud-shard deployment: CountPages, ShardManifest, RunShard, ShardStatus, Preflight.

Thin wrappers over pipeline/cloud/. Locations are s3:// URIs or local paths; shard, status and
output prefixes and the node's work folder come from luigi.cfg [s3].
"""
from __future__ import annotations

import logging
from typing import Any

import luigi

from pipeline.cloud import counting, markers, preflight, runner, shard_plan, status
from pipeline.cloud.s3 import MarkerTarget, S3Settings, Storage, join
from pipeline.config import OCRConfig, S3Config

from .base import InCloudCollection, ProgressMixin

__all__ = ["CountPages", "ShardManifest", "ShardFile", "RunShard", "ShardStatus", "Preflight"]

log = logging.getLogger("luigi-interface")


class _OutputLocation(str):
    """``--output`` (a CLI contract) hides the ``output`` method: a location Luigi can call is both."""

    def __call__(self) -> MarkerTarget:
        return MarkerTarget(str(self))


class _OutputParameter(luigi.Parameter):
    def normalize(self, x: Any) -> Any:
        return _OutputLocation(x)


class CountPages(InCloudCollection, ProgressMixin, luigi.Task):
    """Page counts of every PDF under ``--source`` into the master CSV ``key,size,pages,error``
    (ranged reads, resumable by parts: see pipeline/cloud/counting.py)."""

    source = luigi.Parameter(description="s3://bucket/prefix/ or a local folder")
    output = _OutputParameter(description="master CSV: s3:// URI or local path")  # type: ignore[assignment]
    max_workers = luigi.IntParameter(default=32, description="documents counted at once")
    chunk_size = luigi.IntParameter(default=2000, description="keys per part")
    suffix = luigi.Parameter(default=".pdf", description="count keys ending in this (any case); '' = all")

    def run(self) -> None:
        counting.count_pages(Storage(S3Settings.from_config(pool=self.max_workers)), self.source, self.output,
                             max_workers=self.max_workers, chunk_size=self.chunk_size, suffix=self.suffix,
                             block_size=S3Config().range_block_bytes, progress=self.progress)


class ShardManifest(InCloudCollection, luigi.Task):
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
        return {name: MarkerTarget(uri) for name, uri in shard_plan.shard_uris(self.prefix, self.shards).items()}

    def run(self) -> None:
        summary = shard_plan.make_shard_files(Storage(), self.page_counts, self.shards, self.prefix,
                                              min_pages=self.min_pages, skip_errors=self.skip_errors,
                                              source_base=self.source_base)
        log.info("ShardManifest: %s documents, %s pages in %s shards (max imbalance %.2f%%), %s skipped",
                 f"{summary['documents']:,}", f"{summary['pages']:,}", self.shards,
                 100 * summary["max_imbalance"], f"{summary['skipped_count']:,}")


class ShardFile(InCloudCollection, luigi.ExternalTask):
    """A shard manifest made elsewhere (by ShardManifest on another machine)."""

    uri = luigi.Parameter()

    def output(self) -> MarkerTarget:
        return MarkerTarget(self.uri)


class RunShard(InCloudCollection, ProgressMixin, luigi.Task):
    """Process one shard on this node: every document without a .done marker, N at a time."""

    shard = luigi.IntParameter(description="shard number, from 1")
    # How the shard is run, not which: RunShard(shard=K) names the same task either way.
    steal = luigi.BoolParameter(default=False, significant=False, description="then take other shards' "
                                "documents until none is left anywhere (also [s3] steal)")

    def requires(self) -> ShardFile:
        runner.require(S3Config(), "shard_prefix")
        return ShardFile(join(S3Config().shard_prefix, shard_plan.shard_name(self.shard)), collection=self.collection)

    def output(self) -> MarkerTarget | list[MarkerTarget]:
        cfg = S3Config()
        runner.require(cfg, "status_prefix")
        if self.steal or cfg.steal:  # done when no shard has work left
            return [MarkerTarget(markers.shard_marker_uri(cfg.status_prefix, k)) for k in
                    shard_plan.shard_numbers(Storage(), cfg.shard_prefix)]
        return MarkerTarget(markers.shard_marker_uri(cfg.status_prefix, self.shard))

    def run(self) -> None:
        settings = runner.ShardSettings.from_config(self.shard, S3Config(), OCRConfig(), self.steal)
        storage = Storage(S3Settings.from_config(pool=settings.parallel * 4))
        uris = shard_plan.parse_shard_file(self.input().read())
        runner.run_shard(storage, settings, uris, self.progress, log.warning)


class _AlwaysRun(InCloudCollection, luigi.Task):
    def complete(self) -> bool:
        return False


class ShardStatus(_AlwaysRun):
    """Print done / failed / remaining documents and pages per shard, from one listing of the markers."""

    shard_prefix = luigi.Parameter(default="", description="'' = [s3] shard_prefix")
    status_prefix = luigi.Parameter(default="", description="'' = [s3] status_prefix")
    page_counts = luigi.Parameter(default="", description="'' = the master CSV the shard summary names")

    def run(self) -> None:
        prefixes = status.resolve_prefixes(self.shard_prefix, self.status_prefix, S3Config())
        result = status.collect_status(Storage(), *prefixes, self.page_counts)
        print(status.format_status(result), flush=True)
        if self.set_status_message and result["overall"]:
            self.set_status_message("{done_documents:,}/{total_documents:,} documents done".format(**result["overall"]))


class Preflight(_AlwaysRun):
    """Check this node before RunShard: disk space, temp dir, S3 access, GPU, engine command."""

    def run(self) -> None:
        checks = preflight.node_checks(Storage(), S3Config(), OCRConfig())
        print(preflight.format_checks(checks), flush=True)
        if preflight.failure_summary(checks):
            raise RuntimeError(preflight.failure_summary(checks))
