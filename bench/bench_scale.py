"""Scale rehearsal: N generated documents through ProcessAll with the text engine, then a no-op rerun.

    python bench/bench_scale.py [--documents 100000] [--dir PATH] [--baseline-sample 5000] [--workers 1] [--keep]

The documents are two-page text PDFs from pipeline.samples (a few hundred distinct ones, reused under
N names), in a source folder of a fresh base_dir under --dir. `luigi --module pipeline ProcessAll
--local-scheduler` runs them from download to 05_processed (every batch open at once, the local
executor's automatic parallel_chunks), then ProcessAll runs again with a new run id and finds nothing to do.

Printed: wall time per stage (each task's output file time minus the one before it: one Luigi worker
runs the tasks one after another; with --workers above 1 they overlap and the split is rough), Luigi
tasks scheduled (from its execution summary), the no-op rerun's time, the peak RSS of any process
the runs started, event-log bytes per document, the time of `python -m pipeline status`, and the
pipeline's documents/second against a bare baseline doing the same per-document file I/O in this run
(read the PDF, write two JSON files with fsync, delete it; timed on --baseline-sample documents, its
rate holds for any N), and against the pipeline's own per-document file operations done alone
(file_operations_baseline: what the layout's files and the safety rules cost on this disk), with the
machine's CPU time during the run (/proc/stat: every process, so run it on a quiet machine) per
document and the cores busy on average. Last, the CPU per document that no pipeline of this layout
can avoid here (the text engine's own reading plus those file operations) and the ratio it would
reach with every core busy on nothing else: the ceiling of the ratio on this machine.
Targets at 100,000 documents:
no-op rerun under 10 s, Status under 2 s, at most one Luigi task per 200 documents, ratio at least 0.3.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DISTINCT = 200  # distinct PDFs; the others are copies of them under other names
BATCH_SIZE = 2000  # luigi.cfg's default [pipeline] batch_size
T = TypeVar("T")
TARGETS = {"noop_seconds": 10.0, "status_seconds": 2.0, "documents_per_task": 200.0, "ratio": 0.3}


def make_documents(folder: Path, documents: int) -> None:
    from pipeline import samples

    folder.mkdir(parents=True)
    bodies = [samples.text_pdf([f"Scale rehearsal document {n}", "A line of text on its only page."])
              for n in range(min(DISTINCT, documents))]
    for n in range(documents):
        with open(folder / f"doc{n:07d}.pdf", "wb") as handle:
            handle.write(bodies[n % len(bodies)])


def write_config(root: Path, documents: int, batch_size: int) -> Path:
    config = root / "luigi.cfg"
    config.write_text(
        f"[pipeline]\nbase_dir = {root / 'data'}\nbatch_size = {batch_size}\n"
        f"[download]\nsource = {root / 'incoming'}\n"
        "[ocr]\nexecutor = local\nengine = text\n"  # parallel_chunks: the automatic default
        f"[backpressure]\nmin_free_gb = 0.5\nmax_waiting_documents = {documents + 1}\n"
        f"max_open_batches = {documents // batch_size + 2}\n")
    (root / "data").mkdir()
    return config


def luigi_run(root: Path, config: Path, *args: str) -> tuple[float, str]:
    """One `luigi --module pipeline ... --local-scheduler` run; returns its wall time and its output."""
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    luigi = Path(sys.executable).with_name("luigi")
    started = time.perf_counter()
    command = [str(luigi) if luigi.exists() else "luigi", "--module", "pipeline", *args, "--local-scheduler"]
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode:
        print(output[-6000:], file=sys.stderr)
        raise SystemExit(f"bench: luigi {' '.join(args)} exited {result.returncode}")
    return seconds, output


def tasks_scheduled(output: str) -> int:
    match = re.search(r"Scheduled (\d+) tasks of which", output)
    if not match:
        raise SystemExit("bench: no Luigi execution summary in the output")
    return int(match.group(1))


def stage_times(base: Path, started: float) -> dict[str, float]:
    """Seconds per stage: the time between consecutive task output files, given to the later one's stage."""
    from pipeline.layout import BatchPaths, Layout

    layout = Layout(base, 2)
    downloads = (base / "_manifests" / "downloads").glob("*")
    ends: list[tuple[float, str]] = [(p.stat().st_mtime, "Download") for p in downloads]
    for number in layout.batch_numbers():
        paths = BatchPaths(layout.batch_dir(number))
        for stage, path in (("CreateBatch", paths.batch_record), ("PlanChunks", paths.chunk_plan),
                            ("OCRBatch", paths.ocr_marker), ("SplitResults", paths.split_report),
                            ("Finalize", paths.finalized)):
            if path.exists():
                ends.append((path.stat().st_mtime, stage))
    ends += [(p.stat().st_mtime, "ProcessAll summary") for p in (base / "_manifests" / "runs").glob("*")]
    totals: dict[str, float] = {}
    previous = started
    for end, stage in sorted(ends):
        totals[stage] = totals.get(stage, 0.0) + max(0.0, end - previous)
        previous = end
    return totals


