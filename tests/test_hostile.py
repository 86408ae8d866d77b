"""Hostile inputs: fuzzed PDFs (tests/hostile.py) through the page counter and the whole pipeline.

Each file must end in a page count or a PdfError with a reason, in bounded time and memory. The
page counter runs in a child process with an address-space limit; the test stops it and names
the file when one file takes longer than FILE_LIMIT seconds, which only a hang would. The slowest
file and the peak memory are printed (pytest -s).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from pipeline import pdf
from pipeline.layout import Layout

from . import hostile
from .conftest import FULL_CAMPAIGN

ROOT = Path(__file__).resolve().parent.parent
# Seconds for one file, counted twice: pdfinfo's own limit (it is the last reader) twice, and more.
FILE_LIMIT = 2 * (pdf.PDFINFO_TIMEOUT + 10) + 60
MEMORY_LIMIT = 3 << 30  # address space of the counting process: a blow-up fails as MemoryError


def run_sweep(folder: Path) -> list[dict]:
    """Count every file in a child process; fail naming the file when one stalls the sweep."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile", "sweep", str(folder), str(MEMORY_LIMIT)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    results, current = [], "(starting)"
    deadline = time.monotonic() + FILE_LIMIT
    try:
        while True:
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"page counting of {current} took more than {FILE_LIMIT} s: a hang")
            line = process.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if "start" in record:
                current, deadline = record["start"], time.monotonic() + FILE_LIMIT
            else:
                results.append(record)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == 0, f"the sweep died at {current}: {process.stderr.read()[-3000:]}"
    return results


def outcome(result: dict) -> str:
    return f"pages={result['pages']}" if "pages" in result else result.get("reason") or "crash"


def check_sweep(files: list[hostile.Hostile], results: list[dict]) -> None:
    expected = {f.path.name: f for f in files}
    assert sorted(r["file"] for r in results) == sorted(expected)
    problems = []
    for result in results:
        name = result["file"]
        for way in ("local", "source"):
            got = result[way]
            if "crash" in got:
                problems.append(f"{name} ({way}): raised {got['crash']}")
            elif "pages" in got and got["pages"] < 1:
                problems.append(f"{name} ({way}): {got['pages']} pages")
            elif "reason" in got and got["reason"] not in hostile.REASONS:
                problems.append(f"{name} ({way}): unknown reason {got['reason']}")
        if outcome(result["local"]) != outcome(result["source"]):
            problems.append(f"{name}: a local file gives {outcome(result['local'])}, "
                            f"the same bytes as a remote object {outcome(result['source'])}")
        pages = expected[name].pages
        if pages is not None and result["local"].get("pages") != pages:
            problems.append(f"{name}: page tree untouched, {pages} pages expected, got {outcome(result['local'])}")
    assert not problems, "\n".join(problems)


def report(results: list[dict]) -> None:
    slowest = max(results, key=lambda r: r["seconds"])
    by_outcome = Counter(r["local"].get("method") or r["local"].get("reason") for r in results)
    print(f"\n{len(results)} hostile files counted twice each (local path, byte source): {dict(by_outcome)}")
    print(f"slowest: {slowest['file']} {slowest['seconds']:.2f} s; total {sum(r['seconds'] for r in results):.1f} s")
    print(f"peak memory: counter {max(r['maxrss_kb'] for r in results) / 1024:.0f} MiB, "
          f"pdfinfo {max(r['children_maxrss_kb'] for r in results) / 1024:.0f} MiB")


@pytest.mark.parametrize("count", [300, pytest.param(3000 if FULL_CAMPAIGN else 600, marks=pytest.mark.slow)])
def test_page_counter_survives_hostile_files(tmp_path: Path, count: int) -> None:
    files = hostile.generate(tmp_path / "hostile", count, seed=7)
    assert {f.mutation for f in files} == set(hostile.MUTATIONS)
    results = run_sweep(tmp_path / "hostile")
    report(results)
    check_sweep(files, results)


def test_the_fuzzer_is_deterministic_and_its_bomb_is_real(tmp_path: Path) -> None:
    first = hostile.generate(tmp_path / "a", 40, seed=3)
    second = hostile.generate(tmp_path / "b", 40, seed=3)
    assert [f.path.read_bytes() for f in first] == [f.path.read_bytes() for f in second]
    bomb = hostile.zeros_bomb(b"head")
    inflater = zlib.decompressobj()
    total, data = 0, bomb
    while data:
        total += len(inflater.decompress(data, 1 << 26))
        data = inflater.unconsumed_tail
    assert inflater.eof and total == len(b"head") + hostile.BOMB_BYTES and len(bomb) < hostile.BOMB_BYTES // 500


def test_process_all_survives_hostile_collection(make_site, tmp_path: Path) -> None:
    """Every fuzzed file is finalized or quarantined with a reason; nothing crashes or hangs.

    Relies on per-document isolation in the engines: a document the text engine cannot read must
    cost that document only.
    """
    files = hostile.generate(tmp_path / "incoming", 300, seed=11)
    # A tight per-document limit: the documents built to make extraction hang cost 20 s, not 120.
    # Chunks of 200 pages: each chunk job holds many hostile documents, whose failures stay their own.
    site = make_site(source=tmp_path / "incoming", engine="text", ocr__document_timeout=20,
                     ocr__pages_per_chunk=200)
    result = site.luigi("ProcessAll", "--run-id", "hostile", check=False, timeout=1800)
    layout: Layout = site.layout
    finalized, quarantined, missing = [], Counter(), []
    for f in files:
        identifier = f.path.stem
        reason_file = layout.quarantine_reason(identifier)
        if layout.processed_ocr(identifier).exists():
            finalized.append(identifier)
        elif reason_file.exists():
            quarantined[json.loads(reason_file.read_text())["reason"]] += 1
        else:
            missing.append(identifier)
    print(f"\n{len(files)} hostile files: {len(finalized)} finalized, quarantined by reason {dict(quarantined)}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert not missing, f"{len(missing)} neither finalized nor quarantined, e.g. {missing[:5]}"
    assert all(json.loads(layout.quarantine_reason(f.path.stem).read_text()).get("message")
               for f in files if layout.quarantine_reason(f.path.stem).exists())
