"""What a user relies on after a fault and a rerun, checked on a base_dir of the file pipeline."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

from pipeline import samples
from pipeline.layout import BatchPaths, Layout

from .conftest import Site


def padded_pdf(pages: list[str], pad_bytes: int, seed: int = 0) -> bytes:
    """A text PDF made ``pad_bytes`` larger by an attached file (the text layer stays ``pages``)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(samples.text_pdf(pages)))
    writer.add_attachment("pad.bin", random.Random(seed).randbytes(pad_bytes))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_inputs(folder: Path, count: int, pad_bytes: int = 0) -> list[str]:
    """``count`` text PDFs named 'doc NN' in ``folder``; returns the identifiers."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(count):
        name = f"doc {n:02d}"
        pages = [f"Page {p} of document {n}: the harbour ledger." for p in range(1, n % 3 + 2)]
        data = padded_pdf(pages, pad_bytes, seed=n) if pad_bytes else samples.text_pdf(pages)
        (folder / f"{name}.pdf").write_bytes(data)
        names.append(name)
    return names


def reference_texts(site: Site, name: str = "reference") -> dict[str, str]:
    """identifier -> text after an undisturbed ProcessAll of the same source and settings."""
    root = site.root.parent / name
    root.mkdir()
    config = root / "luigi.cfg"
    config.write_text(site.config.read_text().replace(f"base_dir = {site.base}", f"base_dir = {root / 'data'}"))
    return undisturbed_texts(Site(root, config))


def undisturbed_texts(site: Site) -> dict[str, str]:
    site.luigi("ProcessAll", "--run-id", "reference")
    return finalized_texts(site.layout)


def finalized_texts(layout: Layout) -> dict[str, str]:
    """identifier -> text of every document in 05_processed (each folder checked for its two files)."""
    texts = {}
    root = layout.base / "05_processed"
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []:
        identifier = folder.name
        assert identifier not in texts, f"{identifier} finalized twice"
        assert folder == layout.processed_dir(identifier), f"{folder} is not where {identifier} belongs"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [f"{identifier}.ocr.json", f"{identifier}.metadata.json"]), folder
        assert json.loads(layout.processed_metadata(identifier).read_text())["identifier"] == identifier
        texts[identifier] = json.loads(layout.processed_ocr(identifier).read_text(encoding="utf-8"))["text"]
    return texts


def leftovers(base: Path) -> list[Path]:
    """Temp files of interrupted writes and downloads."""
    return sorted(p for p in base.rglob(".*") if p.is_file() and p.name.endswith((".tmp", ".part")))


def assert_nothing_lost(layout: Layout, identifiers: list[str], source: Path | None = None) -> None:
    """Mid-way (after a fault, before the rerun): each document is finalized whole or still has its PDF."""
    for identifier in identifiers:
        whole = layout.processed_ocr(identifier).is_file() and layout.processed_metadata(identifier).is_file()
        pdfs = [layout.downloaded_pdf(identifier), *(BatchPaths(layout.batch_dir(b)).pdf(identifier)
                                                      for b in layout.batch_numbers())]
        if source is not None:
            pdfs.append(source / f"{identifier}.pdf")
        assert whole or any(p.is_file() for p in pdfs), f"{identifier}: PDF deleted before its output was durable"


def assert_end_state(layout: Layout, expected: dict[str, str], quarantined: dict[str, str] | None = None) -> None:
    """Every document finalized exactly once with the undisturbed run's text, or quarantined with
    the given reason; no PDF left behind, no temp file, every batch finalized."""
    quarantined = quarantined or {}
    texts = finalized_texts(layout)
    assert texts == {i: t for i, t in expected.items() if i not in quarantined}
    for identifier, reason in quarantined.items():
        record = json.loads(layout.quarantine_reason(identifier).read_text())
        assert record["reason"] == reason and record["message"], identifier
    assert not list((layout.base / "01_downloaded").rglob("*.pdf")), "a PDF is still waiting in 01_downloaded"
    for number in layout.batch_numbers():
        paths = BatchPaths(layout.batch_dir(number))
        assert paths.finalized.is_file(), f"batch {number} not finalized"
        assert not paths.pdfs(), f"batch {number} still holds PDFs"
        for marker in (paths.workspace / "done").glob("chunk_*.done"):
            for name in json.loads(marker.read_text())["results"]:
                assert (paths.results / name).is_file(), f"{marker} vouches for {name}, which is not there"
    assert leftovers(layout.base) == []
