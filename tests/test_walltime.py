"""pipeline.executors.walltime: the model, SLURM's time format, the fit on recorded chunks, the cap."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import events
from pipeline.executors import walltime
from pipeline.executors.records import attempts
from pipeline.executors.walltime import WalltimeModel, format_walltime

from .test_metrics import recorded


@pytest.mark.parametrize("pages, expected", [
    (0, 360),          # (300 + 0) * 1.2
    (100, 1080),       # (300 + 600) * 1.2
    (1500, 11160),     # (300 + 9000) * 1.2
])
def test_default_walltime_is_base_plus_six_seconds_a_page_plus_twenty_percent(pages, expected):
    assert WalltimeModel().seconds(pages) == expected


def test_walltime_fractions_round_up_to_whole_seconds():
    # (300 + 6 * 7) * 1.2 = 410.4: the job must not get less than the model says
    assert WalltimeModel().seconds(7) == 411


def test_walltime_settings_factor_and_cap():
    model = WalltimeModel(base_seconds=60, seconds_per_page=2, buffer=0.5)
    assert model.seconds(10) == 120               # (60 + 20) * 1.5
    assert model.seconds(10, factor=2) == 240     # a resubmission after TIMEOUT gets more
    capped = WalltimeModel(max_seconds=3600)
    assert capped.seconds(100) == 1080            # under the cap: unchanged
    assert capped.seconds(1500) == 3600           # 11160 capped by the partition
    assert capped.seconds(100, factor=10) == 3600


@pytest.mark.parametrize("seconds, text", [
    (0, "00:01:00"),
    (59, "00:01:00"),
    (60, "00:01:00"),
    (61, "00:02:00"),
    (3600, "01:00:00"),
    (11160, "03:06:00"),
    (86400, "1-00:00:00"),
    (90061, "1-01:02:00"),
    (3 * 86400 + 5 * 3600 + 7 * 60, "3-05:07:00"),
])
def test_format_walltime_is_slurm_time_rounded_up_to_minutes(seconds, text):
    assert format_walltime(seconds) == text


def test_fit_gives_startup_and_seconds_per_page() -> None:
    fit = walltime.fit_startup(walltime.samples(attempts(recorded())))
    assert fit is not None and fit.samples == 5  # the TIMEOUT and FAILED attempts are not samples
    assert fit.startup_seconds == pytest.approx(40.0)
    assert fit.seconds_per_page == pytest.approx(2.0)
    assert walltime.fit_startup([(100, 300.0), (100, 320.0)]) is None  # one page count: no line


def test_walltime_model_fixed_and_fitted() -> None:
    fixed = WalltimeModel(300, 6, 0.2)
    fitted = walltime.fitted_walltime(fixed, attempts(recorded()), min_chunks=5)
    assert fitted.base_seconds == pytest.approx(40.0) and fitted.seconds_per_page == pytest.approx(2.0)
    assert fitted.buffer == 0.2
    assert fitted.seconds(100) == 288  # (40 + 2 * 100) * 1.2
    # Four completed chunks are too few: the fixed model stays.
    fewer = [r for r in recorded() if not (r["chunk"] == 4 and r.get("state"))]
    assert walltime.fitted_walltime(fixed, attempts(fewer), min_chunks=5) == fixed
    assert fixed.seconds(100) == 1080  # (300 + 6 * 100) * 1.2


def test_configured_walltime_fits_on_the_metrics_file_only_when_asked(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.ndjson"
    fixed = WalltimeModel(300, 6, 0.2)
    assert walltime.configured_walltime(fixed, "fitted", metrics, 5) == fixed  # nothing ran yet
    events.append(metrics, recorded())
    assert walltime.configured_walltime(fixed, "fixed", metrics, 5) == fixed
    fitted = walltime.configured_walltime(fixed, "fitted", metrics, 5)
    assert fitted.seconds(100) == 288  # (40 + 2 * 100) * 1.2
    assert walltime.configured_walltime(fixed, "fitted", metrics, 6) == fixed  # five chunks are too few


def test_capped_at_a_partitions_max_time() -> None:
    model = WalltimeModel(300, 6, 0.2)
    assert walltime.capped(model, 3600).seconds(1000) == 3600  # 7560 over the cap
    assert walltime.capped(model, 3600).seconds(100) == 1080
    assert walltime.capped(model, None) == model  # an unlimited partition
