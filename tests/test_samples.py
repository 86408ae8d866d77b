"""Generated PDFs (pipeline.samples), in-process: each is what the demo and the tests take it for,
read back with pypdf and poppler, not with this package's own reader."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pypdf
import pytest

from pipeline import samples


def reader(data: bytes) -> pypdf.PdfReader:
    return pypdf.PdfReader(io.BytesIO(data))


def test_a_text_pdf_has_one_page_per_string_with_that_text() -> None:
    pages = ["First page\nsecond line", "Zweite Seite", ""]
    read = reader(samples.text_pdf(pages))
    assert len(read.pages) == 3
    assert read.pages[0].extract_text().splitlines() == ["First page", "second line"]
    assert read.pages[1].extract_text().splitlines() == ["Zweite Seite"]
    assert read.pages[2].extract_text().strip() == ""
    assert samples.text_pdf(pages) == samples.text_pdf(pages)  # the same bytes every time


def test_a_scanned_pdf_has_pages_but_no_text_layer(tmp_path: Path) -> None:
    read = reader(samples.scanned_pdf(["Scanned letter\nwith two lines", "page two"], dpi=100))
    assert len(read.pages) == 2
    assert all(page.extract_text().strip() == "" for page in read.pages)
    assert all(page.images for page in read.pages)


def test_an_encrypted_pdf_needs_its_user_password() -> None:
    locked = reader(samples.encrypted_pdf("owner", user_password="user"))
    assert locked.is_encrypted
    with pytest.raises(pypdf.errors.FileNotDecryptedError):
        locked.pages[0].extract_text()
    assert locked.decrypt("user")
    assert locked.pages[0].extract_text().strip() == "Encrypted page"
    opens = reader(samples.encrypted_pdf("owner"))  # no user password: opens without asking
    assert opens.is_encrypted and opens.pages[0].extract_text().strip() == "Encrypted page"


def test_a_text_layer_pdf_reads_back_exactly_even_with_odd_characters(tmp_path: Path) -> None:
    lines = ["plain ASCII (with parentheses) \\", "Zürich – façade", "a control\x07 and a lone \udc63"]
    read = reader(samples.text_layer_pdf(lines))
    assert read.pages[0].extract_text().splitlines() == lines
    path = tmp_path / "layer.pdf"
    path.write_bytes(samples.text_layer_pdf(lines[:2]))
    poppler = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True)
    assert [line.strip() for line in poppler.stdout.splitlines() if line.strip()] == lines[:2]


def test_a_blank_pdf_is_large_and_cheap() -> None:
    assert len(reader(samples.blank_pdf(2000)).pages) == 2000


def test_the_demo_collection_holds_every_kind_it_names(tmp_path: Path) -> None:
    made = samples.make_collection(tmp_path / "incoming", born_digital=4, scanned=2, seed=3)
    assert sorted(p.name for p in (tmp_path / "incoming").iterdir()) == sorted(made)
    kinds = {name: kind for name, (kind, _) in made.items()}
    assert sorted(kinds.values()).count("text") == 4 and sorted(kinds.values()).count("scanned") == 2
    assert sorted(n for n, k in kinds.items() if k == "broken") == [
        "empty.pdf", "locked.pdf", "not_a_pdf.pdf", "truncated.pdf"]
    for name, (kind, pages) in made.items():
        data = (tmp_path / "incoming" / name).read_bytes()
        if kind == "text":
            assert [p.extract_text().splitlines() for p in reader(data).pages] == [p.splitlines() for p in pages]
        elif kind == "scanned":
            assert len(reader(data).pages) == len(pages)
    assert samples.make_collection(tmp_path / "again", born_digital=4, scanned=2, seed=3) == made
