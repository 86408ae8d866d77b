"""Page counting: pipeline.pdf.count_pages against len(pypdf.PdfReader(path).pages), same run.

    python bench/bench_page_count.py            # full: 2,000-page files and small ones
    python bench/bench_page_count.py --quick    # what CI runs

Both counters read the same generated files, several repetitions each, in alternating order; the
median time per repetition gives the ratio (baseline / ours, so > 1 means faster). Exits 1 when
large files are not at least --min-large-ratio times faster or small files are slower
(--min-small-ratio), or when a count disagrees with pypdf. Small files are also written in
layouts from real collections (variants) that the fast path must read as well.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pypdf import PdfReader  # noqa: E402

from pipeline import pdf, samples


def generate(folder: Path, pages: int, files: int, prefix: str) -> list[Path]:
    """``files`` PDFs of ``pages`` pages, cycling through the writers collections come from."""
    writers: list[tuple[str, Callable[[], bytes]]] = [
        ("pypdf", lambda: samples.blank_pdf(pages)),
        ("reportlab", lambda: samples.text_pdf([f"Page {n}" for n in range(1, pages + 1)])),
    ]
    made = []
    for i in range(files):
        kind, make = writers[i % len(writers)]
        path = folder / f"{prefix}_{i:03d}_{kind}.pdf"
        path.write_bytes(make())
        made.append(path)
        # Every third file packed into object streams, as qpdf and many producers write them.
        if i % 3 == 2 and shutil.which("qpdf"):
            packed = path.with_name(path.stem + "_objstm.pdf")
            subprocess.run(["qpdf", "--object-streams=generate", "--", str(path), str(packed)],
                           check=True, timeout=300)
            path.unlink()
            made[-1] = packed
    return made


def real_world_variants(folder: Path, pages: int, files: int) -> list[Path]:
    """``files`` PDFs in layouts seen in real collections that a strict reader gives up on: xref
    entries of 19 bytes, junk before %PDF-, padding after %%EOF, an xref stream whose data follows
    "stream" and a space (zlib: "incorrect header check" if the space is taken as data)."""
    def entries_19(data: bytes) -> bytes:
        table = data.rindex(b"\nxref") + 1
        trailer = data.index(b"trailer", table)
        return data[:table] + data[table:trailer].replace(b" \n", b"\n") + data[trailer:]

    def space_after_stream(data: bytes) -> bytes:
        at = int(data[data.rindex(b"startxref") + 9:].split()[0])
        keyword = data.index(b"stream\n", at)
        return data[:keyword + 6] + b" " + data[keyword + 6:]

    edits: list[tuple[str, Callable[[bytes], bytes]]] = [
        ("entries19", entries_19),
        ("junk", lambda data: b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\r\n" + data),
        ("padded", lambda data: data + bytes(16384)),
    ]
    made = []
    for i in range(files):
        kind, edit = edits[i % len(edits)]
        data = samples.text_pdf([f"Page {n}" for n in range(1, pages + 1)])
        if i % 4 == 3 and shutil.which("qpdf"):
            plain, packed = folder / "plain.pdf", folder / "packed.pdf"
            plain.write_bytes(data)
            subprocess.run(["qpdf", "--object-streams=generate", "--", str(plain), str(packed)],
                           check=True, timeout=300)
            kind, data = "xrefstm-space", space_after_stream(packed.read_bytes())
        else:
            data = edit(data)
        path = folder / f"variant_{i:03d}_{kind}.pdf"
        path.write_bytes(data)
        made.append(path)
    return made


def counted(path: Path) -> pdf.PageCount:
    try:
        return pdf.count_pages(path)
    except pdf.PdfError as exc:  # refused a file pypdf reads: reported as a disagreement
        return pdf.PageCount(0, exc.reason)


def ours(path: Path) -> int:
    return counted(path).pages


def baseline(path: Path) -> int:
    return len(PdfReader(path).pages)


def measure(files: list[Path], repeat: int) -> tuple[float, float, list[str]]:
    """(median seconds per pass for ours, for the baseline, problems found)."""
    problems = []
    for path in files:  # untimed pass: imports, page cache, and a check that both agree
        got, want = ours(path), baseline(path)
        if got != want:
            problems.append(f"{path.name}: count_pages {got} != pypdf {want}")
    ours_times: list[float] = []
    base_times: list[float] = []
    for rep in range(repeat):
        order = [(ours, ours_times), (baseline, base_times)]
        for counter, times in (order if rep % 2 == 0 else order[::-1]):
            started = time.perf_counter()
            for path in files:
                counter(path)
            times.append(time.perf_counter() - started)
    return statistics.median(ours_times), statistics.median(base_times), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-pages", type=int, default=2000, help="pages in each large PDF")
    parser.add_argument("--large-files", type=int, default=6, help="number of large PDFs")
    parser.add_argument("--small-pages", type=int, default=3, help="pages in each small PDF")
    parser.add_argument("--small-files", type=int, default=60, help="number of small PDFs")
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions; the median counts")
    parser.add_argument("--min-large-ratio", type=float, default=10.0)
    parser.add_argument("--min-small-ratio", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="small sizes for CI: 3 large, 15 small, 5 repetitions")
    args = parser.parse_args(argv)
    if args.quick:
        args.large_files, args.small_files, args.repeat = 3, 15, 5

    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_page_count_") as tmp:
        sets = {
            f"large ({args.large_pages} pages)": (generate(Path(tmp), args.large_pages, args.large_files, "large"),
                                                   args.min_large_ratio),
            f"small ({args.small_pages} pages)": (generate(Path(tmp), args.small_pages, args.small_files, "small"),
                                                   args.min_small_ratio),
            f"variants ({args.small_pages} pages)": (real_world_variants(Path(tmp), args.small_pages, args.small_files),
                                                     args.min_small_ratio),
        }
        print(f"{'files':<22} {'n':>4} {'count_pages':>13} {'pypdf':>13} {'ratio':>8}  target  fast path")
        for label, (files, target) in sets.items():
            mine, theirs, problems = measure(files, args.repeat)
            ratio = theirs / mine
            fast = sum(counted(p).method == "count" for p in files)
            ok = ratio >= target and not problems
            failed |= not ok
            per_file = [seconds * 1000 / len(files) for seconds in (mine, theirs)]
            print(f"{label:<22} {len(files):>4} {per_file[0]:>10.3f} ms {per_file[1]:>10.3f} ms {ratio:>7.1f}x  "
                  f">={target:g}x  {fast}/{len(files)}  {'ok' if ok else 'MISSED'}")
            for problem in problems:
                print(f"  {problem}")
    print(f"medians of {args.repeat} repetitions, per file; ratio = pypdf time / count_pages time")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
