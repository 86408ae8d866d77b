"""Shard status of a large shard set against a bare pass that only maps every URI to its marker key.

    python bench/bench_shard_status.py [--documents 100000] [--repeat 3]

ShardStatus and ``python -m pipeline.sharding status`` spend their CPU in status.shard_status once
the markers are listed; the bare pass (doc_key of every URI, the work it cannot skip) runs in the
same process, so the ratio holds on any machine. Target: 100,000 documents under 1 s on a quiet
machine (the table of a large run stays interactive).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from pipeline.cloud import markers, status

    uris = [f"s3://b/raw/{i:06d}.pdf" for i in range(args.documents)]
    shards = {k + 1: uris[k::4] for k in range(4)}
    pages = {u: 3 for u in uris}
    done = {markers.doc_key(u) for u in uris[: args.documents * 6 // 10]}
    failed = {markers.doc_key(u) for u in uris[args.documents * 59 // 100: args.documents * 61 // 100]}

    def timed(work) -> float:
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            work()
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    bare = timed(lambda: [markers.doc_key(u) for u in uris])
    full = timed(lambda: status.shard_status(shards, pages, done, failed))
    print(f"{'method':<32} {'seconds':>9}   ({args.documents:,} documents, median of {args.repeat})")
    print(f"{'shard_status':<32} {full:>9.3f}")
    print(f"{'bare doc_key pass':<32} {bare:>9.3f}")
    print(f"ratio {full / bare:.2f}x the bare pass; {args.documents:,} documents in {full:.3f} s "
          f"(target < 1 s for 100,000): {'met' if full * 100_000 / args.documents < 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
