"""What the engine tests share: generated inputs, the records read back, error rates."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import olmocr_format, samples

FIXTURE = Path(__file__).parent / "fixtures" / "olmocr" / "output_mixed_versions.jsonl"
needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None or shutil.which("pdftoppm") is None,
    reason="needs tesseract-ocr and poppler-utils",
)

SCANNED_PAGES = [
    "Harbour council minutes of March 1921\nThe river bridge survey was approved\nCensus of the county farms",
    "Parish ledger record number 48\nEstate deed and charter of the mill\nMarket street school and station",
    "Treaty garden archive letter\nCouncil harbour river ledger",
]


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalise(text: str) -> str:
    return " ".join(text.split())


def character_error_rate(expected: str, found: str) -> float:
    expected, found = normalise(expected), normalise(found)
    return levenshtein(expected, found) / max(1, len(expected))


def page_texts(record: dict) -> list[str]:
    return [record["text"][a:b] for a, b, _ in record["attributes"]["pdf_page_numbers"]]


def read_records(outputs: list[Path]) -> dict[str, dict]:
    """Identifier -> record over the engine's output files; malformed lines fail the test."""
    records = {}
    for path in outputs:
        for line in olmocr_format.iter_records(path):
            assert line.record is not None, line.error
            records[olmocr_format.identifier_from_source(olmocr_format.source_file_of(line.record))] = line.record
    return records


def broken_pdfs(folder: Path) -> list[Path]:
    good = samples.text_pdf(["A document that was cut short"] * 3)
    files = {
        "empty.pdf": b"",
        "truncated.pdf": good[: len(good) // 3],
        "not_a_pdf.pdf": b"<html><body>404 Not Found</body></html>\n",
        "locked.pdf": samples.encrypted_pdf("owner-secret", user_password="user-secret"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]

def chunk(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(samples.text_pdf([name]))
    return [folder / name for name in names]


POISON_LINES = ["Poisoned text layer", "A\udc63B\x00C\x07D", "Last line"]


def failures_by_file(engine) -> dict[str, dict[str, str]]:
    assert all(set(f) == {"file", "error", "message", "log"} for f in engine.failures)
    return {f["file"]: f for f in engine.failures}