def bare_baseline(source: Path, work: Path, sample: int) -> float:
    """Documents/second of the bare per-document file I/O: read the PDF, write two JSON files with fsync, delete."""
    names = sorted(os.listdir(source))[:sample]
    inputs = work / "in"
    inputs.mkdir(parents=True)
    for name in names:
        shutil.copyfile(source / name, inputs / name)
    out = work / "out"
    out.mkdir()
    started = time.perf_counter()
    for name in names:
        with open(inputs / name, "rb") as handle:
            data = handle.read()
        for suffix in (".ocr.json", ".metadata.json"):
            with open(out / (name + suffix), "w") as handle:
                json.dump({"identifier": name, "bytes": len(data)}, handle)
                handle.flush()
                os.fsync(handle.fileno())
        os.unlink(inputs / name)
    return len(names) / (time.perf_counter() - started)


def file_operations_baseline(source: Path, work: Path, sample: int) -> float:
    """Documents/second of the pipeline's own per-document file operations alone, one document after
    another, without the work between them: fetch into 01 (PDF and .meta.json, each a temp file,
    fsync, rename), link into the batch, read it there, the 04 record, the 05 folder and its two
    files, then delete the batch's link, the 01 PDF and its .meta.json. What the layout and its
    safety rules cost on this disk; the ratio of this to the bare loop bounds what a pipeline
    doing one document at a time could reach."""
    names = sorted(os.listdir(source))[:sample]
    stages = {name: work / name for name in ("01", "batch", "04", "05")}
    for folder in stages.values():
        folder.mkdir(parents=True)

    def put(path: Path, data: bytes) -> None:
        temp = path.with_name(f".{path.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)

    def folder_of(stage: str, identifier: str) -> Path:
        folder = stages[stage] / hashlib.sha1(identifier.encode()).hexdigest()[:2]
        folder.mkdir(exist_ok=True)
        return folder

    started = time.perf_counter()
    for name in names:
        identifier = name[:-4]
        data = (source / name).read_bytes()
        pdf, meta = folder_of("01", identifier) / name, folder_of("01", identifier) / f"{identifier}.meta.json"
        put(pdf, data)
        put(meta, json.dumps({"identifier": identifier, "bytes": len(data)}).encode())
        linked = stages["batch"] / name
        os.link(pdf, linked)
        linked.read_bytes()
        put(folder_of("04", identifier) / f"{identifier}.ocr.jsonl", b'{"text": ""}\n')
        done = folder_of("05", identifier) / identifier
        done.mkdir()
        put(done / f"{identifier}.ocr.json", b'{"text": ""}\n')
        put(done / f"{identifier}.metadata.json", json.dumps({"identifier": identifier}).encode())
        for path in (linked, pdf, meta):
            os.unlink(path)
    return len(names) / (time.perf_counter() - started)


def engine_alone(source: Path, sample: int) -> None:
    """The text engine's own reading of the first ``sample`` documents (pypdf, the engine DESIGN.md
    names), in this process: no isolation, no files written."""
    from pipeline.engines.text import record_line

    for name in sorted(os.listdir(source))[:sample]:
        record_line(source / name)


def with_cpu(work: Callable[[], T], documents: int) -> tuple[T, float]:
    """``work()``'s result and the machine's CPU seconds per document it cost (``documents`` of them)."""
    before = machine_busy_seconds()
    result = work()
    return result, (machine_busy_seconds() - before) / documents


def automatic_parallel() -> int:
    """The local executor's chunks at once here, as the pipeline picks them for the bench's luigi.cfg
    (engine_workers and document_memory_mb left at their defaults, 0 and 2048)."""
    from pipeline.executors.local import parallel_chunks

    return parallel_chunks(0, "text", 0, 2048)


def machine_busy_seconds() -> float:
    """CPU seconds the machine has spent busy (every core, every process: /proc/stat). Not the
    rusage of this process's children, which misses the isolation workers: their forkserver is
    never waited for."""
    with open("/proc/stat") as handle:
        ticks = [int(value) for value in handle.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    # user, nice, system, irq, softirq (steal is the hypervisor's; guest time is already in user)
    return (sum(ticks[:7]) - idle) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--baseline-sample", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="Luigi workers of the ProcessAll runs (--workers)")
    parser.add_argument("--keep", action="store_true", help="keep the base_dir (default: deleted at the end)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix=f"bench_scale_{args.documents}_", dir=args.dir))
    try:
        print(f"generating {args.documents:,} documents in {root / 'incoming'} ...", file=sys.stderr, flush=True)
        make_documents(root / "incoming", args.documents)
        config = write_config(root, args.documents, args.batch_size)
        base = root / "data"

        print("ProcessAll ...", file=sys.stderr, flush=True)
        started = time.time()
        cpu_before = machine_busy_seconds()
        workers = ("--workers", str(args.workers))
        full_seconds, output = luigi_run(root, config, "ProcessAll", "--run-id", "full", *workers)
        full_cpu = machine_busy_seconds() - cpu_before
        tasks = tasks_scheduled(output)
        stages = stage_times(base, started)
        finalized = sum(1 for _ in (base / "05_processed").glob("*/*/*.ocr.json"))
        if finalized != args.documents:
            raise SystemExit(f"bench: {finalized:,} of {args.documents:,} documents finalized")
        events_bytes = (base / "_manifests" / "events.ndjson").stat().st_size

        print("ProcessAll again (nothing to do) ...", file=sys.stderr, flush=True)
        noop_seconds, output = luigi_run(root, config, "ProcessAll", "--run-id", "noop", *workers)
        noop_tasks = tasks_scheduled(output)

        env = {**os.environ, "LUIGI_CONFIG_PATH": str(config), "PYTHONPATH": str(ROOT)}
        status_started = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "pipeline", "status"], env=env, cwd=root,
                                capture_output=True, text=True)
        status_seconds = time.perf_counter() - status_started

        print("bare baseline ...", file=sys.stderr, flush=True)
        sample = min(args.baseline_sample, args.documents)
        bare = bare_baseline(root / "incoming", root / "baseline", sample)
        floor, floor_cpu = with_cpu(
            lambda: file_operations_baseline(root / "incoming", root / "file_operations", sample), sample)
        engine_sample = min(sample, 2000)
        _, engine_cpu = with_cpu(lambda: engine_alone(root / "incoming", engine_sample), engine_sample)
        rss = peak_rss_mib()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    rate = args.documents / full_seconds
    ratio = rate / bare
    per_task = args.documents / tasks
    print(f"documents:                  {args.documents:,} (batches of {args.batch_size:,}, "
          f"{os.cpu_count()} cores, automatic parallel_chunks = {automatic_parallel()})")
    print(f"ProcessAll:                 {full_seconds:.1f} s, {rate:.1f} documents/s; the machine's CPU "
          f"meanwhile {1000 * full_cpu / args.documents:.2f} ms per document, "
          f"{full_cpu / full_seconds:.2f} of {os.cpu_count()} cores busy on average")
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"    {stage:<22} {seconds:8.1f} s  ({100 * seconds / full_seconds:4.1f}%)")
    print(f"    (start-up, scheduling) {max(0.0, full_seconds - sum(stages.values())):8.1f} s")
    print(f"Luigi tasks scheduled:      {tasks} ({per_task:.0f} documents per task; target >= 200: "
          f"{verdict(per_task >= TARGETS['documents_per_task'])})")
    print(f"no-op rerun:                {noop_seconds:.2f} s, {noop_tasks} tasks (target < 10 s: "
          f"{verdict(noop_seconds < TARGETS['noop_seconds'])})")
    print(f"peak RSS (any child):       {rss:.0f} MiB")
    print(f"event log:                  {events_bytes / args.documents:.0f} bytes per document "
          f"({events_bytes / 2**20:.1f} MiB)")
    print(f"python -m pipeline status:  {status_seconds:.2f} s, exit {status.returncode} (target < 2 s: "
          f"{verdict(status_seconds < TARGETS['status_seconds'])})")
    print(f"bare per-document I/O:      {bare:.1f} documents/s (sample of {sample:,}), "
          f"{1000 / bare:.2f} ms per document")
    print(f"ratio pipeline / bare:      {ratio:.3f} (target >= 0.3: {verdict(ratio >= TARGETS['ratio'])})")
    print(f"the pipeline's file operations alone, one document at a time: {floor:.1f} documents/s, "
          f"{1000 / floor:.2f} ms per document (ratio to bare {floor / bare:.3f}; the pipeline reaches "
          f"{rate / floor:.2f} of it)")
    cores = os.cpu_count() or 1
    unavoidable = engine_cpu + floor_cpu
    print(f"CPU no pipeline can avoid here: the text engine's reading {1000 * engine_cpu:.2f} ms + the "
          f"file operations above {1000 * floor_cpu:.2f} ms = {1000 * unavoidable:.2f} ms per document; "
          f"on {cores} cores, with every core busy and no other work, at most {cores / unavoidable:.0f} "
          f"documents/s: ratio <= {cores / unavoidable / bare:.2f}")
    if args.documents < 100_000:
        print("(the targets are for 100,000 documents; this run is smaller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
