"""Generated PDFs (pipeline.samples), in-process: each is what the demo and the tests take it for,
read back with pypdf and poppler, not with this package's own reader; and the command line
``python -m pipeline.samples`` run as a user runs it."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pypdf
import pytest

from pipeline import samples

from .conftest import ROOT


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


def run_samples(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m pipeline.samples ARGS`` from a plain folder, reporting every module it imports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.samples", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def messages(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without the import-time report."""
    return [line for line in result.stderr.splitlines() if not line.startswith("import time:")]


def page_texts(folder: Path) -> dict[str, list[str]]:
    return {p.name: [page.extract_text() for page in reader(p.read_bytes()).pages]
            for p in sorted(folder.glob("*.pdf")) if p.name.startswith(("report_", "minutes "))}


def test_the_command_writes_the_collection_it_was_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "new" / "incoming"
    result = run_samples(out, "--born-digital", 5, "--scanned", 2, "--seed", 11, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    imported = {line.rsplit("|", 1)[-1].strip()
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "pypdf" in imported or "reportlab" in imported  # the report lists what was imported ...
    assert not {name for name in imported if name == "luigi" or name.startswith("luigi.")}  # ... and Luigi is not

    born = sorted(p.name for p in out.iterdir() if p.name.startswith(("report_", "minutes ")))
    scanned = sorted(p.name for p in out.iterdir() if p.name.startswith("scan_"))
    assert len(born) == 5 and len(scanned) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*born, *scanned, "empty.pdf", "truncated.pdf", "not_a_pdf.pdf", "locked.pdf"])  # nothing else, no temp file
    pages = 0
    for name, texts in page_texts(out).items():
        number = int(re.findall(r"\d{3}", name)[0])
        assert 1 <= len(texts) <= 5
        assert [text.splitlines()[0] for text in texts] == [
            f"Document {number} page {k}" for k in range(1, len(texts) + 1)]
        pages += len(texts)
    for name in scanned:
        read = reader((out / name).read_bytes())
        assert 1 <= len(read.pages) <= 2
        assert all(page.extract_text().strip() == "" and page.images for page in read.pages)  # OCR has to read them
        pages += len(read.pages)
    image = tmp_path / "page"
    subprocess.run(["pdftoppm", "-r", "150", "-f", "1", "-l", "1", "-gray", "-png", "-singlefile",
                    str(out / scanned[0]), str(image)], check=True, timeout=120)
    ocr = subprocess.run(["tesseract", f"{image}.png", "-"], capture_output=True, text=True, check=True, timeout=120)
    assert "Scanned letter 0" in ocr.stdout

    assert (out / "empty.pdf").stat().st_size == 0
    assert reader((out / "locked.pdf").read_bytes()).is_encrypted
    with pytest.raises(pypdf.errors.PdfReadError):
        reader((out / "not_a_pdf.pdf").read_bytes())

    lines = result.stdout.splitlines()
    assert f"wrote 11 files, {pages} pages, to {out}" in lines[0]
    assert lines[-1] == f"samples: to process them, set [download] source = {out} in your luigi.cfg"
    assert messages(result)[-1] == "samples: 11/11 files written (locked.pdf)"  # the progress line ends at the total


def test_the_same_seed_gives_the_same_collection_and_another_seed_another(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = run_samples(tmp_path / name, "--born-digital", 4, "--scanned", 0, "--seed", seed, "--no-broken",
                             cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list((tmp_path / name).iterdir())) == 4  # --no-broken: the born-digital ones only
    assert page_texts(tmp_path / "a") == page_texts(tmp_path / "b")
    assert page_texts(tmp_path / "a") != page_texts(tmp_path / "c")


def test_a_folder_that_is_not_empty_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "incoming"
    out.mkdir()
    (out / "mine.pdf").write_bytes(b"a user's own file")
    refused = run_samples(out, "--born-digital", 1, "--scanned", 0, cwd=tmp_path)
    assert refused.returncode == 2
    assert str(out) in messages(refused)[-1] and "--force" in messages(refused)[-1]
    assert [p.name for p in out.iterdir()] == ["mine.pdf"]  # nothing written

    forced = run_samples(out, "--born-digital", 1, "--scanned", 0, "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert (out / "mine.pdf").read_bytes() == b"a user's own file"
    assert len(list(out.iterdir())) == 1 + 1 + 4


@pytest.mark.parametrize("args, says", [
    (["{tmp}/file.txt"], "is not a folder"),
    (["{tmp}/out", "--born-digital", "0", "--scanned", "0", "--no-broken"], "nothing to write"),
    (["{tmp}/out", "--scanned", "-2"], "-2 is negative"),
])
def test_wrong_arguments_exit_2_saying_what_is_wrong(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    result = run_samples(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode == 2 and says in messages(result)[-1]
    assert not (tmp_path / "out").exists()


def test_a_folder_that_cannot_be_made_exits_1_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    result = run_samples(tmp_path / "file.txt" / "incoming", cwd=tmp_path)
    assert result.returncode == 1
    last = messages(result)[-1]
    assert last.startswith("ERROR: ") and str(tmp_path / "file.txt" / "incoming") in last
