"""Real inputs for the in-process tests of pipeline/stages: text PDFs downloaded into 01_downloaded,
batches made from them, olmOCR results written the way the engines write them."""
from __future__ import annotations

from pathlib import Path

from pipeline import atomic, olmocr_format, samples
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import batches, download


def page_texts(identifier: str, pages: int) -> list[str]:
    return [f"Page {n} of {identifier}" for n in range(1, pages + 1)]


def downloaded(layout: Layout, folder: Path, documents: dict[str, int]) -> None:
    """Text PDFs of ``documents`` (identifier -> pages) put in ``folder``, then downloaded from it."""
    folder.mkdir(parents=True, exist_ok=True)
    for identifier, pages in documents.items():
        (folder / f"{identifier}.pdf").write_bytes(samples.text_pdf(page_texts(identifier, pages)))
    summary = download.download_all(layout, download.iter_folder(folder), workers=2, max_waiting=10_000,
                                    waiting_now=0, min_free_gb=0)
    assert summary.fetched == len(documents), summary


def batch(layout: Layout, folder: Path, documents: dict[str, int], number: str = "0001") -> BatchPaths:
    """Batch ``number`` holding ``documents``, downloaded first."""
    downloaded(layout, folder, documents)
    batches.create_batch(layout, number, max_documents=10_000, max_pages=1_000_000)
    return BatchPaths(layout.batch_dir(number))


def write_results(paths: BatchPaths, name: str, documents: dict[str, int]) -> Path:
    """An olmOCR results file in the batch's workspace with one record per document."""
    lines = [olmocr_format.record_line(olmocr_format.build_record(
        str(paths.pdf(i)), page_texts(i, pages), version="test")) for i, pages in documents.items()]
    target = paths.results / f"output_{name}.jsonl"
    atomic.write_bytes(target, b"".join(lines))
    return target


class Recorder:
    """A progress callback that keeps every (done, total, message) it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))

    @property
    def messages(self) -> list[str]:
        return [m for _, _, m in self.calls]
