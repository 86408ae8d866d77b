"""The ``command`` engine: any program that reads a chunk list and writes olmOCR JSONL.

``settings.command`` is an argument list. In every argument ``{chunk_list}`` becomes a file with one
absolute PDF path per line, ``{workspace}`` the workspace folder and ``{output}`` the file the
program must write. It runs without a shell; its output is copied into ``workspace/results/`` only
after it exits with status 0, so a crash never leaves a half-written results file behind.

``DocumentCommandEngine`` is the cloud shard's per-document command ([s3] command): its own
placeholders, one program run per document, its output kept in a log file.
"""
from __future__ import annotations

import shlex
import shutil
import tempfile
import threading
from pathlib import Path

from pipeline import atomic, olmocr_format
from pipeline.engines import EngineFailed, EngineSettings, output_name, page_count, say
from pipeline.engines.process import TimedOut, expand, run_bounded
from pipeline.isolation import Limits, Workers

# A whole chunk may take this long before it is treated as hung: generous, because SLURM's
# walltime is the real limit on a cluster; this one keeps a local run from waiting forever.
BASE_SECONDS = 900.0
SECONDS_PER_PAGE = 30.0


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
            args = expand(self.settings.command, {
                "chunk_list": str(chunk_list), "workspace": str(workspace), "output": str(produced),
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


DOCUMENT_PLACEHOLDERS = ("uri", "input", "workdir", "outdir", "output", "shard")


def document_command(template: str, values: dict[str, str]) -> list[str]:
    """Split the template like a shell would, THEN fill placeholders inside each argument.

    A URI with spaces or quotes stays one argument, and nothing is ever run through a shell; an
    unknown placeholder raises ValueError.
    """
    args = shlex.split(template)
    if not args:
        raise ValueError("[s3] command is empty; set it or pick a built-in engine")
    ordered = {name: values[name] for name in DOCUMENT_PLACEHOLDERS if name in values}  # for the message
    return expand(args, {**ordered, **values}, strict=True)


class DocumentCommandEngine:
    """One run of the [s3] command for one document of a cloud shard.

    ``values`` fill ``{uri}`` (the document), ``{output}`` (its output prefix), ``{shard}`` and
    ``{workdir}`` (the document's folder: the working directory, where ``command.log`` goes);
    ``run`` adds ``{input}`` (the local PDF) and ``{outdir}`` (the workspace). Every file the program
    leaves in the workspace is an output. The run is bounded by ``timeout`` seconds (0 = none) and
    ended once ``stop`` is set (the document's claim was lost).
    """

    name = "command"

    def __init__(self, template: str, values: dict[str, str], timeout: float = 0.0,
                 stop: threading.Event | None = None) -> None:
        self.template, self.values, self.timeout, self.stop = template, values, timeout, stop
        self.failures: list[dict[str, str]] = []

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]:
        (pdf_path,) = pdfs
        args = document_command(self.template, {**self.values, "input": str(pdf_path), "outdir": str(workspace)})
        folder = Path(self.values["workdir"])
        log = folder / "command.log"
        try:
            # In our process group: a killed RunShard takes its document commands with it.
            status = run_bounded(args, timeout=self.timeout, cwd=folder, log=log, own_group=False, stop=self.stop)
        except TimedOut as exc:
            raise EngineFailed(f"command timed out after {exc.seconds:.0f} s") from exc
        except OSError as exc:
            raise EngineFailed(f"command could not start: {exc}") from exc
        if status:
            tail = log.read_bytes()[-1500:].decode("utf-8", "replace").strip()
            raise EngineFailed(f"command exited with {status}: {tail}")
        return sorted(p for p in Path(workspace).rglob("*") if p.is_file())
