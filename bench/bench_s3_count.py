"""Benchmark: CountPages (ranged GETs) against "GET the whole object, count with pypdf" on a local S3,
at the network speeds of a real node.

Starts moto's server on 127.0.0.1 (or uses --endpoint), uploads an archive-like corpus (scanned
documents of 1-30 MB, image pages, and a few many-page born-digital files), and runs both methods
with the same threads, checking they count the same pages. Every S3 request of both runs is recorded
(per document: the bytes each request fetched and the client's CPU time between and around them),
then the recorded runs are replayed on a model of a node's network: each request waits a latency
(--rtt-ms), then its bytes go through ONE link shared by all threads, a token bucket of the link's
rate (--links, Gbit/s, a burst of --burst-kb), while the threads take the documents in order as the
thread pool does. The client's CPU time counts per thread, as on a node with a core per thread,
which favours the baseline (pypdf reading whole objects). Targets: under 2% of the bytes, at least
5x faster at 1 Gbit/s and never slower than the baseline at any link speed.

    python bench/bench_s3_count.py                 # >= 300 MB corpus
    python bench/bench_s3_count.py --size-mb 40    # reduced, for CI
    python bench/bench_s3_count.py --rtt-ms 30 --links 1,10,25   # other latency, other links

Why a replay and not delays in the live run: moto serves a ranged GET by reading the whole object and
spends ~13 ms of its single process on any request, so on moto alone a few ranged GETs of a 30 MB
object cost as much as one full GET; real S3 answers a ranged GET within its first-byte latency
whatever the object's size. The live wall times on moto are printed too, for reference.
"""
from __future__ import annotations

import argparse
import heapq
import io
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET = "bench-corpus"
SCANNED_PAGES = (1, 2, 3, 4, 6, 8, 10, 12, 14, 16)  # about 1.8 MB a page: 1-30 MB documents


def base_documents(seed: int) -> list[bytes]:
    """Distinct documents shaped like a scanned archive: image pages of about 1.8 MB, 1-16 pages a
    document (1-30 MB), and two many-page born-digital files."""
    from pipeline import samples
    from tests.s3server import noise_pdf

    docs = [noise_pdf(pages, side=1500, seed=seed + i) for i, pages in enumerate(SCANNED_PAGES)]
    return docs + [samples.blank_pdf(n) for n in (500, 2000)]


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


# --- recording the requests ----------------------------------------------------------------------

Step = tuple[str, float]  # ("cpu", seconds) or ("get", bytes)


@dataclass
class Recording:
    """The steps of each document (in the order the pool took them) and of the calling thread before
    and after the documents."""

    documents: list[list[Step]] = field(default_factory=list)
    before: list[Step] = field(default_factory=list)
    after: list[Step] = field(default_factory=list)


class Recorder:
    """Records every S3 call of the shared client: the client CPU time before it, during it, and the
    bytes it fetched (a GET's Content-Length; other calls move a few bytes and cost their latency)."""

    def __init__(self, client) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.recording: Recording | None = None
        self._main: list[Step] | None = None  # the calling thread's steps
        self._split: int | None = None        # how many of them ran before the first document
        client.meta.events.register("before-call.s3", self._before)
        client.meta.events.register("after-call.s3", self._after)

    def _steps(self) -> list[Step] | None:
        return getattr(self._local, "steps", None)

    def _before(self, **_: Any) -> None:
        steps = self._steps()
        if steps is not None:
            now = time.thread_time()
            steps.append(("cpu", now - self._local.mark))
            self._local.mark = now

    def _after(self, parsed: Any = None, model: Any = None, **_: Any) -> None:
        steps = self._steps()
        if steps is None:
            return
        now = time.thread_time()
        size = parsed.get("ContentLength", 0) if isinstance(parsed, dict) and model.name == "GetObject" else 0
        steps += [("cpu", now - self._local.mark), ("get", float(size))]
        self._local.mark = now

    @contextmanager
    def document(self) -> Iterator[None]:
        """Record the calling thread's steps as one document's."""
        steps: list[Step] = []
        with self._lock:
            assert self.recording is not None and self._main is not None
            if self._split is None:  # the calling thread's steps so far ran before the pool
                self._split = len(self._main)
            self.recording.documents.append(steps)
        outer = self._steps(), getattr(self._local, "mark", 0.0)
        self._local.steps, self._local.mark = steps, time.thread_time()
        try:
            yield
        finally:
            steps.append(("cpu", time.thread_time() - self._local.mark))
            self._local.steps, self._local.mark = outer

    @contextmanager
    def run(self) -> Iterator[Recording]:
        """Record a run in the calling thread: its own steps go before or after the documents."""
        self.recording = recording = Recording()
        self._main, self._split = [], None
        self._local.steps, self._local.mark = self._main, time.thread_time()
        try:
            yield recording
        finally:
            self._main.append(("cpu", time.thread_time() - self._local.mark))
            self._local.steps = None
            split = len(self._main) if self._split is None else self._split
            recording.before, recording.after = self._main[:split], self._main[split:]


