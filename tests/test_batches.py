"""pipeline.stages.batches in-process: new batches from waiting PDFs, adoption of the older scripts'
batch folders, batch numbers, and the per-stage lock that keeps two processes off one stage."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline import atomic, events, samples
from pipeline.layout import PENDING_LEGACY, BatchPaths, Layout
from pipeline.stages import batches

from .conftest import snapshot
from .stage_inputs import Recorder, downloaded, write_results


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


def test_waiting_documents_are_complete_downloads_in_01_and_pdfs_of_an_old_02(tmp_path: Path) -> None:
    layout = Layout(tmp_path, 2)
    pdf = samples.text_pdf(["page"])
    files = {
        layout.downloaded_pdf("b doc"): pdf,
        layout.downloaded_meta("b doc"): b"{}",
        layout.downloaded_pdf("a doc"): pdf,
        layout.downloaded_meta("a doc"): b"{}",
        layout.downloaded_pdf("c doc"): pdf,  # no .meta.json yet: still being downloaded
        tmp_path / PENDING_LEGACY / "old.PDF": pdf,  # left by the older scripts
        tmp_path / "01_downloaded" / "ab" / "notes.txt": b"not a PDF",
        tmp_path / "01_downloaded" / "ab" / ".hidden.pdf": pdf,  # not a safe identifier
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink(layout.downloaded_pdf("a doc"), tmp_path / "01_downloaded" / "ab" / "link.pdf")

    expected = [("a doc", layout.downloaded_pdf("a doc")), ("b doc", layout.downloaded_pdf("b doc")),
                ("old", tmp_path / PENDING_LEGACY / "old.PDF")]
    assert batches.waiting_documents(layout) == expected
    layout.downloaded_meta("c doc").write_bytes(b"{}")  # its download completes: its folder changed
    assert batches.waiting_documents(layout) == sorted([*expected, ("c doc", layout.downloaded_pdf("c doc"))])
    assert batches.waiting_documents(Layout(tmp_path / "nothing", 2)) == []


def test_a_new_batch_takes_waiting_documents_up_to_its_size_as_hard_links(layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {"a": 2, "b": 3, "c": 1})
    record = batches.create_batch(layout, "0001", max_documents=2, max_pages=100)
    paths = BatchPaths(layout.batch_dir(1))

    assert sorted(record["documents"]) == ["a", "b"] and record["pages"] == 5 and not record["adopted"]
    assert json.loads(paths.batch_record.read_text()) == record
    for identifier, pages in (("a", 2), ("b", 3)):
        assert record["documents"][identifier]["pages"] == pages
        # The same file twice (a hard link), never a symlink nor a second copy of the bytes.
        assert not paths.pdf(identifier).is_symlink()
        assert paths.pdf(identifier).stat().st_ino == layout.downloaded_pdf(identifier).stat().st_ino
    assert [i for i, _ in batches.waiting_documents(layout)] == ["c"]
    assert [e["batch"] for e in events.read(layout.events) if e["event"] == "batch_created"] == ["0001"]

    before = snapshot(layout.base)  # the batch exists: asking again changes nothing
    assert batches.create_batch(layout, "0001", max_documents=2, max_pages=100) == record
    assert snapshot(layout.base) == before

    second = batches.create_batch(layout, batches.next_batch_number(layout), max_documents=2, max_pages=100)
    assert list(second["documents"]) == ["c"] and batches.waiting_documents(layout) == []


def test_max_pages_closes_a_batch_but_a_larger_document_still_gets_one(layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {"big": 9, "small": 2})
    first = batches.create_batch(layout, "0001", max_documents=10, max_pages=5)
    second = batches.create_batch(layout, "0002", max_documents=10, max_pages=5)
    assert list(first["documents"]) == ["big"] and list(second["documents"]) == ["small"]


def test_a_bad_file_waiting_in_a_legacy_folder_is_quarantined_and_the_batch_goes_on(
        layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {"good": 1})
    legacy = layout.base / PENDING_LEGACY
    legacy.mkdir()
    (legacy / "broken.pdf").write_bytes(b"this is not a PDF")
    record = batches.create_batch(layout, "0001", max_documents=10, max_pages=100)
    assert list(record["documents"]) == ["good"] and list(record["quarantined"]) == ["broken"]
    reason = json.loads(layout.quarantine_reason("broken").read_text())
    assert reason["batch"] == "0001" and reason["message"]
    assert layout.quarantine_pdf("broken").read_bytes() == b"this is not a PDF"
    assert not (legacy / "broken.pdf").exists()


def test_a_batch_folder_of_the_older_scripts_is_adopted_as_it_is(layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {"waiting": 1})
    paths = BatchPaths(layout.batch_dir(3))
    paths.dir.mkdir(parents=True)
    (paths.dir / "scanned.pdf").write_bytes(samples.text_pdf(["one", "two"]))
    (paths.dir / "ocred.pdf").write_bytes(samples.text_pdf(["one"]))
    write_results(paths, "old", {"ocred": 1})

    record = batches.create_batch(layout, "0003", max_documents=1, max_pages=1)
    assert record["adopted"] and record["pages"] == 3
    assert {i: d["pages"] for i, d in record["documents"].items()} == {"ocred": 1, "scanned": 2}
    assert record["documents"]["scanned"]["source"] == "adopted from batch_0003"
    assert [i for i, _ in batches.waiting_documents(layout)] == ["waiting"]  # not taken into the old batch
    assert batches.existing_results(paths) == {"ocred"}


def test_batch_numbers_are_never_reused_and_only_unfinalized_batches_are_open(layout: Layout) -> None:
    assert batches.next_batch_number(layout) == "0001"
    for number in ("3", "0007"):
        atomic.makedirs(layout.batch_dir(number))
    (layout.processing / "batch_12_backup").mkdir()  # not a batch folder
    assert batches.next_batch_number(layout) == "0008"
    atomic.write_json(BatchPaths(layout.batch_dir(3)).finalized, {"batch": "0003"})
    assert batches.open_batches(layout) == ["0007"]


def test_a_batch_is_opened_only_when_documents_wait_and_fewer_than_the_limit_are_open(
        layout: Layout, tmp_path: Path) -> None:
    assert batches.batches_to_open(layout, 0, 2, batch_size=10) == []  # nothing waits
    downloaded(layout, tmp_path / "incoming", {"a": 1})
    assert batches.batches_to_open(layout, 2, 2, batch_size=10) == []
    assert batches.batches_to_open(layout, 1, 2, batch_size=10) == ["0001"]


def test_the_batches_to_open_are_the_full_ones_for_the_waiting_documents_up_to_the_open_limit(
        layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {f"d{n}": 1 for n in range(7)})
    atomic.makedirs(layout.batch_dir(4))  # numbers go on after the highest batch present
    assert batches.batches_to_open(layout, 0, 10, batch_size=3) == ["0005", "0006"]  # d6 at the next call
    assert batches.batches_to_open(layout, 0, 1, batch_size=3) == ["0005"]
    assert batches.batches_to_open(layout, 1, 10, batch_size=7) == ["0005"]
    assert batches.batches_to_open(layout, 1, 10, batch_size=8) == ["0005"]  # fewer than a batch: one


def test_a_damaged_waiting_document_never_leaves_an_empty_batch(layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {"b": 1, "c": 1})
    legacy = layout.base / PENDING_LEGACY  # the older scripts' queue: PDFs measured only when batched
    legacy.mkdir()
    (legacy / "a.pdf").write_bytes(b"%PDF-1.4 damaged")
    made = []
    while numbers := batches.batches_to_open(layout, 0, 10, batch_size=2):
        for number in numbers:
            made.append(batches.create_batch(layout, number, max_documents=2, max_pages=1_000))
    assert [sorted(r["documents"]) for r in made] == [["b", "c"]]
    assert made[0]["quarantined"] and layout.batch_numbers() == ["0001"]


def test_batches_are_planned_between_two_creations_never_across_one(layout: Layout, tmp_path: Path) -> None:
    """Another host makes batch 0001 while this one plans: the plan waits for it and counts what is
    left, rather than counting six waiting documents and numbering after 0001 (an empty 0004)."""
    downloaded(layout, tmp_path / "incoming", {f"d{n}": 1 for n in range(6)})
    plans: list[list[str]] = []
    said: list[str] = []
    with batches.batch_lock(layout):  # the other creator is at work
        planner = threading.Thread(target=lambda: plans.append(
            batches.batches_to_open(layout, 0, 10, 2, status=said.append)))
        planner.start()
        time.sleep(0.5)
        assert planner.is_alive() and not plans  # no count while a batch is being made
        assert len(said) == 1 and said[0].startswith(
            f"waiting: another process makes a batch in {layout.base} (host {socket.gethostname()} pid {os.getpid()} ")
        paths = BatchPaths(layout.batch_dir(1))  # what the other creator makes: d0 and d1
        atomic.makedirs(paths.dir)
        atomic.write_json(paths.batch_record, {"batch": "0001", "documents": {"d0": {}, "d1": {}}})
    planner.join(timeout=30)
    assert plans == [["0002", "0003"]]


def test_a_second_process_waits_for_the_stage_lock_and_other_stages_do_not(layout: Layout) -> None:
    paths = BatchPaths(layout.batch_dir(1))
    waiting, entered = threading.Event(), threading.Event()

    def second() -> None:
        with batches.stage_lock(paths, "OCRBatch", waiting.set):
            entered.set()

    with batches.stage_lock(paths, "OCRBatch", lambda: pytest.fail("the first holder never waits")):
        thread = threading.Thread(target=second)
        thread.start()
        assert waiting.wait(30), "the second holder was not told it waits"
        assert not entered.is_set()
        with batches.stage_lock(paths, "SplitResults", lambda: pytest.fail("another stage is not held")):
            pass
    thread.join(30)
    assert entered.is_set()


def test_a_stage_completed_by_another_process_is_not_run_again(layout: Layout) -> None:
    paths = BatchPaths(layout.batch_dir(1))
    runs: list[str] = []
    progress = Recorder()
    batches.run_once(paths, "Finalize", lambda: False, lambda: runs.append("run"), progress)
    batches.run_once(paths, "Finalize", lambda: True, lambda: runs.append("run again"), progress)
    assert runs == ["run"]
    assert progress.calls == [(1, 1, "Finalize of batch 0001 was completed by another process")]


def test_batches_taken_from_settled_listings_are_the_batches_of_fresh_scans(layout: Layout, tmp_path: Path) -> None:
    documents = {f"d{n:02d}": 1 + n % 3 for n in range(11)}
    fresh = Layout(tmp_path / "fresh", 2)
    downloaded(fresh, tmp_path / "incoming", documents)
    downloaded(layout, tmp_path / "incoming", documents)
    for folder in [layout.base / "01_downloaded", *(layout.base / "01_downloaded").iterdir()]:
        settle(folder)  # kept by pipeline.listing from the first look on

    made, expected = [], []
    for number in ("0001", "0002", "0003", "0004"):
        made.append(batches.create_batch(layout, number, max_documents=4, max_pages=7)["documents"])
        expected.append(batches.create_batch(fresh, number, max_documents=4, max_pages=7)["documents"])
    assert [sorted(d) for d in made] == [sorted(d) for d in expected]
    assert sorted(i for d in made for i in d) == sorted(documents) and batches.waiting_documents(layout) == []


def test_a_document_gone_behind_a_kept_listing_is_left_out_of_the_batch(layout: Layout, tmp_path: Path) -> None:
    downloaded(layout, tmp_path / "incoming", {"stays": 1, "goes": 1})
    gone = layout.downloaded_pdf("goes")
    settle(gone.parent)
    mtime = gone.parent.stat().st_mtime_ns
    assert [i for i, _ in batches.waiting_documents(layout)] == ["goes", "stays"]
    # Another host removed it, and this host's view of the folder still shows the old mtime (NFS).
    os.unlink(gone)
    os.unlink(layout.downloaded_meta("goes"))
    os.utime(gone.parent, ns=(mtime, mtime))
    record = batches.create_batch(layout, "0001", max_documents=10, max_pages=100)
    assert list(record["documents"]) == ["stays"] and not BatchPaths(layout.batch_dir(1)).pdf("goes").exists()


def settle(path: Path) -> None:
    past = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(past, past))
