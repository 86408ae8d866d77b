"""Benchmark: CountPages (ranged GETs) against "GET the whole object, count with pypdf" on a local S3.

Starts moto's server on 127.0.0.1 (or uses --endpoint), uploads a generated corpus of scanned-like
PDFs (large image pages), many-page and born-digital files, then times both ways with the same
number of threads and prints bytes fetched, wall time and their ratios. Targets: under 2% of the
bytes and at least 5x faster.

    python bench/bench_s3_count.py                 # >= 300 MB corpus
    python bench/bench_s3_count.py --size-mb 40    # reduced, for CI
    python bench/bench_s3_count.py --rtt-ms 20 --link-mb-s 100   # with a model of a real network

moto serves a ranged GET by reading the whole object (and spends ~8 ms on any request), so on
moto alone a 4 KB range of a 30 MB object costs almost half a full GET. Against real S3 the
latency per request and the node's bandwidth decide; ``--rtt-ms`` and ``--link-mb-s`` model them
by delaying each response in the calling thread, the same way for both methods.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET = "bench-corpus"


def base_documents(seed: int) -> list[bytes]:
    """Distinct documents shaped like a scanned archive: image pages of about 1-2 MB, 1-4 pages a
    document, with some born-digital and many-page files among them."""
    from pipeline import samples
    from tests.s3server import noise_pdf

    rng = random.Random(seed)
    docs = [noise_pdf(rng.randint(1, 4), side=rng.choice([1100, 1300, 1500]), seed=seed + i) for i in range(10)]
    docs += [samples.blank_pdf(n) for n in (500, 2000)]
    docs += [samples.text_pdf([samples.sentence(rng) for _ in range(rng.randint(5, 40))]) for _ in range(3)]
    docs += [samples.scanned_pdf([samples.sentence(rng)] * 2)]
    return docs


def upload_corpus(client, size_mb: float, seed: int, workers: int) -> dict[str, bytes]:
    """Copies of the base documents under distinct keys until the corpus reaches ``size_mb``."""
    base = base_documents(seed)
    rng = random.Random(seed)
    corpus: dict[str, bytes] = {}
    total = 0
    while total < size_mb * 1e6:
        data = rng.choice(base)
        corpus[f"raw/{len(corpus) // 100:03d}/doc {len(corpus):05d}.pdf"] = data
        total += len(data)
    client.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=BUCKET, Key=item[0], Body=item[1]), corpus.items()))
    return corpus


def model_network(client, rtt_ms: float, link_mb_s: float) -> None:
    """Delay each response by a round trip plus its body's turn on a link shared by all threads."""
    lock = threading.Lock()
    link_free_at = [0.0]

    def delay(parsed: dict, **_: object) -> None:
        size = parsed.get("ContentLength", 0) if isinstance(parsed, dict) else 0
        with lock:
            start = max(time.monotonic(), link_free_at[0])
            link_free_at[0] = start + (size / (link_mb_s * 1e6) if link_mb_s else 0)
            until = link_free_at[0] + rtt_ms / 1000
        time.sleep(max(0.0, until - time.monotonic()))

    client.meta.events.register("after-call.s3", delay)


def run_count_pages(workers: int) -> tuple[float, int, dict[str, int]]:
    """counting.count_pages, as CountPages runs it; returns (seconds, bytes fetched, {uri: pages})."""
    from pipeline.cloud import counting, s3
    from pipeline.config import S3Config

    output = f"s3://{BUCKET}/manifests/page_counts_master.csv"
    storage = s3.Storage(s3.S3Settings.from_config(pool=workers))
    started = time.perf_counter()
    stats = counting.count_pages(storage, f"s3://{BUCKET}/raw/", output, max_workers=workers, chunk_size=2000,
                                 block_size=S3Config().range_block_bytes)
    seconds = time.perf_counter() - started
    pages = {row["key"]: int(row["pages"]) for row in counting.csv_rows(storage.read_bytes(output))}
    return seconds, stats.bytes_fetched, pages


def run_baseline(client, keys: list[str], workers: int) -> tuple[float, int, dict[str, int]]:
    """GET every whole object and count its pages with pypdf."""
    from pypdf import PdfReader

    def count(key: str) -> tuple[str, int, int]:
        data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        return key, len(data), len(reader.pages)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(count, keys))
    seconds = time.perf_counter() - started
    return seconds, sum(r[1] for r in results), {f"s3://{BUCKET}/{k}": r[2] for k, r in zip(keys, results, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=320, help="corpus size in MB (default 320)")
    parser.add_argument("--workers", type=int, default=16, help="threads for both methods (default 16)")
    parser.add_argument("--endpoint", default="", help="an S3-compatible endpoint; default: start moto's server")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rtt-ms", type=float, default=0, help="network model: added latency per request")
    parser.add_argument("--link-mb-s", type=float, default=0,
                        help="network model: the node's bandwidth in MB/s, shared by all threads (0 = no limit)")
    args = parser.parse_args()

    from tests.s3server import FAKE_CREDENTIALS, start_moto_server, stop

    for name, value in FAKE_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("LUIGI_CONFIG_PATH", str(Path(tempfile.mkdtemp()) / "luigi.cfg"))
    server, endpoint = (None, args.endpoint) if args.endpoint else start_moto_server()
    try:
        import luigi

        from pipeline.cloud.s3 import S3Settings, get_client

        luigi.configuration.get_config().set("s3", "endpoint_url", endpoint)
        # The client count_pages will use (one per process), shared with the baseline.
        client = get_client(S3Settings.from_config(pool=args.workers))
        started = time.perf_counter()
        corpus = upload_corpus(client, args.size_mb, args.seed, args.workers)
        total = sum(len(d) for d in corpus.values())
        print(f"corpus: {len(corpus):,} PDFs, {total / 1e6:,.1f} MB, uploaded in "
              f"{time.perf_counter() - started:.1f} s; {args.workers} threads, endpoint {endpoint}")
        if args.rtt_ms or args.link_mb_s:
            model_network(client, args.rtt_ms, args.link_mb_s)
            print(f"network model: +{args.rtt_ms:g} ms per request, link {args.link_mb_s or 'unlimited'} MB/s")

        ranged_s, ranged_bytes, ranged_pages = run_count_pages(args.workers)
        base_s, base_bytes, base_pages = run_baseline(client, sorted(corpus), args.workers)
        if ranged_pages != base_pages:
            wrong = [k for k in base_pages if ranged_pages.get(k) != base_pages[k]]
            raise SystemExit(f"page counts differ for {len(wrong)} documents, e.g. {wrong[:3]}")

        byte_ratio, speedup = ranged_bytes / base_bytes, base_s / ranged_s
        print(f"{'method':<34} {'bytes fetched':>16} {'wall time':>10}")
        print(f"{'CountPages (ranged GETs)':<34} {ranged_bytes:>16,} {ranged_s:>9.2f}s")
        print(f"{'baseline (whole GET + pypdf)':<34} {base_bytes:>16,} {base_s:>9.2f}s")
        print(f"bytes ratio {100 * byte_ratio:.3f}% (target < 2%): {'met' if byte_ratio < 0.02 else 'MISSED'}")
        print(f"speed-up {speedup:.1f}x (target >= 5x): {'met' if speedup >= 5 else 'MISSED'}")
        print(f"pages: {sum(base_pages.values()):,} in {len(base_pages):,} documents, identical for both methods")
    finally:
        if server is not None:
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
