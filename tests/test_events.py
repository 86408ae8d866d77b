"""The append-only NDJSON logs (pipeline.events): whole lines under concurrency, torn lines skipped."""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import events, faults

ROOT = Path(__file__).resolve().parent.parent

WRITERS = 8
APPENDS = 150


def _writer(path: str, writer: int, barrier) -> None:
    barrier.wait()
    for n in range(APPENDS):
        # Sizes from tiny to far above PIPE_BUF (4 KiB) and a page, some appends with several records.
        padding = "x" * ((writer * 7919 + n * 104729) % 70_000)
        records = [{"writer": writer, "n": n, "part": part, "padding": padding} for part in range(1 + n % 3)]
        events.append(path, records, sync=n % 10 == 0)


def test_concurrent_appends_from_many_processes_give_only_whole_lines(tmp_path):
    path = tmp_path / "_manifests" / "events.ndjson"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WRITERS)
    processes = [context.Process(target=_writer, args=(str(path), w, barrier)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0

    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    seen = []
    for line in raw.split(b"\n")[:-1]:
        if not line:
            continue  # an empty line is harmless (read skips it); a torn record is not
        record = json.loads(line)  # every line is one whole record
        assert set(record) == {"writer", "n", "part", "padding"}
        assert record["padding"] == "x" * ((record["writer"] * 7919 + record["n"] * 104729) % 70_000)
        seen.append((record["writer"], record["n"], record["part"]))
    expected = [(w, n, part) for w in range(WRITERS) for n in range(APPENDS) for part in range(1 + n % 3)]
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))
    for writer in range(WRITERS):  # one writer's appends stay in its order
        mine = [s for s in seen if s[0] == writer]
        assert mine == sorted(mine)
    for position, (writer, n, part) in enumerate(seen):  # the records of one append stay together
        if part:
            assert seen[position - 1] == (writer, n, part - 1)
    assert len(list(events.read(path))) == len(expected)


def test_read_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "events.ndjson"
    events.append(path, [{"event": "a"}, {"event": "b"}])
    with open(path, "ab") as handle:
        handle.write(b'{"event": "c", "ti')  # a writer killed in the middle of its line

    assert [r["event"] for r in events.read(path)] == ["a", "b"]


def test_read_skips_a_line_torn_inside_a_utf8_character(tmp_path):
    path = tmp_path / "events.ndjson"
    events.append(path, [{"event": "a"}])
    line = json.dumps({"event": "b", "identifier": "Zürich façade 東京"}, ensure_ascii=False).encode()
    with open(path, "ab") as handle:
        handle.write(line[: line.index("東".encode()) + 1])  # cut after the first byte of a 3-byte character

    assert [r["event"] for r in events.read(path)] == ["a"]


def test_an_append_after_a_torn_line_is_not_lost(tmp_path):
    path = tmp_path / "events.ndjson"
    events.append(path, [{"event": "a"}])
    with open(path, "ab") as handle:
        handle.write(b'{"event": "torn", "ti')
    events.append(path, [{"event": "b"}, {"event": "c"}])
    events.log_event(path, "d")

    assert [r["event"] for r in events.read(path)] == ["a", "b", "c", "d"]


def test_read_skips_bad_lines_anywhere_and_non_objects(tmp_path):
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"event": "a"}\nnot json\n[1, 2]\n\n"text"\n\xff\xfe\n{"event": "b"}\n')
    assert [r["event"] for r in events.read(path)] == ["a", "b"]
    assert list(events.read(tmp_path / "missing.ndjson")) == []


def test_append_of_nothing_creates_nothing(tmp_path):
    path = tmp_path / "sub" / "events.ndjson"
    events.append(path, [])
    assert not path.exists()


def test_log_event_records_kind_time_and_fields(tmp_path):
    path = tmp_path / "events.ndjson"
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    events.log_event(path, "quarantined", identifier="Zürich", reason="empty")
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)

    (line,) = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert (record["event"], record["identifier"], record["reason"]) == ("quarantined", "Zürich", "empty")
    assert before <= dt.datetime.fromisoformat(record["time"]) <= after
    assert "Zürich" in line  # UTF-8 as written, readable with grep



# --- compaction: segments + snapshot + tail -------------------------------------------------------

