"""pipeline.stages.bisect: the decisions in-process, then poison documents through the real `luigi` command
line with the local executor and on the dev SLURM cluster."""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import atomic, events, samples
from pipeline.executors.base import ChunkOutcome, ChunkRun
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import bisect, integrity
from pipeline.stages.chunks import WalltimeModel

from .conftest import snapshot
from .test_slurm_client import cluster  # noqa: F401  (the fixture)

ENGINE = Path(__file__).resolve().parent / "poison_engine.py"


# --- the decisions ----------------------------------------------------------------------------

def test_halves_split_in_the_middle_the_first_taking_the_odd_one() -> None:
    assert bisect.halves(["a", "b", "c", "d", "e"]) == [["a", "b", "c"], ["d", "e"]]
    assert bisect.halves(["a", "b"]) == [["a"], ["b"]]


def test_halves_get_new_indices_their_pages_and_walltime() -> None:
    parent = {"index": 3, "documents": ["a", "b", "c"], "pages": 6}
    children = bisect.split_chunk(parent, 9, {"a": 1, "b": 2, "c": 3}, WalltimeModel(10, 1, 0))
    assert children == [
        {"index": 9, "split_of": 3, "root": 3, "documents": ["a", "b"], "pages": 3, "walltime_seconds": 13},
        {"index": 10, "split_of": 3, "root": 3, "documents": ["c"], "pages": 3, "walltime_seconds": 13},
    ]
    # A half of a half keeps the planned chunk it came from as its root.
    assert {c["root"] for c in bisect.split_chunk(children[0], 11, {}, WalltimeModel())} == {3}


def test_what_runs_and_how_often() -> None:
    roots = [{"index": 0, "documents": ["a", "b", "c"]}, {"index": 1, "documents": ["d"]}]
    state = bisect.Bisection(chunks=[
        {"index": 2, "split_of": 0, "root": 0, "documents": ["a", "b"]},
        {"index": 3, "split_of": 0, "root": 0, "documents": ["c"]},
        {"index": 9, "split_of": 8, "root": 8, "documents": ["x"]},  # another pass's chunk
    ], failed={3: {"documents": ["c"]}})
    family = state.family(roots)
    assert [c["index"] for c in family] == [0, 1, 2, 3]
    # Split chunks, given-up documents and done chunks never run again.
    assert [c["index"] for c in bisect.to_run(family, state, done={1})] == [2]
    # A half of several documents gets no retry; planned chunks and single documents the executor's.
    assert [bisect.retries_of(c) for c in family] == [None, None, 0, None]


def test_a_broken_engine_is_not_blamed_on_documents() -> None:
    assert bisect.engine_broken(4, anything_done=False)
    # One chunk may hold one poison document, two halves one each: they are split further.
    assert not bisect.engine_broken(1, anything_done=False) and not bisect.engine_broken(2, anything_done=False)
    assert not bisect.engine_broken(5, anything_done=True)


def test_extra_jobs_and_their_bound() -> None:
    roots = [{"index": 0, "documents": list("abcdefgh")}, {"index": 1, "documents": list("ijk")}]
    state = bisect.Bisection(chunks=[
        {"index": 2, "split_of": 0, "root": 0, "documents": list("abcd")},
        {"index": 3, "split_of": 0, "root": 0, "documents": list("efgh")},
        {"index": 4, "split_of": 2, "root": 0, "documents": list("ab")},
        {"index": 5, "split_of": 2, "root": 0, "documents": list("cd")},
        {"index": 6, "split_of": 4, "root": 0, "documents": ["a"]},
        {"index": 7, "split_of": 4, "root": 0, "documents": ["b"]},
    ], failed={6: {"documents": ["a"]}})
    # One poison document in a chunk of 8: three levels of two halves, and its own 2 retries.
    assert bisect.job_bound(roots, state, max_retries=2) == 2 * 3 + 2
    failures = {2: 1, 4: 1, 6: 3}
    assert bisect.jobs_spent(state.chunks, failures, done={3, 5, 7}) == 1 + 1 + 1 + 1 + 3 + 1


