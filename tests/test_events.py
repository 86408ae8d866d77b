"""The append-only NDJSON logs (pipeline.events): whole lines under concurrency, torn lines skipped."""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing

from pipeline import events

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