def _history(round_: int) -> list[list[dict]]:
    """Appends as the pipeline makes them: per document, per chunk (submissions, failures, resets,
    done), per batch (created, failed, split, finalized), and lines readers skip."""
    appends: list[list[dict]] = []
    for b in range(3):
        batch = f"{round_ * 3 + b + 1:04d}"
        appends.append([events.event("downloaded", identifier=f"doc{batch}-{i}", source=f"/in/{i}.pdf")
                        for i in range(40)])
        appends.append([events.event("batch_created", batch=batch, documents=40, pages=120)])
        appends.append([events.event("chunk_planned", batch=batch, chunk=c, pages=30) for c in range(4)])
        appends.append([events.event("slurm_submitted", batch=batch, chunks=[0, 1, 2, 3], job_id=f"{b}1")])
        appends.append([events.event("slurm_chunk_failed", batch=batch, chunk=1, job_id=f"{b}1", state="TIMEOUT")])
        appends.append([events.event("batch_task_failed", batch=batch, task="OCRBatch", message="boom")])
        appends.append([events.event("chunk_attempts_reset", batch=batch, chunks=[1])])
        appends.append([events.event("slurm_submitted", batch=batch, chunks=[1], job_id=f"{b}2")])
        appends.append([events.event("local_chunk_failed", batch=batch, chunk=2, state="FAILED")])
        appends.append([events.event("chunk_done", batch=batch, chunk=c, pages=30) for c in (0, 1, 3)])
        if b == 2:
            appends.append([events.event("batch_task_failed", batch=batch, task="SplitResults", message="disk")])
            continue
        appends.append([events.event("split", batch=batch, documents=40)])
        appends.append([events.event("finalized", identifier=f"doc{batch}-{i}", batch=batch) for i in range(40)])
        appends.append([events.event("batch_finalized", batch=batch, finalized=40)])
    return appends


def _write(paths: list, appends: list[list[dict]]) -> None:
    for records in appends:
        for path in paths:
            events.append(path, records, sync=False)


def _readers(path) -> dict:
    """What every reader of the event log returns."""
    from pipeline.executors.attempts import failed_attempts
    from pipeline.executors.slurm.executor import latest_submissions
    from pipeline.ops.status import scan_events

    batches, last_progress = scan_events(path)
    return {
        "records": list(events.records(path)),
        "failed": {b: failed_attempts(path, b) for b in batches},
        "failed_ever": {b: failed_attempts(path, b, forget=False) for b in batches},
        "submissions": {b: latest_submissions(path, b) for b in batches},
        "status": ({b: (f.failed_attempts(), f.reset, f.submissions, f.failure) for b, f in batches.items()},
                   last_progress),
    }


def test_compaction_keeps_what_every_reader_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "SEGMENT_BYTES", 20_000)  # several segments per compaction
    log = tmp_path / "site" / "_manifests" / "events.ndjson"
    plain = tmp_path / "plain" / "_manifests" / "events.ndjson"  # the same appends, never compacted
    for round_ in range(3):
        _write([log, plain], _history(round_))
        with open(log, "ab") as handle, open(plain, "ab") as other:  # a writer killed inside its line
            handle.write(b'{"event": "chunk_done", "ba')
            other.write(b'{"event": "chunk_done", "ba')
        _write([log, plain], [[events.event("downloaded", identifier=f"late{round_}")]])
        before = log.stat().st_size
        done = events.compact(log)
        assert done is not None and done.bytes == before and done.tail == 0
        assert len(done.segments) > 1
        assert log.stat().st_size < 300  # only the header line is left
        assert _readers(log) == _readers(plain)
    expected = _readers(plain)
    assert [r["event"] for r in expected["records"]].count("slurm_submitted") == 18
    assert expected["failed"]["0001"] == {2: [r for r in expected["records"] if r["event"] == "local_chunk_failed"
                                             and r["batch"] == "0001"]}
    assert set(expected["failed_ever"]["0001"]) == {1, 2}
    assert expected["submissions"]["0001"][1]["job_id"] == "02"
    assert expected["status"][0]["0003"][3] is not None and expected["status"][0]["0002"][3] is None
    assert expected["status"][1] == [r for r in expected["records"] if r["event"] in events.PROGRESS_EVENTS][-1]["time"]
    # Readers that need only the facts read the snapshot, not the segments.
    for segment in (log.parent / "events").glob("segment_*"):
        segment.rename(tmp_path / segment.name)
    assert events.facts(log) == events.facts(plain)


