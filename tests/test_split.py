"""Splitting results: every record written is valid text; one that cannot be is its document's loss."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.stages import split


def test_split_makes_adopted_records_valid_and_reports_those_it_cannot(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    lines = [
        '{"text": "Fine", "metadata": {"Source-File": "/old/fine.pdf"}}',
        '{"text": "NUL\\u0000 and \\udc63", "metadata": {"Source-File": "/old/repaired.pdf"}}',
        '{"text": "Tokens", "metadata": {"Source-File": "/old/nan.pdf", "total-input-tokens": NaN}}',
    ]
    (results / "output_old.jsonl").write_text("\n".join(lines) + "\n")
    identifiers = {"fine", "repaired", "nan", "never_ocred"}
    out = tmp_path / "completed"

    plan = split.plan_split(results, identifiers)
    written = split.write_split(plan, lambda identifier: out / f"{identifier}.ocr.jsonl")
    report = split.report(plan, identifiers, written)

    assert written == 2 and report["split"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["fine.ocr.jsonl", "repaired.ocr.jsonl"]
    repaired = json.loads((out / "repaired.ocr.jsonl").read_bytes().decode("utf-8"))
    assert repaired["text"] == "NUL\ufffd and \ufffd" and repaired["metadata"]["replaced-characters"] == 2
    assert report["replaced_characters"] == {"repaired": 2}
    assert list(report["invalid_records"]) == ["nan"]
    assert report["invalid_records"]["nan"].startswith("output_old.jsonl:3: ")
    assert report["without_result"] == ["nan", "never_ocred"]
    # A second split over the same results changes no file.
    assert split.write_split(split.plan_split(results, identifiers), lambda i: out / f"{i}.ocr.jsonl") == 0
