"""The ``command`` engine: any program that reads a chunk list and writes olmOCR JSONL.

``settings.command`` is an argument list. In every argument ``{chunk_list}`` becomes a file with one
absolute PDF path per line, ``{workspace}`` the workspace folder and ``{output}`` the file the
program must write. It runs without a shell; its output is copied into ``workspace/results/`` only
after it exits with status 0, so a crash never leaves a half-written results file behind.

Also home of ``run_bounded``, the subprocess runner the olmocr engine shares.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from pipeline import atomic, olmocr_format
from pipeline.engines import EngineSettings, output_name, page_count, say
from pipeline.isolation import Limits, Workers

# A whole chunk may take this long before it is treated as hung: generous, because SLURM's
# walltime is the real limit on a cluster; this one keeps a local run from waiting forever.
BASE_SECONDS = 900.0
SECONDS_PER_PAGE = 30.0
TERMINATE_GRACE_SECONDS = 20.0


class EngineFailed(RuntimeError):
    """The OCR program failed as a whole (exit status, timeout, no output): the chunk is not done."""


def chunk_timeout(pdfs: list[Path], limits: Limits | None = None) -> float:
    """Seconds a chunk of ``pdfs`` may run; files that cannot be counted within ``limits`` count as one page."""
    pages = 0
    with Workers(limits or Limits()) as counter:
        for _, count in counter.map(page_count, pdfs):
            pages += count if isinstance(count, int) else 1
    return BASE_SECONDS + SECONDS_PER_PAGE * pages


def valid_results(produced: Path) -> bytes:
    """The program's output with every record made valid text. Lines that are no record stay as they
    are (splitting reports them); a record that cannot be made valid is dropped, so its PDF has none."""
    with open(produced, "rb") as handle:
        raw_lines = list(handle)  # split where iter_records splits: at b"\n" only
    records = {line.line_number: line.record for line in olmocr_format.iter_records(produced)}
    kept = []
    for number, raw in enumerate(raw_lines, start=1):
        raw = raw if raw.endswith(b"\n") else raw + b"\n"
        record = records.get(number)
        if record is not None:
            try:
                valid, replaced = olmocr_format.make_valid(record)
                line = olmocr_format.record_line(valid)  # also refuses what strict JSON cannot hold (NaN)
            except olmocr_format.InvalidRecord as exc:
                say(f"{produced.name} line {number}: record dropped: {exc}")
                continue
            if replaced:
                raw = line  # otherwise the program's own bytes are kept
        kept.append(raw)
    return b"".join(kept)


def run_bounded(args: list[str], *, timeout: float, cwd: Path | None = None) -> int:
    """Run ``args`` (no shell) and return its exit status; output goes to our stdout/stderr.

    The program gets a process group of its own, so on timeout or interruption every process it
    started (olmOCR starts a vLLM server) is ended too, not only the first one.
    """
    process = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(process)
        raise EngineFailed(f"{args[0]} still running after {timeout:.0f} s; stopped") from None
    except BaseException:
        _end_group(process)
        raise


def _end_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, TERMINATE_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def write_chunk_list(path: Path, pdfs: list[Path]) -> list[Path]:
    """Write one absolute path per line; returns the PDFs listed (a name with a line break cannot be)."""
    listed = []
    for pdf_path in pdfs:
        absolute = Path(pdf_path).absolute()
        if "\n" in str(absolute) or "\r" in str(absolute):
            say(f"{pdf_path!r}: a line break in the path cannot go into a chunk list; skipped")
            continue
        listed.append(absolute)
    atomic.write_bytes(path, "".join(f"{p}\n" for p in listed).encode("utf-8", "surrogateescape"))
    return listed


def fill_template(template: list[str], values: dict[str, str]) -> list[str]:
    """Replace the placeholders inside each argument; other braces are left alone."""
    args = []
    for arg in template:
        for key, value in values.items():
            arg = arg.replace(key, value)
        args.append(arg)
    return args


class CommandEngine:
    name = "command"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.failures: list[dict[str, str]] = []

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]:
        if not self.settings.command:
            raise EngineFailed("engine=command needs [ocr] command: an argument list with {chunk_list} and {output}")
        if shutil.which(self.settings.command[0]) is None:
            raise EngineFailed(f"command engine: program {self.settings.command[0]!r} not found")
        workspace = Path(workspace).absolute()
        out = workspace / "results" / output_name(pdfs)
        scratch = workspace / "tmp"
        atomic.makedirs(scratch)
        with tempfile.TemporaryDirectory(dir=scratch, prefix="command_") as tmp:
            chunk_list = Path(tmp) / "chunk.txt"
            write_chunk_list(chunk_list, pdfs)
            produced = Path(tmp) / out.name
            args = fill_template(self.settings.command, {
                "{chunk_list}": str(chunk_list), "{workspace}": str(workspace), "{output}": str(produced),
            })
            say(f"command engine: running {args[0]} on {len(pdfs)} PDFs")
            status = run_bounded(args, timeout=chunk_timeout(pdfs, self.settings.limits()))
            if status != 0:
                raise EngineFailed(f"command engine: {args[0]} exited with status {status}")
            if not produced.is_file():
                raise EngineFailed(f"command engine: {args[0]} exited without writing {{output}}")
            bad = [line for line in olmocr_format.iter_records(produced) if line.record is None]
            for line in bad:
                say(f"command engine: {out.name} line {line.line_number}: {line.error}")
            atomic.write_bytes(out, valid_results(produced))
        return [out]
