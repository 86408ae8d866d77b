"""olmOCR records: identifiers from every kind of Source-File, the older layouts, malformed lines."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline import olmocr_format

FIXTURE = Path(__file__).parent / "fixtures" / "olmocr" / "output_mixed_versions.jsonl"
# The keys olmOCR's build_dolma_document writes; newer versions add per-page attributes.
RECORD_KEYS = {"id", "text", "source", "added", "created", "metadata", "attributes"}
METADATA_KEYS = {"Source-File", "olmocr-version", "pdf-total-pages", "total-input-tokens",
                 "total-output-tokens", "total-fallback-pages"}
NEWER_ATTRIBUTES = {"primary_language", "is_rotation_valid", "rotation_correction", "is_table", "is_diagram"}


@pytest.mark.parametrize(
    "source,identifier",
    [
        ("/data/ocr/03_ocr_processing/batch_0007/report_001.pdf", "report_001"),
        ("03_ocr_processing/batch_0007/report_001.pdf", "report_001"),
        ("./report_001.pdf", "report_001"),
        ("report_001.pdf", "report_001"),
        ("/tmp/tmpk2j4x9a/report_001.pdf", "report_001"),
        ("/tmp/slurm-884213/chunk_003_k2j4x9a/pdfs/report_001.PDF", "report_001"),
        ("s3://archive-bucket/collections/letters/scan_000.pdf", "scan_000"),
        ("s3://archive-bucket/scan_000.pdf", "scan_000"),
        ("C:\\scans\\minutes 000 (draft).pdf", "minutes 000 (draft)"),
        ("C:/scans/minutes 000 (draft).pdf", "minutes 000 (draft)"),
        ("d:\\scans/mixed\\report_9.pdf", "report_9"),
        ("\\\\fileserver\\share\\scans\\report_9.pdf", "report_9"),
        ("scans\\report_9.pdf", "report_9"),
        ("/data/odd\\name.pdf", "odd\\name"),  # a POSIX name may hold a backslash
        ("/data/ocr/report.v2.final.pdf", "report.v2.final"),
        ("/data/ocr/no_suffix", "no_suffix"),
    ],
)
def test_identifier_from_source(source: str, identifier: str) -> None:
    assert olmocr_format.identifier_from_source(source) == identifier


@pytest.mark.parametrize(
    "record,expected",
    [
        ({"metadata": {"Source-File": "/a/x.pdf"}}, "/a/x.pdf"),
        ({"metadata": {"Source-File": "/a/new.pdf"}, "Source-File": "/a/old.pdf"}, "/a/new.pdf"),
        ({"Source-File": "/a/top.pdf", "metadata": {"olmocr-version": "0.1.53"}}, "/a/top.pdf"),
        ({"Source-File": "/a/top.pdf"}, "/a/top.pdf"),
        ({"metadata": {"source_file": "s3://b/k/x.pdf"}}, "s3://b/k/x.pdf"),
        ({"metadata": {"pdf_path": "/tmp/x.pdf"}}, "/tmp/x.pdf"),
        ({"metadata": "not a dict", "Source-File": "/a/y.pdf"}, "/a/y.pdf"),
        ({"metadata": {"Source-File": ""}}, None),
        ({"metadata": {"Source-File": ["/a/x.pdf"]}}, None),
        ({"metadata": {}}, None),
        ({}, None),
    ],
)
def test_source_file_of_variants(record: dict, expected: str | None) -> None:
    assert olmocr_format.source_file_of(record) == expected


def test_iter_records_on_the_fixture() -> None:
    lines = list(olmocr_format.iter_records(FIXTURE))
    good = {line.line_number: line.record for line in lines if line.record is not None}
    bad = {line.line_number: line.error for line in lines if line.record is None}
    assert sorted(good) == [1, 2, 3, 6, 10]
    assert {n: olmocr_format.identifier_from_source(olmocr_format.source_file_of(r)) for n, r in good.items()} == {
        1: "report_001", 2: "report_002", 3: "scan_000", 6: "report_003", 10: "minutes 000 (draft)",
    }
    assert sorted(bad) == [5, 7, 8, 9, 11]  # line 4 is blank and skipped
    assert bad[5].startswith("not an olmOCR record")
    assert bad[7] == "no Source-File in the record"
    assert bad[8].startswith("not an olmOCR record")
    assert bad[9].startswith("not JSON")  # Latin-1 bytes
    assert bad[11].startswith("not JSON")  # the last write was cut short
    assert all(line.file == FIXTURE for line in lines)


def test_fixture_records_have_olmocr_fields() -> None:
    for line in olmocr_format.iter_records(FIXTURE):
        record = line.record
        if record is None:
            continue
        assert set(record) - {"Source-File"} == RECORD_KEYS
        assert set(record["metadata"]) | ({"Source-File"} if "Source-File" in record else set()) == METADATA_KEYS
        assert set(record["attributes"]) - NEWER_ATTRIBUTES == {"pdf_page_numbers"}
        assert record["id"] == hashlib.sha1(record["text"].encode()).hexdigest()
        spans = record["attributes"]["pdf_page_numbers"]
        assert [s[2] for s in spans] == list(range(1, record["metadata"]["pdf-total-pages"] + 1))
        assert spans[0][0] == 0 and spans[-1][1] == len(record["text"])


def test_iter_records_never_raises_on_garbage(tmp_path: Path) -> None:
    path = tmp_path / "output_garbage.jsonl"
    path.write_bytes(b"\x00\xff\xfe\n{\n}\n42\n\"text\"\n{\"text\": 5, \"Source-File\": \"/a.pdf\"}\n\r\n   \n")
    lines = list(olmocr_format.iter_records(path))
    assert [line.line_number for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all(line.record is None and line.error for line in lines)


def test_build_record_matches_olmocr_layout() -> None:
    pages = ["First page.", "", "Third page\nwith two lines."]
    record = olmocr_format.build_record("/data/b/report_007.pdf", pages, version="tesseract-5.3.0",
                                        input_tokens=0, output_tokens=0, fallback_pages=1)
    assert set(record) == RECORD_KEYS
    assert set(record["metadata"]) == METADATA_KEYS
    assert set(record["attributes"]) == {"pdf_page_numbers"}
    assert record["text"] == "First page.\n\nThird page\nwith two lines."
    assert record["id"] == hashlib.sha1(record["text"].encode()).hexdigest()
    spans = record["attributes"]["pdf_page_numbers"]
    # As olmOCR writes them: each page's span holds its text and the newline that follows it.
    assert [record["text"][a:b] for a, b, _ in spans] == ["First page.\n", "\n", "Third page\nwith two lines."]
    assert [n for _, _, n in spans] == [1, 2, 3]
    assert record["metadata"]["pdf-total-pages"] == 3
    assert record["metadata"]["total-fallback-pages"] == 1
    assert record["source"] == "olmocr" and record["added"] == record["created"]


def test_built_records_read_back(tmp_path: Path) -> None:
    path = tmp_path / "output_x.jsonl"
    records = [olmocr_format.build_record(f"/d/{name}.pdf", [name], version="text-pypdf") for name in ("a", "b")]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert [line.record for line in olmocr_format.iter_records(path)] == records
    assert olmocr_format.identifiers_in([path]) == {"a", "b"}


def test_identifiers_in_skips_malformed_lines() -> None:
    assert olmocr_format.identifiers_in([FIXTURE]) == {
        "report_001", "report_002", "scan_000", "report_003", "minutes 000 (draft)",
    }


def test_record_stats_on_older_record() -> None:
    record = next(line.record for line in olmocr_format.iter_records(FIXTURE) if line.line_number == 6)
    stats = olmocr_format.record_stats(record)
    assert stats["source_file"] == "/mnt/old_runs/02_ocr_pending/report_003.pdf"
    assert stats["pages"] == 1 and stats["engine_version"] == "0.1.53"


# --- valid text ---------------------------------------------------------------------------------

def test_build_record_replaces_invalid_characters_and_counts_them() -> None:
    pages = ["Lone \udc63 surrogate and NUL\x00", "Bell\x07 escape\x1b; kept: tab\t CR\r\n form feed\f",
             "Pair \ud83d\ude00 joined"]
    record = olmocr_format.build_record("/d/poison.pdf", pages, version="text-pypdf")
    line = olmocr_format.record_line(record)
    assert json.loads(line.decode("utf-8")) == record
    assert record["text"] == ("Lone \ufffd surrogate and NUL\ufffd\n"
                              "Bell\ufffd escape\ufffd; kept: tab\t CR\r\n form feed\f\n"
                              "Pair \U0001f600 joined")
    assert record["metadata"]["replaced-characters"] == 4
    assert record["id"] == hashlib.sha1(record["text"].encode("utf-8")).hexdigest()
    spans = record["attributes"]["pdf_page_numbers"]
    assert [record["text"][a:b] for a, b, _ in spans][2] == "Pair \U0001f600 joined"


def test_build_record_refuses_a_file_name_that_is_not_text() -> None:
    with pytest.raises(olmocr_format.InvalidRecord, match="rename the file"):
        olmocr_format.build_record("/d/caf\udce9.pdf", ["text"], version="text-pypdf")


def test_make_valid_keeps_spans_and_adds_to_an_earlier_count() -> None:
    raw = ('{"id": "x", "text": "One\\u0000\\n\\udc63Two", "metadata": {"Source-File": "/d/a.pdf", '
           '"replaced-characters": 2, "note": "\\u0001"}, "attributes": {"pdf_page_numbers": [[0, 4, 1], [4, 8, 2]]}}')
    record = json.loads(raw)
    valid, replaced = olmocr_format.make_valid(record)
    assert replaced == 3
    assert valid["text"] == "One\ufffd\n\ufffdTwo" and len(valid["text"]) == len(record["text"])
    assert valid["metadata"] == {"Source-File": "/d/a.pdf", "replaced-characters": 5, "note": "\ufffd"}
    assert valid["attributes"] == record["attributes"]
    json.loads(olmocr_format.record_line(valid).decode("utf-8"))
    clean = {"text": "fine", "metadata": {"Source-File": "/d/b.pdf"}}
    assert olmocr_format.make_valid(clean) == (clean, 0)


def test_records_that_cannot_be_made_valid_raise_invalid_record() -> None:
    with pytest.raises(olmocr_format.InvalidRecord):
        olmocr_format.make_valid({"text": "x", "metadata": {"Source-File": "/d/\udcff.pdf"}})
    with pytest.raises(olmocr_format.InvalidRecord):
        olmocr_format.record_line({"text": "x", "metadata": {"pdf-total-pages": float("nan")}})


def test_iter_records_survives_absurd_nesting(tmp_path: Path) -> None:
    path = tmp_path / "output_deep.jsonl"
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000 + b"\n")
    (line,) = olmocr_format.iter_records(path)
    assert line.record is None and line.error
