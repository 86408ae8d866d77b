"""pipeline.executors.chunk_job in this process (and once as the command the job script runs): results
in place before the done marker, which lists every PDF without a record and why it has none."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import atomic, olmocr_format, samples
from pipeline.engines import EngineSettings
from pipeline.executors.chunk_job import main, run_chunk
from pipeline.executors.jobscript import job_command
from pipeline.layout import BatchPaths
from pipeline.stages.integrity import failure_of

ROOT = Path(__file__).resolve().parent.parent


def make_chunk(tmp_path: Path, files: dict[str, bytes], index: int = 0) -> BatchPaths:
    paths = BatchPaths(tmp_path / "03_ocr_processing" / "batch_0001")
    paths.dir.mkdir(parents=True)
    for name, data in files.items():
        (paths.dir / name).write_bytes(data)
    atomic.write_bytes(paths.chunk_list(index), "".join(f"{paths.dir / n}\n" for n in files).encode())
    return paths


def test_marker_lists_each_failed_document_with_its_reason(tmp_path: Path) -> None:
    paths = make_chunk(tmp_path, {
        "good.pdf": samples.text_pdf(["A good page"]),
        "cycle.pdf": samples.kids_cycle_pdf(),
        "slow.pdf": samples.slow_text_pdf(300_000),
        "empty.pdf": b"",
        "poison.pdf": samples.text_layer_pdf(["Poison \udc63 text"]),
    })
    record = run_chunk(paths, 0, "text", EngineSettings(document_timeout=3, workers=1))

    assert atomic.read_json(paths.done_marker(0)) == record
    assert record["documents"] == 5 and record["records"] == 2
    assert record["missing"] == ["cycle.pdf", "empty.pdf", "slow.pdf"]
    failed = {f["file"]: f for f in record["failed"]}
    assert sorted(failed) == record["missing"]
    assert failed["cycle.pdf"]["error"] == "PdfReadError" and "cyclic" in failed["cycle.pdf"]["message"]
    assert failed["slow.pdf"]["error"] == "TimeLimit" and "3 s" in failed["slow.pdf"]["message"]
    assert failed["empty.pdf"]["error"] == "EmptyFileError"
    assert all(f["log"] for f in (failed["cycle.pdf"], failed["empty.pdf"])), "tracebacks kept"
    assert failure_of(paths, 0, "cycle.pdf") == failed["cycle.pdf"]
    assert failure_of(paths, 0, "good.pdf") is None and failure_of(paths, None, "cycle.pdf") is None


COMMAND = r'''
import json, os, sys
paths = open(sys.argv[1]).read().splitlines()
with open(sys.argv[2], "w") as out:
    for path in paths:
        name = os.path.basename(path)
        if name == "dropped.pdf":
            print("my-ocr: dropped.pdf: page 2: model output could not be parsed", flush=True)
            continue
        text = "Text of " + name
        out.write(json.dumps({"id": "x", "text": text, "metadata": {"Source-File": path},
                              "attributes": {"pdf_page_numbers": [[0, len(text), 1]]}}) + "\n")
'''


def test_a_document_the_engine_dropped_gets_its_lines_of_this_runs_log(tmp_path: Path) -> None:
    paths = make_chunk(tmp_path, {name: samples.text_pdf([name]) for name in ("kept.pdf", "dropped.pdf")})
    script = tmp_path / "my_ocr.py"
    script.write_text(COMMAND)
    log = paths.chunk_log(0)
    log.parent.mkdir()
    log.write_text("an earlier attempt: dropped.pdf was not reached, the job was killed\n")
    settings = EngineSettings(command=[sys.executable, str(script), "{chunk_list}", "{output}"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # As both executors run it: the job's output appended to the chunk's log.
    with open(log, "ab") as out:
        subprocess.run([*job_command(paths.dir, "command", settings), "--chunk", "0"], stdout=out,
                       stderr=subprocess.STDOUT, env=env, check=True, timeout=300)

    marker = json.loads(paths.done_marker(0).read_text())
    assert marker["missing"] == ["dropped.pdf"] and marker["records"] == 1
    (failure,) = marker["failed"]
    assert failure["file"] == "dropped.pdf" and failure["error"] == "NoRecord"
    assert "command engine wrote no record" in failure["message"]
    assert failure["log"] == "my-ocr: dropped.pdf: page 2: model output could not be parsed"


def texts_of(paths: BatchPaths, results: list[str]) -> dict[str, str]:
    """{PDF file name: text} of the records in the chunk's result files."""
    found = {}
    for name in results:
        for line in olmocr_format.iter_records(paths.results / name):
            assert line.record is not None, line.error
            found[Path(olmocr_format.source_file_of(line.record) or "").name] = line.record["text"]
    return found


@pytest.mark.parametrize("stage", [False, True])
def test_every_document_has_its_results_with_or_without_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                stage: bool) -> None:
    pages = {"one.pdf": ["First page of one", "Second page of one"], "two.pdf": ["Only page of two"]}
    paths = make_chunk(tmp_path, {name: samples.text_pdf(text) for name, text in pages.items()})
    node = tmp_path / "node_tmp"
    node.mkdir()
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    if stage:  # a node-local folder: PDFs are read from there, results copied back
        monkeypatch.setenv("SLURM_TMPDIR", str(node))
    else:
        monkeypatch.delenv("PIPELINE_STAGE_DIR", raising=False)
    record = run_chunk(paths, 0, "text", EngineSettings(workers=1))
    assert (record["documents"], record["records"], record["missing"], record["failed"]) == (2, 2, [], [])
    assert record["job_id"] == os.environ.get("SLURM_JOB_ID", "local") and record["engine"] == "text"
    texts = texts_of(paths, record["results"])
    assert sorted(texts) == ["one.pdf", "two.pdf"]
    assert all(page in texts[name] for name, text in pages.items() for page in text)
    assert list(node.iterdir()) == []  # the staged copies are gone


def test_a_done_chunk_is_not_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    monkeypatch.delenv("PIPELINE_STAGE_DIR", raising=False)
    paths = make_chunk(tmp_path, {"one.pdf": samples.text_pdf(["Some text"])})
    first = run_chunk(paths, 0, "text", EngineSettings(workers=1))
    before = {p: p.read_bytes() for p in paths.results.iterdir()}
    (paths.dir / "one.pdf").unlink()  # a rerun that read its input again would fail
    assert run_chunk(paths, 0, "text", EngineSettings(workers=1)) == first
    assert {p: p.read_bytes() for p in paths.results.iterdir()} == before


def test_the_command_line_runs_one_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    monkeypatch.delenv("PIPELINE_STAGE_DIR", raising=False)
    paths = make_chunk(tmp_path, {"one.pdf": samples.text_pdf(["Chunk one"])}, index=1)
    settings = EngineSettings(workers=1, document_timeout=30)
    assert main(["--batch-dir", str(paths.dir), "--engine", "text", "--settings", settings.to_json(),
                 "--chunk", "1"]) == 0
    assert atomic.read_json(paths.done_marker(1))["records"] == 1
    assert not paths.done_marker(0).exists()


def test_the_chunk_job_starts_without_luigi_or_the_tasks(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.chunk_job", "--help"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=True)
    assert "--batch-dir" in result.stdout
    loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "pipeline.executors.chunk_job" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("luigi", "tasks", "sh", "boto3")
                or m in ("pipeline.config", "pipeline.executors.slurm.client")}
