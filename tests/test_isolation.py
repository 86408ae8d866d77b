"""Bounded workers: a document that hangs, eats memory, crashes or raises costs only itself."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

from pipeline.isolation import DocumentFailed, Limits, Workers

MiB = 1 << 20


# Test-only work functions: the workers import them from this module by name.
def behave(item: str) -> str:
    """'sleep' hangs, 'hog' allocates 1 GiB, 'segv' crashes the worker, 'raise' fails, 'modules' names
    the heavy modules the worker has; others echo."""
    if item == "modules":
        return ",".join(name for name in ("luigi", "tasks", "matplotlib") if name in sys.modules)
    if item == "sleep":
        time.sleep(3600)
    if item == "hog":
        return str(len(bytearray(1 << 30)))
    if item == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if item == "raise":
        logging.getLogger("pypdf._reader").warning("Ignoring wrong pointing object 6 0 (offset 0)")
        raise ValueError("bad glyph \udc63 in stream")
    return f"{item} in {os.getpid()}"


def results(limits: Limits, items: list[str], workers: int = 1) -> dict[str, str | DocumentFailed]:
    with Workers(limits, workers) as pool:
        return dict(pool.map(behave, items))


def test_a_hanging_document_is_stopped_and_the_others_finish() -> None:
    found = results(Limits(seconds=2, memory_bytes=1 << 30), ["a", "sleep", "b"])
    assert found["a"].startswith("a in ") and found["b"].startswith("b in ")
    failure = found["sleep"]
    assert isinstance(failure, DocumentFailed) and failure.error == "TimeLimit"
    assert "2 s" in failure.message


def test_a_document_over_the_memory_limit_fails_alone() -> None:
    found = results(Limits(seconds=60, memory_bytes=512 * MiB), ["a", "hog", "b"])
    failure = found["hog"]
    assert isinstance(failure, DocumentFailed) and failure.error == "MemoryLimit"
    assert "512 MiB" in failure.message
    assert found["a"].startswith("a in ") and found["b"].startswith("b in ")
    # Without the limit the same work succeeds: the limit, not the machine, stopped it.
    assert results(Limits(seconds=60, memory_bytes=0), ["hog"])["hog"] == str(1 << 30)


def test_a_crashed_worker_is_replaced() -> None:
    found = results(Limits(seconds=60), ["a", "segv", "b"])
    failure = found["segv"]
    assert isinstance(failure, DocumentFailed) and failure.error == "WorkerDied"
    assert "SIGSEGV" in failure.message
    pid_before, pid_after = (found[k].split(" in ")[1] for k in ("a", "b"))
    assert pid_before != pid_after, "the document after the crash ran in a new worker"


def test_an_exception_names_its_class_message_and_log() -> None:
    failure = results(Limits(seconds=60), ["raise"])["raise"]
    assert isinstance(failure, DocumentFailed)
    entry = failure.entry("x.pdf")
    assert entry["file"] == "x.pdf" and entry["error"] == "ValueError"
    assert entry["message"] == "bad glyph \\udc63 in stream"
    assert "Ignoring wrong pointing object" in entry["log"] and "Traceback" in entry["log"]
    json.dumps(entry, ensure_ascii=False).encode("utf-8")  # fit for a done marker as it is


def test_workers_start_without_luigi_or_the_tasks() -> None:
    # Every chunk job starts a worker server; importing Luigi and the tasks in it would double the
    # CPU time of the chunk's start (this test's own process has them imported).
    assert "luigi" in sys.modules
    assert results(Limits(), ["modules"]) == {"modules": ""}


def test_workers_are_reused_and_results_keep_their_order() -> None:
    items = [f"doc{i}" for i in range(50)]
    with Workers(Limits(), 2) as pool:
        found = list(pool.map(behave, items))
    assert [item for item, _ in found] == items
    assert all(result.startswith(f"{item} in ") for item, result in found)
    assert len({result.split(" in ")[1] for _, result in found}) <= 2