def test_all_chunks_of_a_batch_and_those_that_end_with_a_done_marker(tmp_path: Path) -> None:
    paths = BatchPaths(Layout(tmp_path / "data", 2).batch_dir(2))
    atomic.write_json(paths.chunk_plan, {"chunks": [{"index": 0, "documents": ["a", "b"]},
                                                    {"index": 1, "documents": ["c"]}]})
    atomic.write_json(paths.retry_plan, {"chunks": [{"index": 4, "documents": ["c"]}]})
    bisect.save(paths, bisect.Bisection(chunks=[
        {"index": 2, "split_of": 0, "root": 0, "documents": ["a"]},
        {"index": 3, "split_of": 0, "root": 0, "documents": ["b"]},
    ], failed={3: {"documents": ["b"]}}))
    assert [c["index"] for c in bisect.all_chunks(paths)] == [0, 1, 2, 3, 4]
    assert [c["index"] for c in bisect.settled_chunks(paths)] == [1, 2, 4]
    assert bisect.indices_in_use(paths) == {0, 1, 2, 3, 4}


# --- the loop, in-process, with an executor that fails chunks holding a poison document ---------

class PoisonExecutor:
    """Writes a done marker for every chunk without a 'poison' document; fails the others."""

    def __init__(self, paths: BatchPaths, stop_after: int | None = None) -> None:
        self.paths = paths
        self.runs: list[list[str]] = []
        self.stop_after = stop_after

    def run(self, paths: BatchPaths, chunks: list[ChunkRun], progress: Any) -> dict[int, ChunkOutcome]:
        if self.stop_after is not None and len(self.runs) >= self.stop_after:
            raise KeyboardInterrupt  # the process is killed here
        outcomes = {}
        for chunk in chunks:
            names = [Path(line).stem for line in paths.chunk_list(chunk.index).read_text().splitlines()]
            self.runs.append(names)
            if any("poison" in n for n in names):
                outcomes[chunk.index] = ChunkOutcome(chunk.index, False, 1, "FAILED", "1:0",
                                                     str(paths.chunk_log(chunk.index)), f"chunk {chunk.index} failed")
            else:
                atomic.write_json(paths.done_marker(chunk.index), {"chunk": chunk.index, "missing": []})
                outcomes[chunk.index] = ChunkOutcome(chunk.index, True, 1)
        return outcomes


def in_process_batch(tmp_path: Path, names: list[str], chunk_size: int) -> tuple[Layout, BatchPaths, list[dict]]:
    layout = Layout(tmp_path / "data", 2)
    paths = BatchPaths(layout.batch_dir(1))
    plan = []
    for index, start in enumerate(range(0, len(names), chunk_size)):
        chunk = {"index": index, "documents": names[start:start + chunk_size], "pages": 1}
        integrity.write_chunk_list(paths, chunk)
        plan.append(chunk)
    for name in names:
        atomic.write_bytes(paths.pdf(name), samples.text_pdf([f"Page of {name}"]))
    atomic.write_json(paths.chunk_plan, {"chunks": plan})
    return layout, paths, plan


def context(layout: Layout, paths: BatchPaths, executor: PoisonExecutor, names: list[str]) -> bisect.Context:
    return bisect.Context(executor, layout, paths, {n: 1 for n in names}, WalltimeModel(), "command",
                          say=lambda message: None)


def test_a_rerun_resumes_the_bisection_and_runs_no_done_chunk_twice(tmp_path: Path) -> None:
    names = ["a", "b", "c", "poison", "e", "f", "g", "h"]
    layout, paths, plan = in_process_batch(tmp_path, names, 8)

    first = PoisonExecutor(paths, stop_after=3)  # killed after the chunk and its two halves ran
    with pytest.raises(KeyboardInterrupt):
        bisect.run_with_bisection(context(layout, paths, first, names), plan, lambda *a: None)
    assert first.runs == [names, names[:4], names[4:]]

    second = PoisonExecutor(paths)
    bisect.run_with_bisection(context(layout, paths, second, names), plan, lambda *a: None)
    assert second.runs == [["a", "b"], ["c", "poison"], ["c"], ["poison"]]
    reason = atomic.read_json(layout.quarantine_reason("poison"))
    assert (reason["reason"], reason["state"], reason["exit_code"], reason["engine"]) == (
        "ocr_failed", "FAILED", "1:0", "command")
    assert reason["log"] == str(paths.chunk_log(reason["chunk"]))
    assert not paths.pdf("poison").exists() and layout.quarantine_pdf("poison").exists()

    third = PoisonExecutor(paths)  # everything is decided: nothing runs, nothing changes
    before = snapshot(layout.base)
    bisect.run_with_bisection(context(layout, paths, third, names), plan, lambda *a: None)
    assert third.runs == [] and snapshot(layout.base) == before


