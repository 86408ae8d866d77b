"""What every task shares: the layout and the collection from luigi.cfg, the batch parameter,
progress reporting."""
from __future__ import annotations

import functools
import inspect
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import luigi

from pipeline import collection, events, startup_checks
from pipeline.config import PipelineConfig, S3Config
from pipeline.layout import BatchPaths, Layout, normalize_batch
from pipeline.ops import status
from pipeline.stages import batches


def layout() -> Layout:
    config = PipelineConfig()
    return Layout(Path(config.base_dir).expanduser().absolute(), config.shard_width)


def compact_events(progress: Callable[[str], None]) -> None:
    """Compact the event log once it passed [pipeline] events_compact_mb, so its readers stay fast."""
    limit = PipelineConfig().events_compact_mb
    if limit > 0:
        events.compact(layout().events, min_bytes=int(limit * 2**20), progress=progress)


def current_collection() -> str:
    """This base_dir's collection: [pipeline] collection, else the name recorded in base_dir (see
    pipeline/collection.py; the first run records it when it starts: pipeline/run_control.py)."""
    return collection.resolve(layout().base, PipelineConfig().collection)


def cloud_collection() -> str:
    """The cloud shards' collection: [pipeline] collection, else a name of [s3] status_prefix."""
    s3 = S3Config()
    return PipelineConfig().collection or collection.location_name(s3.status_prefix or s3.shard_prefix)


class CollectionParameter(luigi.Parameter):
    """Left out (the command line never sets it), the collection of the settings (``resolve``)."""

    def __init__(self, resolve: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(default="", description="set by [pipeline] collection, else the name recorded in "
                         "base_dir (cloud shards: made from [s3] status_prefix); not meant for the command line",
                         positional=False, **kwargs)  # ShardFile(uri) and the like keep their meaning
        self.resolve = resolve

    def normalize(self, x: object) -> str:
        return str(x) or self.resolve()


class InCollection:
    """A task of one collection: luigid knows it by its collection too, so two collections sharing a
    luigid never take each other's tasks for their own, and the visualizer shows the collection among
    the task's parameters. A task passes ``collection=self.collection`` to the tasks it requires."""

    collection = CollectionParameter(current_collection)

    def __repr__(self) -> str:
        # A run is of one collection: its own lines (progress, failures, Luigi's summary) name the task
        # without it, as they always did.
        shown = [f"{name}={param.serialize(getattr(self, name))}"
                 for name, param in self.get_params() if param.significant and name != "collection"]  # type: ignore[attr-defined]
        return f"{self.get_task_family()}({', '.join(shown)})"  # type: ignore[attr-defined]


class InCloudCollection(InCollection):
    """A cloud shard task: its collection lives on S3, not in a base_dir."""

    collection = CollectionParameter(cloud_collection)


class BatchParameter(luigi.Parameter):
    """A batch number: '7', '0007' and 'batch_0007' all name batch 0007 (one task id)."""

    def normalize(self, x: object) -> str:
        return normalize_batch(str(x))


class ProgressMixin:
    """Progress for the luigid visualizer and a throttled progress line on the terminal."""

    _last_line = 0.0
    line_every = 1.0  # seconds between terminal lines (a forced or final line always shows)

    def report(self, done: int, total: int, message: str) -> None:
        percent = 100 if total == 0 else int(100 * done / total)
        self.progress(percent, f"{done}/{total} ({percent}%) {message}", force=done >= total)

    def progress(self, percent: float, message: str, force: bool = False) -> None:
        """The visualizer's percentage and status (when run by a Luigi worker), and a terminal line."""
        if self.set_progress_percentage:  # type: ignore[attr-defined]
            self.set_progress_percentage(round(percent, 1))  # type: ignore[attr-defined]
            self.set_status_message(message)  # type: ignore[attr-defined]
        now = time.monotonic()
        if force or now - self._last_line >= self.line_every:
            self._last_line = now
            print(f"[{self}] {message}", file=sys.stderr, flush=True)


class BatchNotFound(LookupError):
    """A batch task other than CreateBatch was asked for a batch that was never opened."""


class BatchTask(InCollection, ProgressMixin, luigi.Task):
    batch = BatchParameter(description="batch number, e.g. 7 or 0007")
    checked_at_start: ClassVar[tuple[str, ...]] = ("base_dir", "batch")  # see pipeline/run_control.py

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None:
            if inspect.isgeneratorfunction(run):  # the lock would be released at its first yield
                raise TypeError(f"{cls.__name__}.run: batch stages run under a lock and cannot yield tasks")
            cls.run = _once_per_batch(run)  # type: ignore[method-assign, assignment]

    @property
    def layout(self) -> Layout:
        return layout()

    @property
    def paths(self) -> BatchPaths:
        return BatchPaths(self.layout.batch_dir(self.batch))

    def on_failure(self, exception: BaseException) -> str:
        if self.paths.dir.is_dir():  # Status shows the batch as failed until it moves again
            status.record_failure(self.layout, self.batch, self.get_task_family(), exception)
        return str(super().on_failure(exception))

    def require_existing_batch(self) -> None:
        """Only CreateBatch (and ProcessAll through it) opens a batch; the later stages never do."""
        problem = startup_checks.missing_batch_problem(self.layout, self.batch)
        if problem:
            raise BatchNotFound(problem)


def _once_per_batch(run: Callable[[BatchTask], None]) -> Callable[[BatchTask], None]:
    """A stage's run() under the batch's lease for that stage (see batches.run_once)."""

    @functools.wraps(run)
    def locked(task: BatchTask) -> None:
        if not task.paths.dir.is_dir():  # CreateBatch opens the batch under a lock of its own
            return run(task)
        batches.run_once(task.paths, task.get_task_family(), task.complete, lambda: run(task), task.report,
                         PipelineConfig().lease_seconds)

    return locked