def test_compaction_waits_for_its_size_and_keeps_a_log_without_snapshot_readable(tmp_path):
    log = tmp_path / "_manifests" / "events.ndjson"
    assert events.compact(log, min_bytes=0) is None  # no log yet: nothing made
    assert not (tmp_path / "_manifests").exists()
    _write([log], _history(0))
    assert events.compact(log, min_bytes=log.stat().st_size + 1) is None
    assert not (log.parent / "events" / events.SNAPSHOT).exists()
    assert [r["event"] for r in events.records(log)] == [r["event"] for r in events.read(log)]
    assert events.compact(log, min_bytes=log.stat().st_size) is not None


COMPACT = """
import sys
from pipeline import events
events.SEGMENT_BYTES = 15_000
events.compact(sys.argv[1])
"""


def _run_compaction(log, fault_dir, pause: str | None, script: str = COMPACT):
    """Compaction in a process of its own, stopped at the ``pause``-th point it reaches (or traced)."""
    fault_dir.mkdir(parents=True)
    env = {**os.environ, faults.FAULT_DIR: str(fault_dir), "PYTHONPATH": str(ROOT)}
    if pause:
        env[faults.PAUSE_AT] = pause
    return subprocess.Popen([sys.executable, "-c", script, str(log)], env=env)


def test_a_kill_at_any_point_of_compaction_loses_nothing_and_doubles_nothing(tmp_path):
    seed = tmp_path / "seed" / "_manifests" / "events.ndjson"
    plain = tmp_path / "plain" / "_manifests" / "events.ndjson"
    _write([seed, plain], _history(0))
    assert events.compact(seed) is not None  # the sweep runs over a second compaction (generation 1)
    _write([seed, plain], _history(1))
    traced = tmp_path / "traced"
    shutil.copytree(seed.parent.parent, traced)
    trace = tmp_path / "trace"
    assert _run_compaction(traced / "_manifests" / "events.ndjson", trace, None).wait() == 0
    points = (trace / faults.TRACE).read_text().splitlines()
    assert sum("events.compact" in p for p in points) == 3 and len(points) > 6
    for n in range(1, len(points) + 1):
        site = tmp_path / f"kill{n:02d}"
        shutil.copytree(seed.parent.parent, site)
        log = site / "_manifests" / "events.ndjson"
        process = _run_compaction(log, site / "faults", f"*:{n}")
        paused = site / "faults" / faults.PAUSED
        deadline = time.monotonic() + 60
        while not paused.exists():
            assert process.poll() is None and time.monotonic() < deadline, f"point {n} not reached"
            time.sleep(0.01)
        assert _readers(log) == _readers(plain)  # readers at the instant of the kill
        late = [events.event("slurm_chunk_failed", batch="0001", chunk=3, job_id=f"k{n}", state="FAILED")]
        appender = threading.Thread(target=events.append, args=(log, late))  # waits while the log is swapped
        appender.start()
        process.kill()
        process.wait()
        appender.join(30)
        assert not appender.is_alive()
        own = tmp_path / f"plain{n:02d}" / "events.ndjson"
        shutil.copytree(plain.parent, own.parent)
        events.append(own, late)
        point = json.loads(paused.read_text())
        why = f"killed at {point['point']} {point['detail']}"
        assert _readers(log) == _readers(own), why
        assert events.compact(log) is not None, why  # the next compaction finishes or redoes the work
        assert _readers(log) == _readers(own), why
        assert log.stat().st_size < 300, why
        names = sorted(p.name for p in (log.parent / "events").iterdir() if p.name.startswith("segment_"))
        listed = [s["name"] for s in json.loads((log.parent / "events" / events.SNAPSHOT).read_text())["segments"]]
        assert names == listed, why  # no segment left over from the killed compaction


def _compactor(path: str, stop) -> None:
    events.SEGMENT_BYTES = 200_000
    while not stop.is_set():
        events.compact(path)


