"""Status on a synthetic base_dir of N documents against a bare os.scandir walk of the same tree.

    python bench/bench_status.py [--documents 1000000] [--dir PATH] [--repeat 3]

The tree has the real layout (fan-out width 2) and is made of empty files, except the few records
Status reads per batch (batch.json, chunks.json, finalized.json): 2% of the documents wait in
01_downloaded, three open batches of 1,000 documents are being OCRed, 1% are quarantined, the rest
are finalized (04 and 05, in batches of 1,000). The event log holds a downloaded and a finalized
line per document (its real size), metrics.ndjson one record per chunk. The walk that only lists
every folder (no stat, no record) runs in the same process, so the ratio holds on any machine.
Status is timed without its folder cache (the first Status on a base_dir) and with it (every later
one, while 04, 05 and quarantine folders are unchanged). Target: a million documents in seconds.
The tree is kept in --dir and reused by the next run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 1000
OPEN_BATCHES = 3
PAGES = 5  # per document


def fanout(identifier: str) -> str:
    return hashlib.sha1(identifier.encode()).hexdigest()[:2]


def touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def build(base: Path, documents: int) -> None:
    """The synthetic base_dir; prints progress every 100,000 documents."""
    waiting = documents * 2 // 100
    quarantined = documents // 100
    opened = min(OPEN_BATCHES * BATCH, max(0, documents - waiting - quarantined))
    finalized = documents - waiting - quarantined - opened
    for stage in ("01_downloaded", "04_ocr_completed", "05_processed", "_quarantine"):
        for n in range(256):
            (base / stage / f"{n:02x}").mkdir(parents=True, exist_ok=True)
    (base / "_manifests").mkdir(exist_ok=True)
    lines = []
    number = 0
    for start in range(0, finalized, BATCH):
        number += 1
        batch = base / "03_ocr_processing" / f"batch_{number:04d}"
        batch.mkdir(parents=True)
        ids = [f"doc{i:08d}" for i in range(start, min(finalized, start + BATCH))]
        (batch / "finalized.json").write_text(json.dumps({"finalized": len(ids), "pages": PAGES * len(ids)}))
        for identifier in ids:
            ab = fanout(identifier)
            touch(str(base / "04_ocr_completed" / ab / f"{identifier}.ocr.jsonl"))
            folder = base / "05_processed" / ab / identifier
            folder.mkdir()
            touch(str(folder / f"{identifier}.ocr.json"))
            touch(str(folder / f"{identifier}.metadata.json"))
            lines.append(json.dumps({"event": "downloaded", "identifier": identifier, "source": f"/in/{identifier}.pdf",
                                     "time": "2026-01-01T00:00:00.000+00:00"}, sort_keys=True))
            lines.append(json.dumps({"batch": f"{number:04d}", "event": "finalized", "identifier": identifier,
                                     "time": "2026-01-01T01:00:00.000+00:00"}, sort_keys=True))
        if number % 100 == 0:
            print(f"  built {start + BATCH:,} finalized documents", file=sys.stderr, flush=True)
    for k in range(OPEN_BATCHES):
        number += 1
        batch = base / "03_ocr_processing" / f"batch_{number:04d}"
        (batch / "results" / "done").mkdir(parents=True)
        first = finalized + k * BATCH
        ids = [f"doc{i:08d}" for i in range(first, min(finalized + opened, first + BATCH))]
        for identifier in ids:
            touch(str(batch / f"{identifier}.pdf"))
        (batch / "batch.json").write_text(json.dumps(
            {"batch": f"{number:04d}", "documents": {i: {"pages": PAGES} for i in ids}, "pages": PAGES * len(ids)}))
        parts = [ids[start:start + 300] for start in range(0, len(ids), 300)]
        chunks = [{"index": c, "pages": PAGES * len(part), "documents": part} for c, part in enumerate(parts)]
        (batch / "chunks.json").write_text(json.dumps({"chunks": chunks}))
        for chunk in chunks[: len(chunks) // 2]:
            touch(str(batch / "results" / "done" / f"chunk_{chunk['index']:03d}.done"))
    rest = documents - quarantined - waiting
    for i in range(rest, rest + quarantined):
        identifier = f"doc{i:08d}"
        touch(str(base / "_quarantine" / fanout(identifier) / f"{identifier}.pdf"))
        touch(str(base / "_quarantine" / fanout(identifier) / f"{identifier}.reason.json"))
    for i in range(rest + quarantined, documents):
        identifier = f"doc{i:08d}"
        touch(str(base / "01_downloaded" / fanout(identifier) / f"{identifier}.pdf"))
        touch(str(base / "01_downloaded" / fanout(identifier) / f"{identifier}.meta.json"))
    (base / "_manifests" / "events.ndjson").write_text("\n".join(lines) + "\n")
    chunk_records = [json.dumps({"batch": f"{n // 4 + 1:04d}", "chunk": n % 4, "pages": 1500, "executor": "local",
                                 "state": "COMPLETED", "exit_code": 0, "elapsed": 600.0,
                                 "end": "2026-01-01T01:00:00.000+00:00"}) for n in range(documents * PAGES // 1500)]
    (base / "_manifests" / "metrics.ndjson").write_text("\n".join(chunk_records) + "\n")
    (base / ".bench_documents").write_text(str(documents))


def bare_walk(root: str) -> int:
    """Every entry of the tree listed, nothing else: the least any status pass must do."""
    count = 0
    stack = [root]
    while stack:
        for entry in os.scandir(stack.pop()):
            count += 1
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench_status"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from pipeline.layout import Layout
    from pipeline.ops import status

    base = args.dir / f"base_{args.documents}"
    marker = base / ".bench_documents"
    if not marker.exists():
        if base.exists():
            raise SystemExit(f"{base} holds an unfinished tree: delete it, then run again")
        print(f"building a base_dir of {args.documents:,} documents in {base} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        build(base, args.documents)
        print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    layout = Layout(base, 2)

    def timed(work) -> float:
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            work()
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    entries = bare_walk(str(base))  # also warms the page cache for both timings
    result = status.collect(layout)
    stages = result["stages"]
    counted = sum(stages[s]["documents"] for s in ("01_downloaded", "05_processed", "_quarantine")) + \
        stages["03_ocr_processing"]["documents"]
    assert counted == args.documents, f"Status counted {counted:,} documents of {args.documents:,}"
    cache = base / "_manifests" / status.CACHE_NAME

    def cold() -> None:
        cache.unlink(missing_ok=True)
        status.collect(layout)

    bare = timed(lambda: bare_walk(str(base)))
    first = timed(cold)
    status.collect(layout)
    later = timed(lambda: status.collect(layout))
    size = (base / "_manifests" / "events.ndjson").stat().st_size
    print(f"documents:                 {args.documents:,} ({entries:,} folder entries, event log "
          f"{size / 2**20:,.0f} MiB)")
    print(f"bare os.scandir walk:      {bare:.2f} s")
    print(f"Status, no folder cache:   {first:.2f} s (ratio to the bare walk {first / bare:.2f})")
    print(f"Status, folders unchanged: {later:.2f} s (ratio to the bare walk {later / bare:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
