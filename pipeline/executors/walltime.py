"""The walltime a chunk asks for: (base + seconds/page x pages) x (1 + buffer), capped.

The base and the rate are configured ([slurm] walltime_*), or fitted by least squares on this
base_dir's completed chunks (walltime_model = fitted). The cap is the partition's MaxTime, which
only a SLURM run looks up (pipeline.executors.slurm.client); nothing here needs SLURM.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import events
from pipeline.executors.records import Attempt, attempts, completed_chunks


@dataclass(frozen=True)
class WalltimeModel:
    """(base_seconds + seconds_per_page * pages) * (1 + buffer), capped at max_seconds."""

    base_seconds: float = 300.0
    seconds_per_page: float = 6.0
    buffer: float = 0.2
    max_seconds: int | None = None

    def seconds(self, pages: int, factor: float = 1.0) -> int:
        value = math.ceil((self.base_seconds + self.seconds_per_page * pages) * (1 + self.buffer) * factor)
        return min(value, self.max_seconds) if self.max_seconds else value


def format_walltime(seconds: int) -> str:
    """SLURM's D-HH:MM:SS (whole minutes rounded up, as SLURM would)."""
    minutes = max(1, math.ceil(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


@dataclass(frozen=True)
class Fit:
    """elapsed = startup_seconds + seconds_per_page * pages, by least squares over ``samples`` chunks."""

    startup_seconds: float
    seconds_per_page: float
    samples: int


def samples(runs: Iterable[Attempt]) -> list[tuple[int, float]]:
    """(pages, elapsed) of every completed attempt that had pages."""
    return [(a.pages, float(a.elapsed)) for a in runs if a.completed and a.elapsed is not None and a.pages > 0]


def fit_startup(points: list[tuple[int, float]]) -> Fit | None:
    """Least-squares line through (pages, elapsed); None without two different page counts."""
    n = len(points)
    if n < 2:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return Fit(mean_y - slope * mean_x, slope, n)


def fitted_walltime(fixed: WalltimeModel, runs: Iterable[Attempt], min_chunks: int = 5) -> WalltimeModel:
    """``fixed`` with its base and seconds/page taken from the fit over completed chunks.

    Falls back to ``fixed`` below ``min_chunks`` samples or when the fit finds no positive rate. The
    buffer and the cap stay; a negative startup (noise on small chunks) counts as zero.
    """
    points = samples(completed_chunks(runs))
    fit = fit_startup(points) if len(points) >= min_chunks else None
    if fit is None or fit.seconds_per_page <= 0:
        return fixed
    return replace(fixed, base_seconds=max(0.0, fit.startup_seconds), seconds_per_page=fit.seconds_per_page)


def configured_walltime(fixed: WalltimeModel, model: str, metrics: Path, fit_min_chunks: int) -> WalltimeModel:
    """The model a site configured: ``fixed``, or for model 'fitted' the fit over the records in
    ``metrics`` (``fixed`` until ``fit_min_chunks`` chunks completed)."""
    if model == "fixed":
        return fixed
    return fitted_walltime(fixed, attempts(events.read(metrics)), fit_min_chunks)


def capped(model: WalltimeModel, max_seconds: int | None) -> WalltimeModel:
    """``model`` capped at ``max_seconds`` (a partition's MaxTime); unchanged when there is no limit."""
    return replace(model, max_seconds=max_seconds) if max_seconds else model
