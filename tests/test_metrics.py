"""pipeline.ops.metrics and MetricsSummary on recorded metrics; the walltime model through PlanChunks.

tests/test_records.py and tests/test_walltime.py use the recorded chunks below too.

The recorded chunks lie on elapsed = 40 s + 2 s x pages plus residuals that sum to zero and are
orthogonal to the page counts, so least squares must give exactly 40 s and 2 s/page.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline import atomic, events, samples
from pipeline.layout import BatchPaths, Layout
from pipeline.ops import metrics

PAGES = [100, 200, 300, 400, 500]
ELAPSED = [241, 438, 640, 842, 1039]  # 40 + 2 * pages + [1, -2, 0, 2, -1]
REQUESTED = [600, 600, 900, 1200, 1200]
# Two chunks at a time; the last one ends on the next (UTC) day.
TIMES = [
    ("2026-01-01T23:00:00+00:00", "2026-01-01T23:04:01+00:00"),
    ("2026-01-01T23:00:00+00:00", "2026-01-01T23:07:18+00:00"),
    ("2026-01-01T23:04:01+00:00", "2026-01-01T23:14:41+00:00"),
    ("2026-01-01T23:07:18+00:00", "2026-01-01T23:21:20+00:00"),
    ("2026-01-02T00:10:00+00:00", "2026-01-02T00:27:19+00:00"),
]


def submit(chunk: int, pages: int, job: str, walltime: int) -> dict[str, Any]:
    return {"batch": "0001", "chunk": chunk, "pages": pages, "executor": "slurm", "walltime_requested": walltime,
            "job_id": job, "attempt": 1, "submitted_at": "2026-01-01T22:59:00+00:00"}


def end(chunk: int, pages: int, job: str, state: str, elapsed: int, start: str, stop: str,
        exit_code: str = "0:0") -> dict[str, Any]:
    return {"batch": "0001", "chunk": chunk, "pages": pages, "executor": "slurm", "job_id": job, "state": state,
            "exit_code": exit_code, "elapsed": elapsed, "start": start, "end": stop}


def recorded() -> list[dict[str, Any]]:
    records = [submit(i, p, "11", w) for i, (p, w) in enumerate(zip(PAGES, REQUESTED, strict=True))]
    records += [submit(5, 600, "11", 720), submit(6, 10, "11", 720)]
    records += [end(i, p, "11", "COMPLETED", e, *t)
                for i, (p, e, t) in enumerate(zip(PAGES, ELAPSED, TIMES, strict=True))]
    # Chunk 5 ran out of time and is in the queue again; chunk 6 failed. Neither counts as done.
    records += [
        end(5, 600, "11", "TIMEOUT", 720, "2026-01-01T23:21:20+00:00", "2026-01-01T23:33:20+00:00", "0:15"),
        end(6, 10, "11", "FAILED", 5, "2026-01-01T23:21:20+00:00", "2026-01-01T23:21:25+00:00", "1:0"),
        submit(5, 600, "12", 1080),
    ]
    return records


def test_peak_concurrency_counts_an_end_before_a_start_at_the_same_moment() -> None:
    runs = [r for r in metrics.attempts(recorded()) if r.state == "COMPLETED"]
    assert metrics.peak_concurrency(runs) == 2
    assert metrics.peak_concurrency(runs[:1]) == 1


def expected_summary_figures(summary: dict[str, Any], at_once: int) -> None:
    """The recorded figures, worked out by hand."""
    assert summary["chunks_done"] == 5 and summary["pages_done"] == 1500
    assert summary["attempts"] == 8 and summary["timeouts"] == 1
    assert summary["states"] == {"COMPLETED": 5, "FAILED": 1, "TIMEOUT": 1, "UNFINISHED": 1}
    assert summary["elapsed_seconds"] == {"mean": 640.0, "max": 1039.0}  # 3200 / 5
    assert summary["walltime_requested_seconds"] == {"mean": 900.0, "max": 1200.0}  # 4500 / 5
    assert summary["seconds_per_page"] == pytest.approx(3200 / 1500)
    # 23:00:00 to 00:27:19 the next day is 5,239 s.
    assert summary["pages_per_hour"] == pytest.approx(1500 / 5239 * 3600)
    assert summary["pages_per_day"] == pytest.approx(1500 / 5239 * 3600 * 24)
    assert summary["by_day"]["2026-01-01"]["pages"] == 1000
    assert summary["by_day"]["2026-01-01"]["pages_per_hour"] == pytest.approx(1000 / 1280 * 3600)  # 23:00 - 23:21:20
    assert summary["by_day"]["2026-01-02"]["pages_per_hour"] == pytest.approx(500 / 1039 * 3600)
    assert summary["walltime_ratio"]["overall"] == pytest.approx(4500 / 3200)
    assert summary["walltime_ratio"]["min"] == pytest.approx(1200 / 1039)
    assert summary["fit"]["startup_seconds"] == pytest.approx(40.0)
    assert summary["fit"]["seconds_per_page"] == pytest.approx(2.0)
    # Waiting: one open chunk of 250 pages, 100 unplanned pages, 200 downloaded pages; at 200 pages a
    # chunk the last 300 make 2 more chunks: (3 * 40 + 550 * 2) / at_once seconds.
    waiting = summary["waiting"]
    assert (waiting["chunks"], waiting["pages"], waiting["documents_downloaded"]) == (3, 550, 2)
    assert waiting["projected_seconds"] == pytest.approx((3 * 40 + 550 * 2) / at_once)


def test_summary_of_recorded_metrics() -> None:
    waiting = metrics.Waiting(chunk_pages=[250], unplanned_pages=100, documents=2, document_pages=200)
    summary = metrics.summarize(metrics.attempts(recorded()), waiting, pages_per_chunk=200)
    assert summary["parallel_chunks"] == {"chunks": 2, "source": "observed"}
    expected_summary_figures(summary, at_once=2)
    configured = metrics.summarize(metrics.attempts(recorded()), waiting, pages_per_chunk=200, parallel=8)
    assert configured["parallel_chunks"] == {"chunks": 8, "source": "config"}
    assert configured["waiting"]["projected_seconds"] == pytest.approx((3 * 40 + 550 * 2) / 8)
    # One chunk size only: no line to fit, so the projection takes the average seconds per page.
    first = [r for r in recorded() if r["chunk"] == 0]
    single = metrics.summarize(metrics.attempts(first), waiting, pages_per_chunk=200)
    assert single["fit"] is None and single["rate"]["source"] == "average"
    assert single["waiting"]["projected_seconds"] == pytest.approx(550 * 241 / 100)
    empty = metrics.summarize([], metrics.Waiting([]), pages_per_chunk=200)
    assert empty["chunks_done"] == 0 and empty["waiting"]["projected_seconds"] is None
    assert "unknown" in metrics.format_summary(empty)


def write_waiting_work(layout: Layout) -> None:
    """Batch 1 finalized, batch 2 with one of two chunks done, batch 3 not planned, two downloads waiting."""
    finished = BatchPaths(layout.batch_dir(1))
    atomic.write_json(finished.batch_record, {"documents": {"old": {"pages": 1500}}})
    atomic.write_json(finished.chunk_plan, {"chunks": [{"index": 0, "pages": 1500, "documents": ["old"]}]})
    atomic.write_json(finished.finalized, {"batch": "0001"})
    running = BatchPaths(layout.batch_dir(2))
    atomic.write_json(running.batch_record, {"documents": {"r1": {"pages": 300}, "r2": {"pages": 250}}})
    atomic.write_json(running.chunk_plan, {"chunks": [{"index": 0, "pages": 300, "documents": ["r1"]},
                                                      {"index": 1, "pages": 250, "documents": ["r2"]}]})
    atomic.write_json(running.done_marker(0), {"chunk": 0, "missing": []})
    unplanned = BatchPaths(layout.batch_dir(3))
    atomic.write_json(unplanned.batch_record, {"documents": {"u1": {"pages": 40}, "u2": {"pages": 60}}})
    for identifier, pages in (("d1", 150), ("d2", 50)):
        atomic.write_bytes(layout.downloaded_pdf(identifier), samples.text_pdf(["one page"]))
        atomic.write_json(layout.downloaded_meta(identifier), {"pages": pages})


def test_waiting_work_reads_open_batches_and_downloads(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    write_waiting_work(layout)
    assert metrics.waiting_work(layout) == metrics.Waiting([250], 100, 2, 200)
    # A batch folder of the older scripts (PDFs, no batch.json yet) counts with its pages.
    atomic.write_bytes(layout.batch_dir(4) / "old.pdf", samples.text_pdf(["one", "two", "three"]))
    assert metrics.waiting_work(layout) == metrics.Waiting([250], 103, 2, 200)


def test_write_summary_writes_the_figures_of_the_moment(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    events.append(layout.metrics, recorded())
    write_waiting_work(layout)
    output = layout.manifests / "metrics_summary.json"
    summary, note = metrics.write_summary(layout, output, pages_per_chunk=200, parallel=None, slurm=None)
    assert note == "" and summary["parallel_chunks"] == {"chunks": 2, "source": "observed"}
    expected_summary_figures(summary, at_once=2)
    written = json.loads(output.read_text())
    assert written.pop("time") and written == json.loads(json.dumps(summary))


def test_metrics_summary_task_on_recorded_metrics(make_site) -> None:
    site = make_site(ocr__pages_per_chunk=200, ocr__parallel_chunks=2)
    events.append(site.layout.metrics, recorded())
    write_waiting_work(site.layout)
    result = site.luigi("MetricsSummary")
    summary = json.loads((site.layout.manifests / "metrics_summary.json").read_text())
    assert summary["parallel_chunks"] == {"chunks": 2, "source": "config"}
    expected_summary_figures(summary, at_once=2)
    printed = result.stdout
    for line in ("chunks done:              5 (8 job attempts: 5 COMPLETED, 1 FAILED, 1 TIMEOUT, 1 UNFINISHED)",
                 "pages done:               1500",
                 "elapsed per chunk:        mean 0:10:40, max 0:17:19",
                 "walltime requested/chunk: mean 0:15:00, max 0:20:00",
                 "requested/actual ratio:   1.41 overall, 1.15 for the chunk closest to its limit",
                 "TIMEOUTs:                 1",
                 "seconds per page:         2.13",
                 "pages/hour:               1,031 (24,738 pages/day)",
                 "2026-01-01 (UTC):       1000 pages in 4 chunks, 2,812 pages/hour",
                 "job startup overhead:     40.0 s + 2.000 s/page (least squares over 5 chunks)",
                 "waiting:                  550 pages in ~3 chunks (2 documents in 01_downloaded)",
                 "projected time to finish: 0:10:10 with 2 chunks at once (config), fit rate"):
        assert line in printed, (line, printed)
    # A second run reports again (the figures are of the moment) and reads the new metrics.
    events.append(site.layout.metrics, [end(5, 600, "12", "COMPLETED", 1240, "2026-01-02T01:00:00+00:00",
                                              "2026-01-02T01:20:40+00:00")])
    again = site.luigi("MetricsSummary")
    assert "chunks done:              6" in again.stdout
    assert json.loads((site.layout.manifests / "metrics_summary.json").read_text())["pages_done"] == 2100


@pytest.mark.parametrize("model, expected", [
    ("fixed", 240),   # (100 + 3 * 20) * 1.5, the configured fixed values
    ("fitted", 120),  # (40 + 2 * 20) * 1.5, fitted on the recorded chunks
])
def test_plan_chunks_writes_the_configured_walltime(make_site, tmp_path: Path, model: str, expected: int) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "twenty.pdf").write_bytes(samples.text_pdf([f"page {n}" for n in range(20)]))
    site = make_site(source=incoming, ocr__pages_per_chunk=20, slurm__walltime_model=model,
                     slurm__walltime_base_seconds=100, slurm__walltime_seconds_per_page=3, slurm__walltime_buffer=0.5)
    events.append(site.layout.metrics, recorded())
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("PlanChunks", "--batch", "1")
    [chunk] = json.loads(BatchPaths(site.layout.batch_dir(1)).chunk_plan.read_text())["chunks"]
    assert (chunk["pages"], chunk["walltime_seconds"]) == (20, expected)