def _race(path: Path, writer: Callable[..., None], compactor: Callable[..., None]) -> None:
    """WRITERS processes appending through ``writer`` while two run ``compactor`` until they end."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WRITERS)
    stop = context.Event()
    compactors = [context.Process(target=compactor, args=(str(path), stop)) for _ in range(2)]
    for process in compactors:
        process.start()
    processes = [context.Process(target=writer, args=(str(path), w, barrier)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
        assert process.exitcode == 0
    stop.set()
    for process in compactors:
        process.join(120)
        assert process.exitcode == 0
    assert (path.parent / "events" / events.SNAPSHOT).exists()  # compactions did happen


def test_appends_during_compaction_are_all_kept(tmp_path):
    path = tmp_path / "_manifests" / "events.ndjson"
    _race(path, _writer, _compactor)
    seen = [(r["writer"], r["n"], r["part"]) for r in events.records(path)]
    expected = [(w, n, part) for w in range(WRITERS) for n in range(APPENDS) for part in range(1 + n % 3)]
    assert sorted(seen) == sorted(expected)
    for writer in range(WRITERS):  # one writer's appends stay in its order
        mine = [s for s in seen if s[0] == writer]
        assert mine == sorted(mine)


def test_the_pipeline_compacts_its_log_as_it_runs_and_reads_the_same(make_site, tmp_path):
    """ProcessAll with a tiny events_compact_mb: the log is compacted at ProcessAll's and OCRBatch's
    start, the run ends as usual, and every reader returns what it returns on the whole history."""
    from pipeline import samples

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(4):
        (incoming / f"doc {i}.pdf").write_bytes(samples.text_pdf([f"doc {i} page {p}" for p in range(i + 1)]))
    (incoming / "empty.pdf").write_bytes(b"")
    site = make_site(source=incoming, pipeline__events_compact_mb=0.0005, ocr__pages_per_chunk=3)
    site.luigi("ProcessAll", "--run-id", "one")
    site.luigi("ProcessAll", "--run-id", "two")
    log = site.layout.events
    listed = json.loads((log.parent / "events" / events.SNAPSHOT).read_text())["segments"]
    assert len(listed) >= 2 and log.read_bytes().startswith(b'{"event": "events_compacted"')
    history = list(events.records(log))
    kinds = [r["event"] for r in history]
    assert kinds.count("downloaded") == 4 and kinds.count("finalized") == 4 and kinds.count("quarantined") == 1
    assert kinds.count("chunk_done") == kinds.count("chunk_planned") >= 3
    whole = tmp_path / "whole" / "events.ndjson"  # the same history in one uncompacted log
    events.append(whole, history)
    assert _readers(log) == _readers(whole)
    assert len(list((site.base / "05_processed").rglob("*.ocr.json"))) == 4


def test_a_log_replaced_by_hand_after_compaction_is_named_not_misread(tmp_path):
    log = tmp_path / "_manifests" / "events.ndjson"
    _write([log], _history(0))
    assert events.compact(log) is not None
    log.unlink()  # a new log begins where the snapshot expects the compacted one's tail
    events.append(log, [events.event("chunk_done", batch="0001", chunk=0)])
    with pytest.raises(events.LogMismatch, match="events.ndjson .* put back the files"):
        events.facts(log)


# --- several hosts on one base_dir (NFS): a lock that is not honoured across hosts --------------------

class OtherHost:
    """An appender on a host whose flock the compacting host does not see (NFS): as events.append, it
    opens the log and checks that it is the file at the path, then writes when it gets to it, whatever
    a compaction did meanwhile."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        assert os.fstat(self.fd).st_ino == os.stat(path).st_ino

    def write(self, records: list[dict]) -> None:
        os.write(self.fd, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode())
        os.close(self.fd)


def _same_lines(path, plain) -> None:
    """Every record once, and the same facts (a late line may be read at another place than logged)."""
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, events.records(path))) == sorted(map(key, events.records(plain)))
    assert events.facts(path) == events.facts(plain)


def test_a_line_another_host_appends_to_the_replaced_log_is_kept(tmp_path, monkeypatch):
    log = tmp_path / "site" / "_manifests" / "events.ndjson"
    plain = tmp_path / "plain" / "_manifests" / "events.ndjson"  # the same appends, never compacted
    _write([log, plain], _history(0))
    late = OtherHost(log)
    assert events.compact(log) is not None  # its exclusive lock does not wait for the other host
    failure = [events.event("slurm_chunk_failed", batch="0001", chunk=3, job_id="other-host", state="FAILED")]
    late.write(failure)  # into the replaced log, after its tail was copied
    events.append(plain, failure)
    _write([log, plain], _history(1))
    assert _readers(log) == _readers(plain)
    assert [a["job_id"] for a in events.facts(log).batch("0001").failed_attempts()[3]] == ["other-host"]

    assert events.compact(log) is not None  # within the grace: the replaced log stays, still read
    retired = sorted(p.name for p in (log.parent / "events").glob("retired_*"))
    assert retired == ["retired_000000.ndjson", "retired_000001.ndjson"]
    _same_lines(log, plain)

    monkeypatch.setattr(events, "LATE_GRACE", 0.0)  # the other hosts' late appends are over
    again = events.compact(log, min_bytes=10**9)  # a small log: only the late lines move
    assert again is not None and again.bytes == 0 and len(again.segments) == 1
    assert not list((log.parent / "events").glob("retired_*"))
    _same_lines(log, plain)
    assert events.compact(log, min_bytes=10**9) is None  # nothing left to do
    _write([log, plain], _history(2))
    assert events.compact(log) is not None
    _same_lines(log, plain)
    assert log.stat().st_size < 300


