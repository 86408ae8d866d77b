"""Text engine throughput with per-document isolation against the bare in-process loop.

    python bench/bench_text_engine.py [--documents 200] [--repeat 3]

The baseline reads each PDF's text layer with pypdf and builds its record in this process, one
after another (what the engine did before documents were isolated). The engine reads each PDF in
an isolation worker under its time and memory limits, with one worker and with one per CPU.
Each measurement runs in a fresh interpreter, as a chunk job does, so that neither side pays for
the other's heap. Target: the engine with one worker keeps at least 0.8 of the baseline's
documents/second once its workers run (the worker server starts once per chunk job; its start is
printed apart).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from pipeline import olmocr_format, samples  # noqa: E402
from pipeline.engines import EngineSettings, get_engine  # noqa: E402
from pipeline.engines.text import VERSION, page_texts  # noqa: E402
from pipeline.isolation import available_cpus  # noqa: E402


def make_pdfs(folder: Path, documents: int) -> list[Path]:
    """Small born-digital documents: 1 to 3 pages of a few lines each."""
    rng = random.Random(5)
    pdfs = []
    for n in range(documents):
        pages = ["\n".join(samples.sentence(rng, 10) for _ in range(8)) for _ in range(rng.randint(1, 3))]
        path = folder / f"doc_{n:05d}.pdf"
        path.write_bytes(samples.text_pdf(pages))
        pdfs.append(path)
    return pdfs


def run_baseline(pdfs: list[Path]) -> float:
    start = time.perf_counter()
    lines = [json.dumps(olmocr_format.build_record(str(p), page_texts(p), version=VERSION), ensure_ascii=False)
             for p in pdfs]
    assert len(lines) == len(pdfs)
    return time.perf_counter() - start


def run_engine(pdfs: list[Path], workspace: Path, workers: int) -> float:
    engine = get_engine("text", EngineSettings(workers=workers))
    start = time.perf_counter()
    (out,) = engine.run(pdfs, workspace)
    seconds = time.perf_counter() - start
    assert not engine.failures and len(out.read_bytes().splitlines()) == len(pdfs), engine.failures
    return seconds


def measure(variant: str, folder: Path, workers: int) -> float:
    """Seconds of one variant over every PDF in ``folder``, timed in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--measure", variant, "--folder", str(folder),
                          "--workers", str(workers)], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def measure_here(variant: str, folder: Path, workers: int) -> float:
    pdfs = sorted(folder.glob("*.pdf"))
    if variant == "baseline":
        return run_baseline(pdfs)
    if variant == "start":
        return run_engine(pdfs[:1], folder.parent / "start", 1)
    run_engine(pdfs[:1], folder.parent / f"warm{os.getpid()}", workers)  # the worker server starts here
    return run_engine(pdfs, folder.parent / f"ws{os.getpid()}", workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--measure", choices=["baseline", "start", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(measure_here(args.measure, args.folder, args.workers))
        return 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp) / "pdfs"
        folder.mkdir()
        make_pdfs(folder, args.documents)
        cpus = available_cpus()
        times: dict[str, list[float]] = {"start": [], "baseline": [], "one": [], "every": []}
        for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits all alike
            times["start"].append(measure("start", folder, 1))
            times["baseline"].append(measure("baseline", folder, 1))
            times["one"].append(measure("engine", folder, 1))
            times["every"].append(measure("engine", folder, cpus))
        first, baseline, one, every = (statistics.median(times[k]) for k in ("start", "baseline", "one", "every"))
        n = args.documents
        print(f"documents: {n}, repetitions: {args.repeat} (medians, each in a fresh interpreter), CPUs: {cpus}")
        print(f"first document of a chunk job, worker server start included: {first:.3f} s")
        print(f"baseline (in process):  {baseline:.3f} s  {n / baseline:8.1f} documents/s")
        print(f"engine, 1 worker:       {one:.3f} s  {n / one:8.1f} documents/s")
        print(f"engine, {cpus} workers:      {every:.3f} s  {n / every:8.1f} documents/s")
        ratio = baseline / one
        print(f"ratio engine(1 worker)/baseline: {ratio:.2f}  (target >= 0.8); "
              f"with {cpus} workers: {baseline / every:.2f}")
        return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
