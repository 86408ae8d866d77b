"""Run summaries (pipeline.ops.report), in-process, over a base_dir the real pipeline filled: which
batches a run touched, what it finalized and quarantined, and the lines ProcessAll prints."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline import events, samples
from pipeline.layout import Layout
from pipeline.ops import report

from .conftest import Site, write_config
from .s3server import RETCODES

PAGES = {"alpha": 2, "beta": 3}


@dataclass(frozen=True)
class Finished:
    layout: Layout
    before: str  # an ISO time just before the run
    after: str  # and just after it
    output: str  # what the run printed (stdout and stderr)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """ProcessAll over two documents and an empty file, then a batch folder of the older scripts."""
    root = tmp_path_factory.mktemp("report")
    incoming = root / "incoming"
    incoming.mkdir()
    for name, pages in PAGES.items():
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"{name} page {n}" for n in range(pages)]))
    (incoming / "empty.pdf").write_bytes(b"")
    write_config(root / "luigi.cfg", {
        "core": {"autoload_range": "false"}, "retcode": RETCODES, "pipeline": {"base_dir": root / "data"},
        "download": {"source": incoming}, "backpressure": {"min_free_gb": 0.1},
        "ocr": {"executor": "local", "engine": "text", "engine_workers": 1},
    })
    site = Site(root, root / "luigi.cfg")
    before = events.now_iso()
    output = site.luigi("ProcessAll", "--run-id", "one", merged=True).stdout
    after = events.now_iso()
    old = site.layout.batch_dir(2)  # not finalized yet: every run counts it as open
    old.mkdir()
    (old / "gamma.pdf").write_bytes(samples.text_pdf(["gamma"]))
    return Finished(site.layout, before, after, output)


def test_a_run_touches_the_batches_it_finalized_and_every_open_one(finished: Finished) -> None:
    assert report.batches_since(finished.layout, finished.before) == ["0001", "0002"]
    assert report.batches_since(finished.layout, finished.after) == ["0002"]  # batch 1 was finalized before


def test_the_summary_totals_what_was_finalized_and_quarantined(finished: Finished) -> None:
    summary = report.collection_summary(finished.layout, ["0001", "0002"], 1800.0, finished.before)

    assert summary["documents_finalized"] == 2
    assert summary["pages"] == sum(PAGES.values())
    assert summary["pages_per_hour"] == 2 * sum(PAGES.values())  # in half an hour
    assert summary["elapsed_seconds"] == 1800.0
    assert summary["open_batches"] == ["0002"]
    (quarantined,) = summary["quarantined"]
    assert (quarantined["identifier"], quarantined["reason"]) == ("empty", "empty") and quarantined["message"]
    assert summary["quarantine_reasons"] == {"empty": 1}
    assert summary["results"] == str(finished.layout.base / "05_processed")


def test_quarantined_before_the_run_is_not_this_runs(finished: Finished) -> None:
    summary = report.collection_summary(finished.layout, ["0002"], 0.0, finished.after)
    assert summary["quarantined"] == [] and summary["quarantine_reasons"] == {}
    assert (summary["documents_finalized"], summary["pages"], summary["pages_per_hour"]) == (0, 0, 0)


def test_the_printed_summary_names_each_quarantined_file_and_the_open_batches(finished: Finished) -> None:
    summary = report.collection_summary(finished.layout, ["0001", "0002"], 1800.0, finished.before)
    message = summary["quarantined"][0]["message"]
    lines = report.format_summary(summary).splitlines()

    assert lines[0].split() == ["documents", "finalized:", "2"]
    assert lines[1].split() == ["pages:", "5"]
    assert lines[2].split() == ["quarantined:", "1"]
    assert lines[3] == f"    empty: empty ({message})"
    assert lines[-2].split() == ["results:", str(finished.layout.base / "05_processed")]
    assert lines[-1].split() == ["open", "batches:", "0002"]
    assert "open batches" not in report.format_summary({**summary, "open_batches": []})


def test_the_last_status_says_what_the_run_finalized_and_quarantined(finished: Finished) -> None:
    summary = report.collection_summary(finished.layout, ["0001", "0002"], 1800.0, finished.before)
    assert report.status_line(summary, ["0001", "0002"]) == (
        "done: 1 batch finalized, 2 documents, 5 pages, 1 quarantined; still open: 0002")
    # ProcessAll's last status (shown in the visualizer, and as its last progress line) is that line
    assert "[ProcessAll(run_id=one)] done: 1 batch finalized, 2 documents, 5 pages, 1 quarantined" in finished.output
    nothing = report.collection_summary(finished.layout, [], 0.0, finished.after)
    assert report.status_line(nothing, []) == "done: 0 batches finalized, 0 documents, 0 pages, 0 quarantined"
