"""pipeline.executors.attempts: how a chunk's end is described, and its failed attempts counted across runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import events
from pipeline.executors.attempts import describe_end, failed_attempts
from pipeline.layout import Layout


@pytest.mark.parametrize("state, code, text", [
    ("FAILED", "1:0", "FAILED (exit code 1:0)"),
    ("FAILED", "0:11", "FAILED (killed by SIGSEGV)"),
    ("OUT_OF_MEMORY", "0:125", "OUT_OF_MEMORY (killed by signal 125)"),
    ("COMPLETED", "0:0", "COMPLETED without writing its done marker"),
    ("NODE_FAIL", None, "NODE_FAIL (exit code unknown)"),
])
def test_how_an_end_is_described(state: str, code: str | None, text: str) -> None:
    assert describe_end(state, code) == text


def test_failed_attempts_count_per_chunk_until_a_reset(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    events.log_event(layout.events, "slurm_chunk_failed", batch="0002", chunk=0, job_id="7", state="TIMEOUT")
    events.log_event(layout.events, "local_chunk_failed", batch="0002", chunk=1, state="FAILED")
    events.log_event(layout.events, "slurm_chunk_failed", batch="0003", chunk=0, job_id="8", state="FAILED")
    events.log_event(layout.events, "chunk_attempts_reset", batch="0002", chunks=[1])
    events.log_event(layout.events, "slurm_chunk_failed", batch="0002", chunk=0, job_id="9", state="FAILED")
    counted = failed_attempts(layout.events, "0002")
    assert {chunk: [e["state"] for e in found] for chunk, found in counted.items()} == {0: ["TIMEOUT", "FAILED"]}
    ever = failed_attempts(layout.events, "0002", forget=False)
    assert sorted(ever) == [0, 1]
