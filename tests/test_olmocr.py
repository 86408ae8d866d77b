"""pipeline.engines.olmocr: olmOCR's command line and outputs, through a stand-in interpreter that
writes real-format records."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline import olmocr_format
from pipeline.engines import EngineSettings, get_engine
from pipeline.engines import command as command_engine
from pipeline.engines import olmocr as olmocr_engine

from .engine_inputs import FIXTURE, chunk, read_records

FAKE_OLMOCR = '''\
#!{python}
"""Stands in for `python -m olmocr.pipeline`: olmOCR's workspace layout and record format."""
import hashlib, json, os, sys

log = os.environ["FAKE_OLMOCR_LOG"]
with open(log, "a") as handle:
    handle.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
args = sys.argv[1:]
assert args[:2] == ["-m", "olmocr.pipeline"], args
workspace = args[2]
pdf_list = args[args.index("--pdfs") + 1]
assert pdf_list.endswith(".txt")  # olmOCR refuses other list files
paths = [line.strip() for line in open(pdf_list) if line.strip()]
templates = []
for raw in open({fixture!r}, "rb"):
    try:
        record = json.loads(raw)
    except ValueError:
        continue
    if not (isinstance(record, dict) and isinstance(record.get("text"), str)):
        continue
    if "Source-File" in record.get("metadata", {{}}):
        templates.append(record)
os.makedirs(os.path.join(workspace, "results"), exist_ok=True)
os.makedirs(os.path.join(workspace, "done_flags"), exist_ok=True)
for start in range(0, len(paths), 2):  # work items of two PDFs, as --pages_per_group would make
    group = sorted(paths[start:start + 2])
    digest = hashlib.sha1()
    for path in group:
        digest.update(path.encode())
    work_hash = digest.hexdigest()
    if os.path.exists(os.path.join(workspace, "done_flags", f"done_{{work_hash}}.flag")):
        continue
    docs = []
    for number, path in enumerate(group):
        if "broken" in os.path.basename(path):
            continue  # olmOCR drops a document silently
        record = json.loads(json.dumps(templates[(start + number) % len(templates)]))
        record["metadata"]["Source-File"] = path
        docs.append(record)
    with open(os.path.join(workspace, "results", f"output_{{work_hash}}.jsonl"), "w") as out:
        for doc in docs:
            out.write(json.dumps(doc) + "\\n")
    if os.environ.get("FAKE_OLMOCR_CRASH_AFTER_FIRST"):
        sys.exit(1)  # killed after copying the results, before the done flag
    open(os.path.join(workspace, "done_flags", f"done_{{work_hash}}.flag"), "wb").close()
    if os.environ.get("FAKE_OLMOCR_EXIT_AFTER_FIRST"):
        sys.exit(3)
'''


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    script = tmp_path / "bin" / "olmocr-python"
    script.parent.mkdir()
    script.write_text(FAKE_OLMOCR.format(python=sys.executable, fixture=str(FIXTURE)))
    script.chmod(0o755)
    log = tmp_path / "olmocr-calls.ndjson"
    monkeypatch.setenv("FAKE_OLMOCR_LOG", str(log))
    return script, log


def test_olmocr_command_line_and_outputs(tmp_path: Path, fake_python: tuple[Path, Path]) -> None:
    script, log = fake_python
    pdfs = chunk(tmp_path / "batch_0007", ["report_001.pdf", "report_002.pdf", "broken_003.pdf", "scan 004.pdf"])
    workspace = tmp_path / "batch_0007" / "results"
    settings = EngineSettings(olmocr_python=str(script), olmocr_args=["--workers", "4", "--pages_per_group", "2"],
                              max_page_error_rate=0.01)
    outputs = get_engine("olmocr", settings).run(pdfs, workspace)

    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    private = workspace / "olmocr" / olmocr_engine.chunk_key(pdfs)
    chunk_list = private / "pdfs.txt"
    assert call["argv"] == ["-m", "olmocr.pipeline", str(private), "--markdown", "--pdfs", str(chunk_list),
                            "--max_page_error_rate", "0.01", "--workers", "4", "--pages_per_group", "2"]
    assert call["cwd"] == str(private)
    assert chunk_list.read_text().splitlines() == [str(p.absolute()) for p in pdfs]

    assert len(outputs) == 2 and all(p.parent == workspace / "results" for p in outputs)
    assert all(p.name.startswith("output_") and p.name.endswith(".jsonl") for p in outputs)
    records = read_records(outputs)
    assert set(records) == {"report_001", "report_002", "scan 004"}
    for record in records.values():
        assert set(record) == {"id", "text", "source", "added", "created", "metadata", "attributes"}
        assert set(record["metadata"]) == {"Source-File", "olmocr-version", "pdf-total-pages", "total-input-tokens",
                                           "total-output-tokens", "total-fallback-pages"}
        assert "pdf_page_numbers" in record["attributes"]
    assert olmocr_format.identifiers_in(outputs) == {"report_001", "report_002", "scan 004"}

    # A rerun resumes from olmOCR's done flags and changes no byte of the results.
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs}
    again = get_engine("olmocr", settings).run(pdfs, workspace)
    assert again == outputs
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in again} == before


def test_olmocr_failed_run_keeps_finished_work_items_only(
    tmp_path: Path, fake_python: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, _ = fake_python
    pdfs = chunk(tmp_path / "in", ["a.pdf", "b.pdf", "c.pdf", "d.pdf"])
    settings = EngineSettings(olmocr_python=str(script))
    monkeypatch.setenv("FAKE_OLMOCR_EXIT_AFTER_FIRST", "1")
    with pytest.raises(command_engine.EngineFailed, match="exited with status 3"):
        get_engine("olmocr", settings).run(pdfs, tmp_path / "ws")
    kept = list((tmp_path / "ws" / "results").glob("*.jsonl"))
    assert len(kept) == 1 and olmocr_format.identifiers_in(kept) == {"a", "b"}

    monkeypatch.delenv("FAKE_OLMOCR_EXIT_AFTER_FIRST")
    monkeypatch.setenv("FAKE_OLMOCR_CRASH_AFTER_FIRST", "1")
    with pytest.raises(command_engine.EngineFailed, match="exited with status 1"):
        get_engine("olmocr", settings).run(pdfs, tmp_path / "ws")
    # The second item's results file exists in olmOCR's workspace, but without its done flag.
    assert list((tmp_path / "ws" / "results").glob("*.jsonl")) == kept

    monkeypatch.delenv("FAKE_OLMOCR_CRASH_AFTER_FIRST")
    outputs = get_engine("olmocr", settings).run(pdfs, tmp_path / "ws")
    assert olmocr_format.identifiers_in(outputs) == {"a", "b", "c", "d"}


def test_olmocr_missing_interpreter(tmp_path: Path) -> None:
    engine = get_engine("olmocr", EngineSettings(olmocr_python=str(tmp_path / "no-such-python")))
    with pytest.raises(command_engine.EngineFailed, match="not found"):
        engine.run(chunk(tmp_path / "in", ["a.pdf"]), tmp_path / "ws")
