"""pipeline.executors.local: real job processes, retried like on SLURM, one outcome per chunk."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline import events
from pipeline.executors.base import ChunkRun
from pipeline.executors.local import (
    LocalExecutor,
    automatic_parallel,
    available_memory_mib,
    exit_code_text,
    parallel_chunks,
)
from pipeline.isolation import available_cpus
from pipeline.layout import BatchPaths, Layout

# The chunk job the script runs: plan_NNN lists one mode per attempt (the last one repeats).
JOB = """
dir=%s
chunk=$SLURM_ARRAY_TASK_ID
n=$(printf %%03d "$chunk")
echo run >> "$dir/attempts_$n"
attempt=$(wc -l < "$dir/attempts_$n")
read -r -a modes < "$dir/plan_$n"
mode=${modes[$((attempt - 1))]:-${modes[-1]}}
echo "chunk $chunk attempt $attempt: $mode"
case $mode in
    ok) mkdir -p "$dir/results/done"; echo '{"chunk": '"$chunk"', "missing": []}' > "$dir/results/done/chunk_$n.done" ;;
    fail) exit 3 ;;
    nomarker) exit 0 ;;
    abort) kill -ABRT $$ ;;
esac
"""


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "data", 2)


@pytest.fixture
def paths(layout: Layout) -> BatchPaths:
    paths = BatchPaths(layout.batch_dir(5))
    paths.dir.mkdir(parents=True)
    return paths


def plan(paths: BatchPaths, **modes: str) -> list[ChunkRun]:
    for name, mode in modes.items():
        (paths.dir / f"plan_{int(name.lstrip('c')):03d}").write_text(mode + "\n")
    return [ChunkRun(int(name.lstrip("c")), 1, 1) for name in modes]


def attempts(paths: BatchPaths, index: int) -> int:
    path = paths.dir / f"attempts_{index:03d}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def executor(layout: Layout, paths: BatchPaths, **options: Any) -> LocalExecutor:
    return LocalExecutor(layout, ["bash", "-c", JOB % paths.dir, "chunk-job"], **{"parallel": 2, **options})


def failed_events(layout: Layout) -> list[dict[str, Any]]:
    return [e for e in events.read(layout.events) if e["event"] == "local_chunk_failed"]


def test_failures_are_retried_then_reported_per_chunk(layout: Layout, paths: BatchPaths) -> None:
    chunks = plan(paths, c0="ok", c1="fail ok", c2="fail", c3="nomarker", c4="abort")
    messages: list[str] = []
    outcomes = executor(layout, paths, max_retries=1).run(paths, chunks, lambda d, t, m: messages.append(m))
    assert {i: o.done for i, o in outcomes.items()} == {0: True, 1: True, 2: False, 3: False, 4: False}
    assert [attempts(paths, i) for i in range(5)] == [1, 2, 2, 2, 2]
    assert (outcomes[1].attempts, outcomes[2].attempts) == (2, 2)
    assert [(outcomes[i].state, outcomes[i].exit_code) for i in (2, 3, 4)] == [
        ("FAILED", "3:0"), ("COMPLETED", "0:0"), ("FAILED", "0:6")]
    assert outcomes[2].message == (f"batch 0005 chunk 2: ended FAILED (exit code 3:0) after 2 attempts; "
                                   f"log: {paths.chunk_log(2)}")
    assert "COMPLETED without writing its done marker" in outcomes[3].message
    assert "killed by SIGABRT" in outcomes[4].message
    assert all(outcomes[i].log == str(paths.chunk_log(i)) for i in range(5))
    # Both attempts are in the chunk's log, one after the other.
    assert [line for line in paths.chunk_log(2).read_text().splitlines() if "attempt" in line] == [
        "--- attempt 1 of chunk 2 ---", "chunk 2 attempt 1: fail", "--- attempt 2 of chunk 2 ---",
        "chunk 2 attempt 2: fail"]
    assert sorted((e["chunk"], e["attempt"]) for e in failed_events(layout)) == [
        (1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2)]
    assert any("chunk 2 ended FAILED (exit code 3:0); running it again (attempt 2)" in m for m in messages)
    states = [(m["chunk"], m["state"], m["exit_code"]) for m in events.read(layout.metrics)]
    assert sorted(states) == [(0, "COMPLETED", 0), (1, "COMPLETED", 0), (1, "FAILED", 3), (2, "FAILED", 3),
                              (2, "FAILED", 3), (3, "FAILED", 0), (3, "FAILED", 0), (4, "FAILED", -6),
                              (4, "FAILED", -6)]


def test_a_chunk_can_have_its_own_retry_limit(layout: Layout, paths: BatchPaths) -> None:
    plan(paths, c0="fail")
    [outcome] = executor(layout, paths, max_retries=3).run(paths, [ChunkRun(0, 1, 1, max_retries=0)],
                                                           lambda *a: None).values()
    assert (outcome.done, outcome.attempts, attempts(paths, 0)) == (False, 1, 1)


def test_attempts_count_across_runs_and_done_chunks_never_run_again(layout: Layout, paths: BatchPaths) -> None:
    chunks = plan(paths, c0="ok", c1="fail")
    executor(layout, paths, max_retries=1).run(paths, chunks, lambda *a: None)
    assert (attempts(paths, 0), attempts(paths, 1)) == (1, 2)

    # A rerun: chunk 0 is done, chunk 1 used its attempts; nothing runs, the outcomes say so.
    again = executor(layout, paths, max_retries=1).run(paths, chunks, lambda *a: None)
    assert (attempts(paths, 0), attempts(paths, 1)) == (1, 2)
    assert again[0].done and (again[1].done, again[1].state, again[1].exit_code) == (False, "FAILED", "3:0")
    assert "after 2 attempts" in again[1].message

    # Once its attempts are forgotten (the engine was broken and is fixed), it runs again.
    (paths.dir / "plan_001").write_text("ok\n")
    events.log_event(layout.events, "chunk_attempts_reset", batch="0005", chunks=[1])
    fixed = executor(layout, paths, max_retries=1).run(paths, chunks, lambda *a: None)
    assert fixed[1].done and attempts(paths, 1) == 3
    assert json.loads(paths.done_marker(1).read_text())["chunk"] == 1


def test_exit_codes_in_slurms_form() -> None:
    assert (exit_code_text(0), exit_code_text(3), exit_code_text(-6)) == ("0:0", "3:0", "0:6")


def test_the_automatic_parallel_chunks_follow_the_engine_the_cores_and_the_memory() -> None:
    # olmocr: one GPU model at a time, however large the machine.
    assert automatic_parallel("olmocr", 0, cpus=64, available_mib=512_000, document_memory_mb=2048) == 1
    # tesseract and text spread one chunk over every core themselves: a second chunk overlaps.
    assert automatic_parallel("text", 0, cpus=64, available_mib=512_000, document_memory_mb=2048) == 2
    assert automatic_parallel("tesseract", 0, cpus=1, available_mib=512_000, document_memory_mb=2048) == 1
    # Chunks of a fixed number of workers: as many as the cores take ...
    assert automatic_parallel("tesseract", 4, cpus=64, available_mib=512_000, document_memory_mb=2048) == 16
    assert automatic_parallel("command", 0, cpus=64, available_mib=512_000, document_memory_mb=2048) == 64
    # ... and the memory holds (document_memory_mb per worker, or a planned figure when unlimited).
    assert automatic_parallel("command", 0, cpus=64, available_mib=10_000, document_memory_mb=2048) == 4
    assert automatic_parallel("command", 0, cpus=64, available_mib=10_000, document_memory_mb=0) == 9
    assert automatic_parallel("text", 2, cpus=64, available_mib=1000, document_memory_mb=2048) == 1


def test_a_configured_parallel_chunks_wins_over_the_automatic_figure() -> None:
    assert parallel_chunks(3, "olmocr", 0, 2048) == 3
    assert parallel_chunks(1, "command", 0, 0) == 1
    assert parallel_chunks(0, "olmocr", 0, 2048) == 1
    assert parallel_chunks(0, "command", 1, 0) == automatic_parallel(
        "command", 1, available_cpus(), available_memory_mib(), 0) >= 1
    assert 0 < available_memory_mib() < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
