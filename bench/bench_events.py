"""OCRBatch's start-time read of the event log and Status's scan of it, before and after compaction.

    python bench/bench_events.py [--events 10000000] [--dir PATH] [--repeat 3]

The log holds N events in the proportions a site writes them: per document a downloaded and a
finalized line, per chunk of 150 documents a chunk_planned, a chunk_done and a submission, per batch
of 1,000 documents batch_created, split and batch_finalized, and a failed attempt in every tenth
batch. The start-time read is what OCRBatch does with the SLURM executor (latest_submissions and
failed_attempts, twice) for the last batch; Status's scan is pipeline.ops.status.scan_events. Both
are timed on the log as written, then the log is compacted (timed too) and both are timed again;
the ratio says how much faster they became. The log is written in --dir and removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import events  # noqa: E402
from pipeline.executors.attempts import failed_attempts  # noqa: E402
from pipeline.executors.slurm.executor import latest_submissions  # noqa: E402
from pipeline.ops.status import scan_events  # noqa: E402

BATCH = 1000
CHUNK = 150


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"  # as events.append writes it


def build(path: Path, count: int) -> str:
    """Write about ``count`` events; returns the last batch's number. Progress every million."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written, batch, next_report = 0, 0, 1_000_000
    time_ = events.now_iso()
    with open(path, "w", encoding="utf-8") as out:
        while written < count:
            batch += 1
            number = f"{batch:04d}" if batch < 10_000 else str(batch)
            ids = [f"doc{batch:06d}-{i:04d}" for i in range(BATCH)]
            lines = [_line({"event": "downloaded", "identifier": i, "source": f"/srv/incoming/{i}.pdf",
                            "time": time_}) for i in ids]
            lines.append(_line({"event": "batch_created", "batch": number, "documents": BATCH, "pages": 5 * BATCH,
                                "time": time_}))
            chunks = list(range((BATCH + CHUNK - 1) // CHUNK))
            lines += [_line({"event": "chunk_planned", "batch": number, "chunk": c, "pages": 5 * CHUNK,
                             "documents": CHUNK, "walltime": 5760, "time": time_}) for c in chunks]
            lines.append(_line({"event": "slurm_submitted", "batch": number, "chunks": chunks,
                                "job_id": str(100_000 + batch), "walltime": 5760, "time": time_}))
            if batch % 10 == 0:
                lines.append(_line({"event": "slurm_chunk_failed", "batch": number, "chunk": 0, "state": "TIMEOUT",
                                    "job_id": str(100_000 + batch), "time": time_}))
            lines += [_line({"event": "chunk_done", "batch": number, "chunk": c, "pages": 5 * CHUNK,
                             "missing": 0, "time": time_}) for c in chunks]
            lines.append(_line({"event": "split", "batch": number, "documents": BATCH, "time": time_}))
            lines += [_line({"event": "finalized", "identifier": i, "batch": number, "time": time_}) for i in ids]
            lines.append(_line({"event": "batch_finalized", "batch": number, "finalized": BATCH, "time": time_}))
            out.writelines(lines)
            written += len(lines)
            if written >= next_report:
                print(f"  {written:,} events written", file=sys.stderr, flush=True)
                next_report += 1_000_000
    return number


def timed(work: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the log is written (default: a temp folder)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_events.", dir=args.dir))
    try:
        path = root / "_manifests" / "events.ndjson"
        print(f"writing an event log of {args.events:,} events in {path} ...", file=sys.stderr, flush=True)
        last = build(path, args.events)
        size = path.stat().st_size

        def start_read() -> object:  # what OCRBatch reads before it submits (SLURM executor)
            return (failed_attempts(path, last), failed_attempts(path, last, forget=False),
                    latest_submissions(path, last))

        def status_scan() -> object:
            return scan_events(path)

        expected = (start_read(), status_scan())
        before = (timed(start_read, args.repeat), timed(status_scan, args.repeat))
        started = time.perf_counter()
        done = events.compact(path, progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True))
        compaction = time.perf_counter() - started
        assert done is not None, "nothing was compacted"
        assert (start_read(), status_scan()) == expected, "compaction changed what the readers return"
        after = (timed(start_read, args.repeat), timed(status_scan, args.repeat))
        segments = sum((path.parent / "events" / s).stat().st_size for s in done.segments)
        snapshot = (path.parent / "events" / events.SNAPSHOT).stat().st_size
        print(f"event log:                 {args.events:,} events, {size / 2**20:,.0f} MiB "
              f"({size / args.events:.0f} bytes per event)")
        print(f"compaction:                {compaction:.1f} s into {len(done.segments)} segments of "
              f"{segments / 2**20:,.0f} MiB in all, snapshot {snapshot / 2**10:,.0f} KiB")
        for name, old, new in (("OCRBatch start-time read", before[0], after[0]),
                               ("Status event scan", before[1], after[1])):
            print(f"{name + ':':26} {old:.3f} s uncompacted, {new:.4f} s compacted "
                  f"(ratio {old / new:,.0f})")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