def test_every_chunk_failing_is_the_engine_not_the_documents(tmp_path: Path) -> None:
    names = ["poison_1", "poison_2", "poison_3", "poison_4"]
    layout, paths, plan = in_process_batch(tmp_path, names, 2)
    executor = PoisonExecutor(paths)
    with pytest.raises(bisect.EngineBroken, match="every chunk of batch 0001 \\(4 failed.*fix the cause"):
        bisect.run_with_bisection(context(layout, paths, executor, names), plan, lambda *a: None)
    # Two chunks failing may be two poison documents: they were split; four halves failing is the engine.
    assert executor.runs == [names[:2], names[2:], *[[n] for n in names]]
    assert len(bisect.load(paths).chunks) == 4 and not bisect.load(paths).failed
    assert not (layout.base / "_quarantine").exists()
    [reset] = [e for e in events.read(layout.events) if e["event"] == "chunk_attempts_reset"]
    assert reset["chunks"] == [2, 3, 4, 5]


# --- through luigi ----------------------------------------------------------------------------

def poison_site(make_site, tmp_path: Path, names: list[str], mode: str = "exit", hold: Path | None = None,
                **overrides: Any):
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    for name in names:
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"Page of {name}"]))
    calls = tmp_path / "calls.ndjson"
    command = f"{sys.executable} {ENGINE} {{chunk_list}} {{output}} {calls} {mode}" + (f" {hold}" if hold else "")
    site = make_site(source=incoming, engine="command", ocr__command=command, **overrides)
    return site, calls


