"""The ``tesseract`` engine: CPU OCR, page by page, with poppler's ``pdftoppm`` and the ``tesseract`` CLI.

Pages of all PDFs in the chunk run in parallel (one tesseract thread each, so the pool owns the
cores). Like olmOCR, a document with more failed pages than ``max_page_error_rate`` allows is
dropped; failed pages below that rate are kept empty and counted as fallback pages. Pages are
counted in a worker process under the document limits (see ``isolation``), so a PDF whose page
tree never ends costs only itself. Each ``pdftoppm`` and ``tesseract`` process runs under
``prlimit`` with the same memory limit: a page whose raster is gigabytes (a 17 KB file with a huge
MediaBox) fails alone instead of taking the node's memory.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline import atomic, olmocr_format
from pipeline.engines import EngineSettings, output_name, page_count, process, say
from pipeline.isolation import DocumentFailed, Workers, available_cpus

RASTER_TIMEOUT = 180.0
OCR_TIMEOUT = 300.0
REQUIRED_TOOLS = {"pdftoppm": "poppler-utils", "tesseract": "tesseract-ocr"}
LIMIT_TOOL = ("prlimit", "util-linux")  # sets the memory limit, then runs the program (no shell)


class PageFailed(Exception):
    pass


@functools.cache
def tesseract_version() -> str:
    _, out, err = process.run_captured(["tesseract", "--version"], timeout=60)
    words = (out or err).decode("utf-8", "replace").split()
    return f"tesseract-{words[1]}" if len(words) > 1 else "tesseract"


@functools.cache
def installed_languages() -> frozenset[str]:
    _, out, _ = process.run_captured(["tesseract", "--list-langs"], timeout=60)
    return frozenset(line.strip() for line in out.decode("utf-8", "replace").splitlines()[1:] if line.strip())


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None, memory_bytes: int = 0) -> bytes:
    """Run ``args`` with at most ``memory_bytes`` of address space (0 = no limit); its stdout, or PageFailed."""
    program = args[0]
    if memory_bytes:
        args = [LIMIT_TOOL[0], f"--as={memory_bytes}", "--", *args]
    try:
        # In our process group: whatever kills the chunk job's group kills the page tools too.
        status, stdout, stderr = process.run_captured(args, timeout=timeout, env=env, own_group=False)
    except process.TimedOut:
        raise PageFailed(f"{program} took over {timeout:.0f} s") from None
    detail = stderr.decode("utf-8", "replace").strip().splitlines()
    # pdftoppm reports a failed allocation and still exits 0, with a 1x1 image: that page has no text.
    out_of_memory = any("out of memory" in line.lower() or "bad_alloc" in line for line in detail)
    if status != 0 or out_of_memory:
        hint = (f" (over the memory limit of {memory_bytes >> 20} MiB per process; raise [ocr] "
                "document_memory_mb if the document is sound)" if out_of_memory and memory_bytes else "")
        raise PageFailed(f"{program} exited with status {status}{hint}: {' | '.join(detail[-3:])}")
    return stdout


class TesseractEngine:
    name = "tesseract"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        # One OCR thread per tesseract process: parallelism comes from running pages side by side.
        self._ocr_env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        self.memory_bytes = settings.limits().memory_bytes
        self.failures: list[dict[str, str]] = []

    def check_tools(self) -> None:
        tools = {**REQUIRED_TOOLS, **(dict([LIMIT_TOOL]) if self.settings.document_memory_mb else {})}
        missing = [f"{tool} (Debian package {package})" for tool, package in tools.items()
                   if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f"tesseract engine needs {', '.join(missing)}")
        languages = set(self.settings.tesseract_lang.split("+")) - installed_languages()
        if languages:
            raise RuntimeError(f"tesseract has no language data for {', '.join(sorted(languages))} "
                               f"(Debian packages tesseract-ocr-<lang>)")

    def rasterise(self, source: Path, page: int, prefix: Path) -> Path:
        dpi = str(self.settings.tesseract_dpi)
        _run(["pdftoppm", "-r", dpi, "-f", str(page), "-l", str(page), "-gray", "-png", "-singlefile",
              "--", str(source), str(prefix)], RASTER_TIMEOUT, memory_bytes=self.memory_bytes)
        image = prefix.with_name(prefix.name + ".png")
        if not image.is_file():
            raise PageFailed("pdftoppm wrote no image")
        return image

    def ocr_page(self, source: Path, page: int, scratch: Path) -> str:
        image = self.rasterise(source, page, scratch / f"page_{page:05d}")
        try:
            text = _run(["tesseract", str(image), "stdout", "-l", self.settings.tesseract_lang,
                         "--dpi", str(self.settings.tesseract_dpi)], OCR_TIMEOUT, self._ocr_env, self.memory_bytes)
        finally:
            image.unlink(missing_ok=True)
        # tesseract ends each page with a form feed.
        return text.decode("utf-8", "replace").replace("\f", "").strip()

    def run(self, pdfs: list[Path], workspace: Path) -> list[Path]:
        self.check_tools()
        workspace = Path(workspace)
        version = tesseract_version()
        scratch_root = workspace / "tmp"
        atomic.makedirs(scratch_root)
        self.failures = []
        lines = []
        with tempfile.TemporaryDirectory(dir=scratch_root, prefix="tesseract_") as tmp, \
                Workers(self.settings.limits()) as counter:
            pool = ThreadPoolExecutor(max_workers=self.settings.workers or available_cpus())
            try:
                # Every page of the chunk is queued at once, so one long PDF does not leave cores idle.
                jobs: list[tuple[Path, list[Future[str]]]] = []
                for number, (source, pages) in enumerate(counter.map(page_count, pdfs)):
                    if isinstance(pages, int) and pages == 0:
                        pages = DocumentFailed("NoPages", "the PDF has no pages")
                    if isinstance(pages, DocumentFailed):
                        self._failed(source, pages)
                        continue
                    scratch = Path(tmp) / f"doc_{number:05d}"
                    scratch.mkdir()
                    absolute = Path(source).absolute()
                    jobs.append((Path(source), [pool.submit(self.ocr_page, absolute, page, scratch)
                                                for page in range(1, pages + 1)]))
                for source, futures in jobs:
                    try:
                        lines.append(olmocr_format.record_line(self._record(source, futures, version)))
                    except DocumentFailed as failure:
                        self._failed(source, failure)
                    except olmocr_format.InvalidRecord as exc:
                        self._failed(source, DocumentFailed("InvalidRecord", str(exc)))
            finally:
                # On an interruption the pages still queued are dropped instead of waited for.
                pool.shutdown(cancel_futures=True)
        out = workspace / "results" / output_name(pdfs)
        atomic.write_bytes(out, b"".join(lines))
        return [out]

    def _failed(self, source: Path, failure: DocumentFailed) -> None:
        say(f"tesseract engine: {source}: no record: {failure.message}")
        self.failures.append(failure.entry(source.name))

    def _record(self, source: Path, futures: list[Future[str]], version: str) -> dict[str, Any]:
        texts: list[str] = []
        failures: list[str] = []
        for page, future in enumerate(futures, start=1):
            try:
                texts.append(future.result())
            except Exception as exc:  # whatever went wrong, it is this page's failure, not the chunk's
                texts.append("")
                failures.append(f"page {page}: {exc if isinstance(exc, PageFailed) else repr(exc)}")
        if len(failures) / len(futures) > self.settings.max_page_error_rate:
            raise DocumentFailed("PageErrors", f"{len(failures)} of {len(futures)} pages failed, over "
                                 f"max_page_error_rate {self.settings.max_page_error_rate}; first: {failures[0]}",
                                 "\n".join(failures[-20:]))
        for failure in failures:
            say(f"tesseract engine: {source}: kept with an empty {failure}")
        say(f"tesseract engine: {source}: {len(futures)} pages")
        return olmocr_format.build_record(str(source), texts, version=version, fallback_pages=len(failures))
