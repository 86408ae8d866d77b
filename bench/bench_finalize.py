"""Finalize throughput against a bare loop that writes, fsyncs and renames the same bytes.

    python bench/bench_finalize.py [--documents 400] [--repeat 3]

Both run in this process on the same filesystem, so the ratio holds however fast the disk is.
Target: Finalize reaches at least half the bare loop's documents/second.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(root: Path, documents: int) -> Path:
    """A base_dir whose batch 0001 is split and ready to finalize (made by the real tasks)."""
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    config = root / "luigi.cfg"
    config.write_text(f"[pipeline]\nbase_dir = {root / 'data'}\n[download]\nsource = {incoming}\n"
                      "[ocr]\nengine = text\npages_per_chunk = 5000\n[backpressure]\nmin_free_gb = 0.1\n")
    os.environ["LUIGI_CONFIG_PATH"] = str(config)  # before Luigi is imported: it reads the path then
    import luigi

    from pipeline import samples

    # Archive-like documents: 8 pages of 24 lines each (about 15 KB of text, as OCR of a short report).
    rng = random.Random(11)
    for n in range(documents):
        pages = ["\n".join(samples.sentence(rng, 12) for _ in range(24)) for _ in range(8)]
        (incoming / f"doc_{n:05d}.pdf").write_bytes(samples.text_pdf(pages))

    import pipeline  # noqa: F401  (registers the tasks)
    from tasks import CreateBatch, Download, SplitResults

    if not luigi.build([Download(run_id="bench")], local_scheduler=True, log_level="WARNING"):
        raise SystemExit("bench: Download failed")
    if not luigi.build([CreateBatch(batch="1")], local_scheduler=True, log_level="WARNING"):
        raise SystemExit("bench: CreateBatch failed")
    if not luigi.build([SplitResults(batch="1")], local_scheduler=True, log_level="WARNING"):
        raise SystemExit("bench: SplitResults failed")
    return root / "data"


def run_finalize(base: Path) -> tuple[float, int]:
    from pipeline import atomic
    from pipeline.config import PipelineConfig
    from pipeline.layout import BatchPaths, Layout
    from pipeline.stages.finalize import Provenance, finalize_many

    layout = Layout(base, 2)
    paths = BatchPaths(layout.batch_dir("1"))
    documents = atomic.read_json(paths.batch_record)["documents"]
    start = time.perf_counter()
    outcomes = finalize_many(layout, paths, documents, lambda i: Provenance("0001", 0, "text", None),
                             workers=PipelineConfig().workers)
    return time.perf_counter() - start, len(outcomes)


def run_bare_loop(files: list[tuple[Path, bytes]], target: Path) -> float:
    """The floor: each output file written, fsynced and renamed, one after another."""
    start = time.perf_counter()
    for relative, data in files:
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        pristine = prepare(root / "prepared", args.documents)
        finalize_times, bare_times = [], []
        for rep in range(args.repeat):
            base = root / f"run{rep}"
            shutil.copytree(pristine, base)
            os.sync()  # both runs start with no dirty pages of others to flush along with their own
            seconds, count = run_finalize(base)
            assert count == args.documents, f"finalized {count} of {args.documents}"
            finalize_times.append(seconds)
            processed = base / "05_processed"
            files = [(p.relative_to(processed), p.read_bytes()) for p in sorted(processed.rglob("*.json"))]
            os.sync()
            bare_times.append(run_bare_loop(files, root / f"bare{rep}"))
        fin, bare = statistics.median(finalize_times), statistics.median(bare_times)
        ratio = (args.documents / fin) / (args.documents / bare)
        print(f"documents: {args.documents}, repetitions: {args.repeat} (medians)")
        print(f"finalize:  {fin:.3f} s  {args.documents / fin:8.1f} documents/s")
        print(f"bare loop: {bare:.3f} s  {args.documents / bare:8.1f} documents/s  (write+fsync+rename, 2 files each)")
        print(f"ratio finalize/bare: {ratio:.2f}  (target >= 0.5)")
        return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