def read_calls(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def assert_bisected(site, calls: Path, names: list[str], poisons: list[str], max_retries: int) -> dict:
    """Poisons quarantined with their details, the rest finalized, extra jobs within the bound and reported."""
    layout = site.layout
    paths = BatchPaths(layout.batch_dir(1))
    for name in poisons:
        reason = json.loads(layout.quarantine_reason(name).read_text())
        assert reason["reason"] == "ocr_failed" and reason["engine"] == "command"
        assert reason["state"] == "FAILED" and reason["exit_code"] and reason["attempts"] == max_retries + 1
        assert Path(reason["log"]).is_file() and "poison_engine: a poison document" in Path(reason["log"]).read_text()
        assert name in reason["message"] and reason["log"] in reason["message"]
        assert layout.quarantine_pdf(name).read_bytes() == samples.text_pdf([f"Page of {name}"])
    chunks = {c["index"]: c for c in bisect.all_chunks(paths)}
    for name in names:
        if name not in poisons:
            assert f"Page of {name}" in json.loads(layout.processed_ocr(name).read_text())["text"]
            # Its metadata names the chunk (a half, maybe) whose results it came from.
            chunk = json.loads(layout.processed_metadata(name).read_text())["chunk"]
            assert name in chunks[chunk]["documents"] and paths.done_marker(chunk).exists()
    finalized = json.loads(paths.finalized.read_text())
    assert finalized["quarantined"] == {p: "ocr_failed" for p in sorted(poisons)}
    assert finalized["finalized"] == len(names) - len(poisons)

    # Extra jobs: every run of a document set that is not a planned chunk's, counted from the engine's log.
    planned = [sorted(c["documents"]) for c in json.loads(paths.chunk_plan.read_text())["chunks"]]
    runs = read_calls(calls)
    extra = [r for r in runs if r not in planned]
    poisoned = [c for c in planned if any(p in c for p in poisons)]
    bound = sum(sum(p in c for p in poisons) * (2 * math.ceil(math.log2(len(c))) + max_retries) for c in poisoned)
    assert 0 < len(extra) <= bound, (extra, bound)
    # Each planned chunk with a poison ran 1 + max_retries times, the others once.
    assert [runs.count(c) for c in planned] == [1 + max_retries if c in poisoned else 1 for c in planned]
    report = json.loads(paths.ocr_marker.read_text())["bisection"]
    assert report["extra_jobs"] == len(extra) and report["job_bound"] <= bound
    assert report["quarantined"].keys() == set(poisons)
    [done] = [e for e in events.read(layout.events) if e["event"] == "bisection_done"]
    assert done["extra_jobs"] == len(extra)
    assert {e["chunk"] for e in events.read(layout.events) if e["event"] == "chunk_split"} >= {
        c["index"] for c in json.loads(paths.chunk_plan.read_text())["chunks"] if sorted(c["documents"]) in poisoned}
    return report


NINE = ["doc_1", "doc_2", "doc_3", "doc_4", "poison_5", "doc_6", "doc_7", "doc_8", "doc_9"]
# In name order the two poisons go to different halves of their chunk: both halves fail.
TWO_POISONS = ["a_poison", "doc_b", "doc_c", "doc_d", "doc_e", "doc_f", "doc_g", "m_poison", "doc_i"]


def test_local_one_poison_document_is_quarantined_and_the_batch_completes(make_site, tmp_path: Path) -> None:
    site, calls = poison_site(make_site, tmp_path, NINE, ocr__pages_per_chunk=5, slurm__max_retries=1)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    result = site.luigi("Finalize", "--batch", "1")
    report = assert_bisected(site, calls, NINE, ["poison_5"], max_retries=1)
    assert f"extra jobs, bound {report['job_bound']}" in result.stderr
    assert "documents quarantined (ocr_failed): poison_5" in result.stderr
    before = snapshot(site.base)
    site.luigi("Finalize", "--batch", "1")
    assert snapshot(site.base) == before


def test_local_two_poisons_in_one_chunk_killed_by_a_signal(make_site, tmp_path: Path) -> None:
    names = TWO_POISONS
    site, calls = poison_site(make_site, tmp_path, names, mode="abort", ocr__pages_per_chunk=9,
                              slurm__max_retries=0)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("Finalize", "--batch", "1")
    assert_bisected(site, calls, names, ["a_poison", "m_poison"], max_retries=0)
    # Both halves of the chunk failed (no other chunk had completed) and were split again.
    paths = BatchPaths(site.layout.batch_dir(1))
    halves = {c["index"] for c in bisect.load(paths).chunks if c["split_of"] == 0}
    assert len(halves) == 2 and halves <= {e["chunk"] for e in events.read(site.layout.events)
                                            if e["event"] == "chunk_split"}
    for name in ("a_poison", "m_poison"):
        log = Path(json.loads(site.layout.quarantine_reason(name).read_text())["log"]).read_text()
        assert "status -6" in log  # the engine died of SIGABRT


def test_local_killed_during_bisection_then_rerun_resumes(make_site, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    site, calls = poison_site(make_site, tmp_path, NINE, hold=hold, ocr__pages_per_chunk=9,
                              ocr__parallel_chunks=1, slurm__max_retries=0)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    first = site.popen("Finalize", "--batch", "1")
    deadline = time.monotonic() + 120
    while not any(len(r) <= 2 for r in read_calls(calls)):  # a half of two documents is waiting
        assert first.poll() is None and time.monotonic() < deadline, read_calls(calls)
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    held = [r for r in read_calls(calls) if len(r) <= 2]
    hold.unlink()  # the orphaned chunk job goes on and ends
    paths = BatchPaths(site.layout.batch_dir(1))
    split_before = bisect.load(paths)
    [orphan] = [c for c in split_before.chunks if sorted(c["documents"]) in held]
    while not paths.done_marker(orphan["index"]).exists():
        assert time.monotonic() < deadline, "the orphaned chunk job did not finish"
        time.sleep(0.2)
    done_before = [sorted(c["documents"]) for c in split_before.chunks if paths.done_marker(c["index"]).exists()]
    before = read_calls(calls)
    site.luigi("Finalize", "--batch", "1")
    rerun = read_calls(calls)[len(before):]
    # The bisection went on where it was: no planned chunk ran again, no done chunk ran twice.
    assert rerun and sorted(NINE) not in rerun
    assert not [r for r in rerun if r in done_before], (rerun, done_before)
    assert_bisected(site, calls, NINE, ["poison_5"], max_retries=0)


def test_local_an_engine_failing_everywhere_fails_the_task_and_a_rerun_after_the_fix_completes(
        make_site, tmp_path: Path) -> None:
    names = ["poison_1", "poison_2", "poison_3", "poison_4"]  # the engine fails on every one of them
    site, calls = poison_site(make_site, tmp_path, names, ocr__pages_per_chunk=1, slurm__max_retries=1)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    result = site.luigi("Finalize", "--batch", "1", check=False)
    assert result.returncode != 0
    assert "OCR failed for every chunk of batch 0001 (4 failed, none completed)" in result.stderr
    assert len(read_calls(calls)) == 8  # each chunk twice, nothing split
    assert not (site.base / "_quarantine").exists()
    paths = BatchPaths(site.layout.batch_dir(1))
    assert not bisect.plan_file(paths).exists() and not paths.ocr_marker.exists()

    site.config.write_text(site.config.read_text().replace(" exit\n", " never\n"))  # the engine is fixed
    site.luigi("Finalize", "--batch", "1")
    assert len(read_calls(calls)) == 12  # each chunk once more: its attempts started afresh
    for name in names:
        assert f"Page of {name}" in json.loads(site.layout.processed_ocr(name).read_text())["text"]


# --- on the dev SLURM cluster -----------------------------------------------------------------

SLURM = {"ocr__executor": "slurm", "slurm__poll_initial_seconds": 0.5, "slurm__poll_max_seconds": 0.5,
         "slurm__poll_growth": 1, "slurm__cpus_per_task": 1, "slurm__mem": "200M",
         "slurm__walltime_base_seconds": 120}


def slurm_events(site, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.read(site.layout.events) if e["event"] == kind]


@pytest.mark.slurm
def test_slurm_one_poison_document_is_quarantined_and_the_batch_completes(cluster: None, make_site,
                                                                          tmp_path: Path) -> None:
    site, calls = poison_site(make_site, tmp_path, NINE, ocr__pages_per_chunk=5, slurm__max_retries=1, **SLURM)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    result = site.luigi("Finalize", "--batch", "1")
    report = assert_bisected(site, calls, NINE, ["poison_5"], max_retries=1)
    assert f"extra jobs, bound {report['job_bound']}" in result.stderr
    # Every job the engine saw was submitted to SLURM: one array task per chunk attempt.
    submitted = [c for e in slurm_events(site, "slurm_submitted") for c in e["chunks"]]
    assert len(submitted) == len(read_calls(calls))
    reason = json.loads(site.layout.quarantine_reason("poison_5").read_text())
    assert reason["exit_code"] == "1:0"


@pytest.mark.slurm
def test_slurm_two_poisons_in_one_chunk(cluster: None, make_site, tmp_path: Path) -> None:
    names = TWO_POISONS
    site, calls = poison_site(make_site, tmp_path, names, mode="abort", ocr__pages_per_chunk=9,
                              slurm__max_retries=0, **SLURM)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi("Finalize", "--batch", "1")
    assert_bisected(site, calls, names, ["a_poison", "m_poison"], max_retries=0)


@pytest.mark.slurm
def test_slurm_killed_during_bisection_reattaches_to_the_halves(cluster: None, make_site, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    site, calls = poison_site(make_site, tmp_path, NINE, hold=hold, ocr__pages_per_chunk=9,
                              slurm__max_retries=0, **SLURM)
    site.luigi("Download", "--run-id", "one")
    site.luigi("CreateBatch", "--batch", "1")
    paths = BatchPaths(site.layout.batch_dir(1))
    first = site.popen("Finalize", "--batch", "1")
    deadline = time.monotonic() + 180
    # Two halves of two documents are submitted and held by the engine: kill the luigi process.
    while len([r for r in read_calls(calls) if len(r) <= 2]) < 2:
        assert first.poll() is None and time.monotonic() < deadline, read_calls(calls)
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    held = {c["index"] for c in bisect.load(paths).chunks if len(c["documents"]) == 2}
    jobs = {e["job_id"] for e in slurm_events(site, "slurm_submitted") if held & set(e["chunks"])}
    submissions = len(slurm_events(site, "slurm_submitted"))

    second = site.popen("Finalize", "--batch", "1")
    while not slurm_events(site, "slurm_reattached"):
        assert second.poll() is None and time.monotonic() < deadline, "no re-attach"
        time.sleep(0.2)
    hold.unlink()
    assert second.wait(timeout=180) == 0
    [reattached] = slurm_events(site, "slurm_reattached")
    assert set(reattached["chunks"]) == held and set(reattached["job_ids"]) == jobs
    # The halves in the queue were not submitted again; only the split of the failing one was.
    again = slurm_events(site, "slurm_submitted")[submissions:]
    assert again and not held & {c for e in again for c in e["chunks"]}
    assert_bisected(site, calls, NINE, ["poison_5"], max_retries=0)
