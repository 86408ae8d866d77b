"""The ``olmocr`` engine: ``python -m olmocr.pipeline`` on one chunk, on a GPU node.

What olmOCR's CLI does, and what follows from it here:

* ``--pdfs FILE.txt`` reads one path per line; any other suffix than .txt/.pdf/.png/.jpg is
  refused, so the chunk list is written as ``pdfs.txt``.
* The workspace holds olmOCR's own work queue (``work_index_list.csv.zstd``, ``worker_locks/``,
  ``done_flags/``), and every olmOCR process works off the whole queue of its workspace. Chunks
  sharing one workspace (a SLURM array) would take each other's PDFs and race on the index file,
  so each chunk gets a private olmOCR workspace, ``<workspace>/olmocr/<chunk key>/``, kept so
  that a rerun resumes where the last run stopped.
* Results are ``results/output_<work item hash>.jsonl``, one per work item of about
  ``--pages_per_group`` pages, copied into place (not atomically) before the item's done flag is
  written. Only items with a done flag are copied on to ``<workspace>/results/``; versions
  without done flags counted an output file as done, and so do we.
* ``--markdown`` also writes each document's text to ``markdown/`` in the olmOCR workspace (older
  versions put it beside an absolute-path PDF instead); the pipeline uses the JSONL only.
* olmOCR drops documents silently (errors, too many failed pages, no text): the caller notices.
* It logs to ``olmocr-pipeline-debug.log`` in its working directory: the private workspace.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pipeline import atomic
from pipeline.engines import EngineFailed, EngineSettings, say
from pipeline.engines.command import chunk_timeout, valid_results, write_chunk_list
from pipeline.engines.process import run_bounded


def chunk_key(pdfs: list[Path]) -> str:
    """A stable name for a chunk's private olmOCR workspace."""
    joined = "\n".join(sorted(str(Path(p).absolute()) for p in pdfs))
    return hashlib.sha1(joined.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def completed_outputs(olmocr_workspace: Path) -> list[Path]:
    """Result files whose work item olmOCR finished, in name order."""
    outputs = sorted((olmocr_workspace / "results").glob("output_*.jsonl"))
    flags = olmocr_workspace / "done_flags"
    if not flags.is_dir():
        return outputs
    done = {p.name[len("done_"):-len(".flag")] for p in flags.glob("done_*.flag")}
    return [p for p in outputs if p.name[len("output_"):-len(".jsonl")] in done]


class OlmOCREngine:
    name = "olmocr"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.failures: list[dict[str, str]] = []  # olmOCR says nothing per document: the caller finds them

    def command(self, olmocr_workspace: Path, chunk_list: Path, python: str) -> list[str]:
        return [
            python, "-m", "olmocr.pipeline", str(olmocr_workspace),
            "--markdown",
            "--pdfs", str(chunk_list),
            "--max_page_error_rate", str(self.settings.max_page_error_rate),
            *self.settings.olmocr_args,
        ]

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]:
        # Resolved before the working directory changes, so a relative interpreter path still works.
        python = shutil.which(self.settings.olmocr_python)
        if python is None:
            raise EngineFailed(f"olmocr engine: interpreter {self.settings.olmocr_python!r} not found")
        workspace = Path(workspace).absolute()
        private = workspace / "olmocr" / chunk_key(pdfs)
        chunk_list = private / "pdfs.txt"
        write_chunk_list(chunk_list, pdfs)
        args = self.command(private, chunk_list, str(Path(python).absolute()))
        say(f"olmocr engine: {len(pdfs)} PDFs in {private}")
        status = run_bounded(args, timeout=chunk_timeout(pdfs, self.settings.limits()), cwd=private)
        # Finished work items are kept even when the run failed: the rerun skips them.
        results = []
        for produced in completed_outputs(private):
            target = workspace / "results" / produced.name
            atomic.write_bytes(target, valid_results(produced))
            results.append(target)
        if status != 0:
            raise EngineFailed(f"olmocr engine: olmocr.pipeline exited with status {status}; "
                               f"{len(results)} finished result files kept, a rerun resumes")
        return results