COMPACT_LATE = """
import sys
from pipeline import events
events.SEGMENT_BYTES = 15_000
events.LATE_GRACE = 0.0
events.compact(sys.argv[1])
"""


def test_a_kill_while_late_lines_move_into_a_segment_loses_nothing_and_doubles_nothing(tmp_path, monkeypatch):
    seed = tmp_path / "seed" / "_manifests" / "events.ndjson"
    plain = tmp_path / "plain" / "_manifests" / "events.ndjson"
    _write([seed, plain], _history(0))
    late = OtherHost(seed)
    assert events.compact(seed) is not None
    failure = [events.event("slurm_chunk_failed", batch="0002", chunk=0, job_id="other-host", state="FAILED")]
    late.write(failure)
    events.append(plain, failure)
    _write([seed, plain], _history(1))
    trace = tmp_path / "trace"
    traced = tmp_path / "traced"
    shutil.copytree(seed.parent.parent, traced)
    process = _run_compaction(traced / "_manifests" / "events.ndjson", trace, None, COMPACT_LATE)
    assert process.wait() == 0
    points = (trace / faults.TRACE).read_text().splitlines()
    assert any("events.compact.late" in p for p in points)
    for n in range(1, len(points) + 1):
        site = tmp_path / f"kill{n:02d}"
        shutil.copytree(seed.parent.parent, site)
        log = site / "_manifests" / "events.ndjson"
        process = _run_compaction(log, site / "faults", f"*:{n}", COMPACT_LATE)
        paused = site / "faults" / faults.PAUSED
        deadline = time.monotonic() + 60
        while not paused.exists():
            assert process.poll() is None and time.monotonic() < deadline, f"point {n} not reached"
            time.sleep(0.01)
        point = json.loads(paused.read_text())
        why = f"killed at {point['point']} {point['detail']}"
        _same_lines(log, plain)  # readers at the instant of the kill
        process.kill()
        process.wait()
        _same_lines(log, plain)
        with monkeypatch.context() as patch:
            patch.setattr(events, "SEGMENT_BYTES", 15_000)
            patch.setattr(events, "LATE_GRACE", 0.0)
            events.compact(log)  # the next compaction finishes or redoes the work
            _same_lines(log, plain)
            events.compact(log, min_bytes=10**9)  # and the log it replaced, past the grace, goes too
        _same_lines(log, plain)
        folder = log.parent / "events"
        assert not list(folder.glob("retired_*")), why
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith("segment_"))
        listed = [s["name"] for s in json.loads((folder / events.SNAPSHOT).read_text())["segments"]]
        assert names == listed, why


def _writer_without_flock(path: str, writer: int, barrier) -> None:
    """A writer on another host: its flock does not exclude the compaction's (a no-op here)."""
    events.fcntl = type("NoFlock", (), {"flock": staticmethod(lambda fd, how: None),  # type: ignore[attr-defined]
                                        "LOCK_SH": 1, "LOCK_EX": 2})
    _writer(path, writer, barrier)


def _compactor_with_grace(path: str, stop) -> None:
    events.LATE_GRACE = 1.0
    _compactor(path, stop)


def test_appends_of_hosts_whose_lock_is_not_honoured_are_all_kept(tmp_path, monkeypatch):
    path = tmp_path / "_manifests" / "events.ndjson"
    _race(path, _writer_without_flock, _compactor_with_grace)
    expected = sorted((w, n, part) for w in range(WRITERS) for n in range(APPENDS) for part in range(1 + n % 3))
    assert sorted((r["writer"], r["n"], r["part"]) for r in events.records(path)) == expected

    monkeypatch.setattr(events, "LATE_GRACE", 0.0)
    events.compact(path, min_bytes=10**12)  # only the retired logs' late lines, into segments
    assert not list((path.parent / "events").glob("retired_*"))
    assert sorted((r["writer"], r["n"], r["part"]) for r in events.records(path)) == expected
