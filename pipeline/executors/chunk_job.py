"""What one array element runs: OCR one chunk, put its results in place, then write the done marker.

    python -m pipeline.chunk_job --batch-dir DIR --engine NAME --settings JSON --chunk N

PDFs are staged to $SLURM_TMPDIR when the node has one; results are copied back atomically, and
the done marker is written last, so a marker always means the chunk's results are complete.
The marker's ``missing`` lists the PDFs without a record; ``failed`` says for each of them why:
the engine's error class, message and a log excerpt (the engine's own, or the lines of this run's
chunk log that name the PDF).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from pipeline import atomic, events, olmocr_format
from pipeline.engines import EngineSettings, get_engine, say
from pipeline.layout import BatchPaths, identifier_of

LOG_TAIL_BYTES = 4 << 20  # how much of this run's chunk log is searched for a failed PDF's lines
LOG_LINES = 20
LOG_CHARS = 4000


def read_chunk_list(path: Path) -> list[Path]:
    return [Path(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def log_excerpt(path: Path, start: int, name: str) -> str:
    """The last lines written to ``path`` after offset ``start`` that mention ``name``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(start, log_size(path) - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    needle = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if needle in line]
    return "\n".join(lines[-LOG_LINES:])[-LOG_CHARS:]


def failed_documents(missing: list[str], reported: list[dict[str, str]], engine_name: str,
                     log: Path, log_start: int) -> list[dict[str, str]]:
    """One entry per PDF without a record: what the engine reported, or what the chunk log says."""
    by_file = {entry["file"]: entry for entry in reported}
    failed = []
    for name in missing:
        entry = dict(by_file.get(name) or {
            "file": name, "error": "NoRecord", "message": f"the {engine_name} engine wrote no record for it"})
        if not entry.get("log"):
            entry["log"] = log_excerpt(log, log_start, name)
        failed.append({key: olmocr_format.clean_text(value)[0] for key, value in entry.items()})
    return failed


def run_chunk(paths: BatchPaths, index: int, engine_name: str, settings: EngineSettings) -> dict:
    """OCR chunk ``index`` of the batch; returns the done-marker record (also written to disk)."""
    marker = paths.done_marker(index)
    if marker.exists():
        print(f"chunk {index}: already done ({marker})", flush=True)
        return atomic.read_json(marker)
    pdfs = read_chunk_list(paths.chunk_list(index))
    log_start = log_size(paths.chunk_log(index))  # the executors append each attempt to this log
    started = events.now_iso()
    t0 = time.monotonic()
    engine = get_engine(engine_name, settings)
    node_tmp = os.environ.get("SLURM_TMPDIR") or os.environ.get("PIPELINE_STAGE_DIR")
    if node_tmp:
        with tempfile.TemporaryDirectory(prefix=f"chunk_{index:03d}_", dir=node_tmp) as stage:
            staged = []
            for pdf in pdfs:
                target = Path(stage) / "pdfs" / pdf.name
                atomic.copy_file(pdf, target)
                staged.append(target)
            outputs = engine.run(staged, Path(stage) / "workspace")
            results = []
            for out in outputs:
                atomic.copy_file(out, paths.results / out.name)
                results.append(paths.results / out.name)
    else:
        results = engine.run(pdfs, paths.workspace)
    have = olmocr_format.identifiers_in(results)
    missing = sorted(p.name for p in pdfs if identifier_of(p.name) not in have)
    failed = failed_documents(missing, getattr(engine, "failures", []), engine_name,
                              paths.chunk_log(index), log_start)
    record = {
        "chunk": index,
        "documents": len(pdfs),
        "records": len(pdfs) - len(missing),
        "missing": missing,
        "failed": failed,
        "engine": engine_name,
        "results": sorted(p.name for p in results),
        "host": socket.gethostname(),
        "job_id": os.environ.get("SLURM_JOB_ID", "local"),
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID", ""),
        "started": started,
        "finished": events.now_iso(),
        "seconds": round(time.monotonic() - t0, 3),
    }
    atomic.write_json(marker, record)
    reasons = "; ".join(f"{f['file']} ({f['error']}: {f['message']})" for f in failed) or "none"
    say(f"chunk {index}: {record['records']}/{len(pdfs)} documents have results in {record['seconds']} s; "
        f"failed: {reasons}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-dir", required=True, type=Path)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--settings", default="{}", help="EngineSettings as JSON")
    parser.add_argument("--chunk", required=True, type=int)
    args = parser.parse_args(argv)
    run_chunk(BatchPaths(args.batch_dir), args.chunk, args.engine, EngineSettings.from_json(args.settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
