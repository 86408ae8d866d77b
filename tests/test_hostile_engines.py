"""Hostile inputs through every engine: fuzzed PDFs (tests/hostile.py) in chunk jobs.

Each chunk runs as a job runs it (``python -m pipeline.chunk_job``, output appended to the chunk's
log) in a process the test stops when it outlives JOB_LIMIT, which only a hang would: the failure
names the engine, the chunk, its files and the end of its log. Every file must then have a valid
record or an entry in the done marker's ``failed`` list with an error class and a message.
The slowest chunk and the peak memory of the jobs are printed (pytest -s).

olmOCR needs a GPU and cannot run here; the ``command`` engine runs a stand-in that reads the chunk
list like olmOCR does and goes through the same code (bounded run, records made valid).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import atomic, olmocr_format
from pipeline.engines import EngineSettings
from pipeline.executors.jobscript import job_command
from pipeline.layout import BatchPaths

from . import hostile

ROOT = Path(__file__).resolve().parent.parent
JOB_LIMIT = 900  # seconds for one chunk job: every engine bounds each document far below this
MEMORY_MB = 512  # per document worker and per pdftoppm/tesseract process
SETTINGS = EngineSettings(workers=2, tesseract_dpi=50, document_timeout=30, document_memory_mb=MEMORY_MB)
RASTER_BOMB = "raster_bomb.pdf"

# A stand-in for olmOCR: reads the chunk list, writes a record for every PDF pypdf can read and
# names the others in its output, as olmOCR does; never stops on a document.
STAND_IN = r'''
import resource, sys
from pypdf import PdfReader
from pipeline.olmocr_format import build_record, record_line
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
with open(sys.argv[2], "wb") as out:
    for line in open(sys.argv[1], encoding="utf-8").read().splitlines():
        try:
            texts = [page.extract_text() or "" for page in PdfReader(line).pages]
            out.write(record_line(build_record(line, texts, version="stand-in")))
        except Exception as exc:
            print(f"stand-in: {line.rsplit('/', 1)[-1]}: {type(exc).__name__}: {exc}"[:500], flush=True)
'''


@dataclass
class Job:
    chunk: int
    files: list[str]
    seconds: float
    tree_peak_kb: int  # RSS of the job and all its descendants, summed, sampled
    largest_kb: int  # the largest single process of the job or its waited-for children (getrusage)


def pick(files: list[hostile.Hostile], count: int, seed: int) -> list[hostile.Hostile]:
    """``count`` files, seeded, with every mutation among them."""
    rng = random.Random(seed)
    chosen = {rng.choice([f for f in files if f.mutation == m]).path for m in sorted({f.mutation for f in files})}
    rest = sorted(f.path for f in files if f.path not in chosen)
    chosen |= set(rng.sample(rest, count - len(chosen)))
    return [f for f in files if f.path in chosen]


def descendants_rss_kb(root: int) -> int:
    """Resident memory of ``root`` and every process below it, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_job(paths: BatchPaths, index: int, engine: str, settings: EngineSettings) -> Job:
    """Run chunk ``index`` as a job does; fail naming the chunk and its files if it outlives JOB_LIMIT."""
    files = [Path(line).name for line in paths.chunk_list(index).read_text().splitlines()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = paths.chunk_log(index)
    atomic.makedirs(log.parent)
    started = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen([*job_command(paths.dir, engine, settings), "--chunk", str(index)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], descendants_rss_kb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        deadline = started + JOB_LIMIT
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                os.wait4(process.pid, 0)
                pytest.fail(f"{engine} engine, chunk {index} ({', '.join(files)}) still running after {JOB_LIMIT} s: "
                            f"a hang; end of its log:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
    finally:
        done.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, (f"{engine} engine, chunk {index} ({', '.join(files)}) exited with "
                                     f"{process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
    return Job(index, files, time.monotonic() - started, peak[0], usage.ru_maxrss)


def check_chunk(paths: BatchPaths, index: int) -> tuple[list[str], list[dict]]:
    """Every PDF of the chunk has one valid record or a failure entry; returns (recorded, failed)."""
    files = [Path(line).name for line in paths.chunk_list(index).read_text().splitlines()]
    marker = atomic.read_json(paths.done_marker(index))
    recorded, problems = [], []
    for name in marker["results"]:
        for number, raw in enumerate((paths.results / name).read_bytes().splitlines(), start=1):
            try:
                record = json.loads(raw.decode("utf-8"))
                json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogate behind a \u escape
                source = olmocr_format.source_file_of(record)
                assert isinstance(record.get("text"), str) and source, "not an olmOCR record"
                assert olmocr_format.make_valid(json.loads(raw))[1] == 0, "holds characters that are not valid text"
                recorded.append(olmocr_format.identifier_from_source(source) + ".pdf")
            except (ValueError, AssertionError) as exc:
                problems.append(f"chunk {index}: {name} line {number}: {exc}")
    failed = marker["failed"]
    for entry in failed:
        if not (entry.get("error") and entry.get("message")):
            problems.append(f"chunk {index}: {entry.get('file')}: a failure without error class or message: {entry}")
    accounted = Counter(recorded) + Counter(f["file"] for f in failed)
    for name in files:
        if accounted[name] != 1:
            problems.append(f"chunk {index}: {name}: {accounted[name]} records and failure entries, not one")
    assert not problems, "\n".join(problems)
    assert sorted(marker["missing"]) == sorted(f["file"] for f in failed)
    assert marker["documents"] == len(files) and marker["records"] == len(recorded)
    return recorded, failed


def sweep_engine(tmp_path: Path, engine: str, count: int, per_chunk: int, settings: EngineSettings,
                 seed: int) -> tuple[list[Job], Counter, dict[str, dict]]:
    corpus = hostile.generate(tmp_path / "corpus", 300, seed=7)  # the page counter's CI corpus
    paths = BatchPaths(tmp_path / "03_ocr_processing" / "batch_0001")
    names = [f.path.name for f in pick(corpus, count, seed)]
    for name in names:
        atomic.copy_file(tmp_path / "corpus" / name, paths.dir / name)
    (paths.dir / RASTER_BOMB).write_bytes(hostile.raster_bomb())
    names.append(RASTER_BOMB)
    random.Random(seed).shuffle(names)  # hostile files share chunks with each other
    chunks = [names[i:i + per_chunk] for i in range(0, len(names), per_chunk)]
    for index, chunk in enumerate(chunks):
        atomic.write_bytes(paths.chunk_list(index), "".join(f"{paths.dir / n}\n" for n in chunk).encode())
    started = time.monotonic()
    jobs, outcomes, failures = [], Counter(), {}
    for index in range(len(chunks)):
        jobs.append(run_job(paths, index, engine, settings))
        recorded, failed = check_chunk(paths, index)
        outcomes["record"] += len(recorded)
        outcomes.update(f["error"] for f in failed)
        failures.update({f["file"]: f for f in failed})
    slowest = max(jobs, key=lambda j: j.seconds)
    print(f"\n{engine} engine: {len(names)} hostile files in {len(chunks)} chunk jobs, "
          f"{time.monotonic() - started:.0f} s; outcomes {dict(outcomes)}")
    shown = ", ".join(slowest.files[:6]) + (f" and {len(slowest.files) - 6} more" if len(slowest.files) > 6 else "")
    print(f"slowest chunk: {slowest.chunk}, {slowest.seconds:.1f} s for {len(slowest.files)} files ({shown})")
    print(f"peak memory: job process tree {max(j.tree_peak_kb for j in jobs) / 1024:.0f} MiB (sampled), "
          f"largest single process {max(j.largest_kb for j in jobs) / 1024:.0f} MiB")
    return jobs, outcomes, failures


def test_text_engine_survives_hostile_files(tmp_path: Path) -> None:
    _, outcomes, _ = sweep_engine(tmp_path, "text", 300, 50, SETTINGS, seed=21)
    assert outcomes["record"] > 0


def test_command_engine_survives_hostile_files(tmp_path: Path) -> None:
    program = tmp_path / "stand_in.py"
    program.write_text(STAND_IN)
    settings = dataclasses.replace(SETTINGS, command=[sys.executable, str(program), "{chunk_list}", "{output}"])
    _, outcomes, failures = sweep_engine(tmp_path, "command", 300, 50, settings, seed=22)
    assert outcomes["record"] > 0
    # What the program said about a document it skipped is that document's failure entry.
    assert all(f["error"] == "NoRecord" and f["log"].startswith("stand-in: ") for f in failures.values())


def test_tesseract_engine_survives_hostile_files(tmp_path: Path) -> None:
    jobs, outcomes, failures = sweep_engine(tmp_path, "tesseract", 24, 5, SETTINGS, seed=23)
    assert outcomes["record"] > 0
    # The page that rasterises to gigabytes fails alone, under the memory limit, and says so.
    bomb = failures[RASTER_BOMB]
    assert bomb["error"] == "PageErrors" and f"memory limit of {MEMORY_MB} MiB" in bomb["message"], bomb
    assert max(j.largest_kb for j in jobs) < MEMORY_MB << 10