# --- the network model ---------------------------------------------------------------------------

class Link:
    """One link shared by every thread: a token bucket filling at ``rate`` bytes/s up to ``burst``
    bytes; a transfer waits until the bucket holds its bytes (those beyond the burst at the rate)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, 0.0

    def transfer(self, size: float, now: float) -> float:
        """When the last byte of ``size`` bytes ready at ``now`` has arrived."""
        if self.rate <= 0 or size <= 0:
            return now
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        self.tokens -= size
        if self.tokens >= 0:
            return self.at
        self.at += -self.tokens / self.rate  # the bucket is empty until then
        self.tokens = 0.0
        return self.at


def replay_run(recording: Recording, documents: int, threads: int, rtt: float, link_gbit: float,
               burst: float) -> float:
    """Seconds the recorded run takes on the model for a corpus of ``documents`` documents like the
    recorded ones (repeated in order): the calling thread's steps before and after the documents,
    one after the other, and the documents on ``threads`` threads in between."""
    link = Link(link_gbit * 1e9 / 8, burst)
    recorded = recording.documents
    at = _serial(recording.before, rtt, link, 0.0)
    at = _replay_documents([recorded[i % len(recorded)] for i in range(documents)], threads, rtt, link, at)
    return _serial(recording.after, rtt, link, at)


def _serial(steps: list[Step], rtt: float, link: Link, now: float) -> float:
    for kind, amount in steps:
        now = now + amount if kind == "cpu" else link.transfer(amount, now + rtt)
    return now


def _replay_documents(documents: list[list[Step]], threads: int, rtt: float, link: Link, start: float) -> float:
    """The pool: each thread takes the next document when done; events in time order, so the link
    serves the transfers in the order their bytes are ready."""
    queue: list[tuple[float, int, int, int]] = []  # (time, tie-break, document, step; -1 - step: its bytes)
    counter = 0
    pending = iter(range(len(documents)))
    for document in [next(pending, None) for _ in range(threads)]:
        if document is not None:
            queue.append((start, counter, document, 0))
            counter += 1
    heapq.heapify(queue)
    end = start
    while queue:
        now, _, document, step = heapq.heappop(queue)
        steps = documents[document]
        if step < 0:  # the request's bytes are ready: through the shared link
            step = -step - 1
            now = link.transfer(steps[step][1], now)
            step += 1
        while step < len(steps) and steps[step][0] == "cpu":  # a thread's own CPU
            now += steps[step][1]
            step += 1
        if step < len(steps):  # a request: its latency, then its bytes
            heapq.heappush(queue, (now + rtt, counter, document, -step - 1))
        else:
            end = max(end, now)
            following = next(pending, None)
            if following is not None:
                heapq.heappush(queue, (now, counter, following, 0))
        counter += 1
    return end


def run_count_pages(recorder: Recorder, workers: int, block_size: int) -> tuple[float, int, dict[str, int], Recording]:
    """counting.count_pages, as CountPages runs it; returns (seconds, bytes fetched, {uri: pages}, its
    recording)."""
    from pipeline.cloud import counting, s3

    output = f"s3://{BUCKET}/manifests/page_counts_master.csv"
    storage = s3.Storage(s3.S3Settings.from_config(pool=workers))
    count_document = counting.count_document

    def recorded(*args: Any, **kwargs: Any) -> Any:
        with recorder.document():
            return count_document(*args, **kwargs)

    counting.count_document = recorded  # the bench's own process only
    try:
        with recorder.run() as recording:
            started = time.perf_counter()
            stats = counting.count_pages(storage, f"s3://{BUCKET}/raw/", output, max_workers=workers,
                                         chunk_size=2000, block_size=block_size)
            seconds = time.perf_counter() - started
    finally:
        counting.count_document = count_document
    pages = {row["key"]: int(row["pages"]) for row in counting.csv_rows(storage.read_bytes(output))}
    return seconds, stats.bytes_fetched, pages, recording


def run_baseline(recorder: Recorder, client, keys: list[str],
                 workers: int) -> tuple[float, int, dict[str, int], Recording]:
    """GET every whole object and count its pages with pypdf."""
    from pypdf import PdfReader

    def count(key: str) -> tuple[str, int, int]:
        with recorder.document():
            data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                reader.decrypt("")
            return key, len(data), len(reader.pages)

    with recorder.run() as recording:
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(count, keys))
        seconds = time.perf_counter() - started
    pages = {f"s3://{BUCKET}/{k}": r[2] for k, r in zip(keys, results, strict=True)}
    return seconds, sum(r[1] for r in results), pages, recording


def fetched(recording: Recording) -> int:
    return int(sum(n for steps in [recording.before, *recording.documents, recording.after]
                   for kind, n in steps if kind == "get"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=320, help="corpus size in MB (default 320)")
    parser.add_argument("--workers", type=int, default=16, help="threads for both methods (default 16)")
    parser.add_argument("--endpoint", default="", help="an S3-compatible endpoint; default: start moto's server")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rtt-ms", type=float, default=20, help="network model: latency per request (default 20)")
    parser.add_argument("--links", default="0.1,1,10,100",
                        help="network model: the node's link speeds in Gbit/s, comma-separated; an unlimited "
                             "link is always added (default 0.1,1,10,100)")
    parser.add_argument("--burst-kb", type=float, default=256, help="network model: the link's token bucket")
    parser.add_argument("--block-kb", type=float, default=0,
                        help="CountPages' range block in KiB (default: [s3] range_block_bytes)")
    parser.add_argument("--replay-documents", type=int, default=2000,
                        help="documents of the modelled corpus: the recorded ones repeated (default 2000, one "
                             "part of CountPages' output)")
    args = parser.parse_args()
    links = [float(x) for x in args.links.split(",") if x.strip()] + [0.0]

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
        sizes = sorted(len(d) for d in corpus.values())
        print(f"corpus: {len(corpus):,} PDFs, {total / 1e6:,.1f} MB ({sizes[0] / 1e6:.2f}-{sizes[-1] / 1e6:.1f} MB "
              f"each), uploaded in {time.perf_counter() - started:.1f} s; {args.workers} threads, endpoint {endpoint}")
        recorder = Recorder(client)

        from pipeline.config import S3Config

        block = int(args.block_kb * 1024) or S3Config().range_block_bytes
        ranged_s, ranged_bytes, ranged_pages, ranged = run_count_pages(recorder, args.workers, block)
        base_s, base_bytes, base_pages, base = run_baseline(recorder, client, sorted(corpus), args.workers)
        if ranged_pages != base_pages:
            wrong = [k for k in base_pages if ranged_pages.get(k) != base_pages[k]]
            raise SystemExit(f"page counts differ for {len(wrong)} documents, e.g. {wrong[:3]}")
        if len(ranged.documents) != len(corpus) or fetched(base) != base_bytes or fetched(ranged) < ranged_bytes:
            raise SystemExit("the recording missed requests: the replay would not be the runs measured")
        requests = sum(kind == "get" for steps in ranged.documents for kind, _ in steps)

        byte_ratio = ranged_bytes / base_bytes
        print(f"{'method':<34} {'bytes fetched':>16} {'GETs':>7} {'on moto':>9}")
        print(f"{f'CountPages ({block // 1024} KiB blocks)':<34} {ranged_bytes:>16,} {requests:>7,} {ranged_s:>8.2f}s")
        print(f"{'baseline (whole GET + pypdf)':<34} {base_bytes:>16,} {len(corpus):>7,} {base_s:>8.2f}s")
        print(f"bytes ratio {100 * byte_ratio:.3f}% (target < 2%): {'met' if byte_ratio < 0.02 else 'MISSED'}")
        for name, run in (("CountPages", ranged), ("baseline", base)):
            docs = run.documents
            print(f"{name} per document: {sum(k == 'get' for d in docs for k, _ in d) / len(docs):.2f} GETs, "
                  f"{1000 * sum(n for d in docs for k, n in d if k == 'cpu') / len(docs):.1f} ms client CPU; "
                  f"the run's own steps: {sum(k == 'get' for k, _ in run.before + run.after)} requests, "
                  f"{1000 * sum(n for k, n in run.before + run.after if k == 'cpu'):.0f} ms CPU")
        print(f"on a node's network, {args.replay_documents:,} documents like these: {args.rtt_ms:g} ms per request, "
              f"one link shared by the {args.workers} threads (token bucket, burst {args.burst_kb:g} KiB)")
        print(f"{'link':>12} {'CountPages':>11} {'baseline':>10} {'speed-up':>9}")
        speedups = {}
        for gbit in links:
            ranged_t, base_t = (replay_run(r, args.replay_documents, args.workers, args.rtt_ms / 1000, gbit,
                                           args.burst_kb * 1024) for r in (ranged, base))
            speedups[gbit] = base_t / ranged_t
            name = f"{gbit:g} Gbit/s" if gbit else "unlimited"
            print(f"{name:>12} {ranged_t:>10.2f}s {base_t:>9.2f}s {speedups[gbit]:>8.1f}x")
        at_1 = speedups.get(1.0)
        if at_1 is not None:
            print(f"speed-up at 1 Gbit/s {at_1:.1f}x (target >= 5x): {'met' if at_1 >= 5 else 'MISSED'}")
        slowest = min(speedups.values())
        print(f"lowest speed-up {slowest:.1f}x (target: never slower than the baseline): "
              f"{'met' if slowest >= 1 else 'MISSED'}")
        print(f"pages: {sum(base_pages.values()):,} in {len(base_pages):,} documents, identical for both methods")
    finally:
        if server is not None:
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
