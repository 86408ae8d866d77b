"""pipeline.stages.split in-process: every record written is valid text, one that cannot be is its
document's loss; the split of a batch, its report and event."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import atomic, events, samples
from pipeline.config import OCRConfig, SlurmConfig
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import batches, split

from .stage_inputs import Recorder, write_results


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


def test_split_results_of_an_adopted_batch_writes_each_record_and_the_report(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    paths = BatchPaths(layout.batch_dir(9))
    for identifier in ("kept", "twice", "never"):
        atomic.write_bytes(paths.pdf(identifier), samples.text_pdf([f"Page 1 of {identifier}"]))
    batches.create_batch(layout, "0009", max_documents=1, max_pages=1)  # adopted: no chunk ever ran here
    old = write_results(paths, "old", {"kept": 1, "twice": 1})
    newer = write_results(paths, "newer", {"twice": 1, "stranger": 1})  # stranger: a PDF of another batch
    newer.write_bytes(newer.read_bytes() + b"{not json\n")
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))  # the later file wins a duplicate
    progress = Recorder()

    result = split.split_results(layout, paths, OCRConfig(), SlurmConfig(), progress, lambda m: None)

    for identifier in ("kept", "twice"):
        record = json.loads(layout.completed_jsonl(identifier).read_text())
        assert record["text"] == f"Page 1 of {identifier}"
    assert not layout.completed_jsonl("never").exists() and not layout.completed_jsonl("stranger").exists()
    assert json.loads(paths.split_report.read_text()) == result
    assert result["without_result"] == ["never"]
    assert result["duplicates"]["twice"]["kept"].startswith("output_newer.jsonl:")
    [event] = [e for e in events.read(layout.events) if e["event"] == "split"]
    assert (event["documents"], event["unmatched"], event["malformed"], event["duplicates"]) == (2, 1, 1, 1)
    assert progress.calls == [(1, 1, "split 2 documents; 1 unmatched records, 1 malformed lines, 1 duplicates")]


def test_split_writes_the_same_records_several_at_a_time(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    lines = [json.dumps({"text": f"Document {n}", "metadata": {"Source-File": f"/in/d{n}.pdf"}}) for n in range(40)]
    (results / "output_a.jsonl").write_text("\n".join(lines) + "\n")
    identifiers = {f"d{n}" for n in range(40)}
    written = {}
    for workers in (1, 4):
        out = tmp_path / f"out{workers}" / "ab"
        plan = split.plan_split(results, identifiers)
        assert split.write_split(plan, lambda i, out=out: out / f"{i}.ocr.jsonl", workers=workers) == 40
        written[workers] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert written[4] == written[1] and len(written[4]) == 40
