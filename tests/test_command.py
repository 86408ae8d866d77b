"""pipeline.engines.command: any program that writes olmOCR-format records, per chunk or per document."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline import olmocr_format, samples
from pipeline.engines import EngineSettings, get_engine, output_name
from pipeline.engines import command as command_engine

from .engine_inputs import chunk, read_records

COMMAND_SCRIPT = '''\
import hashlib, json, os, sys
chunk_list, output, workspace = sys.argv[1], sys.argv[2].removeprefix("--out="), sys.argv[3]
assert os.path.isdir(workspace)
with open(output, "w") as out:
    for path in open(chunk_list).read().splitlines():
        if "broken" in path:
            continue
        text = "Text of " + os.path.basename(path)
        out.write(json.dumps({
            "id": hashlib.sha1(text.encode()).hexdigest(), "text": text, "source": "olmocr",
            "added": "2025-01-01", "created": "2025-01-01",
            "metadata": {"Source-File": path, "olmocr-version": "my-ocr-1.0", "pdf-total-pages": 1,
                         "total-input-tokens": 0, "total-output-tokens": 0, "total-fallback-pages": 0},
            "attributes": {"pdf_page_numbers": [[0, len(text), 1]]},
        }) + "\\n")
sys.exit(int(os.environ.get("COMMAND_EXIT", "0")))
'''


def test_command_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "my_ocr.py"
    script.write_text(COMMAND_SCRIPT)
    pdfs = chunk(tmp_path / "in", ["x1.pdf", "broken_x2.pdf", "x3.pdf"])
    settings = EngineSettings(command=[sys.executable, str(script), "{chunk_list}", "--out={output}", "{workspace}"])
    workspace = tmp_path / "ws"
    outputs = get_engine("command", settings).run(pdfs, workspace)
    assert outputs == [workspace / "results" / output_name(pdfs)]
    records = read_records(outputs)
    assert set(records) == {"x1", "x3"}
    assert records["x1"]["metadata"]["Source-File"] == str((tmp_path / "in" / "x1.pdf").absolute())
    assert records["x3"]["text"] == "Text of x3.pdf"
    assert not any((workspace / "tmp").iterdir()), "chunk list and staging output are cleaned up"

    monkeypatch.setenv("COMMAND_EXIT", "2")
    with pytest.raises(command_engine.EngineFailed, match="exited with status 2"):
        get_engine("command", settings).run(pdfs, tmp_path / "ws2")
    assert not (tmp_path / "ws2" / "results").exists(), "a failed run leaves no results file"


def test_command_engine_without_output(tmp_path: Path) -> None:
    settings = EngineSettings(command=[sys.executable, "-c", "pass", "{chunk_list}", "{output}"])
    with pytest.raises(command_engine.EngineFailed, match="without writing"):
        get_engine("command", settings).run(chunk(tmp_path / "in", ["a.pdf"]), tmp_path / "ws")


def test_command_engine_needs_a_command(tmp_path: Path) -> None:
    with pytest.raises(command_engine.EngineFailed, match="needs \\[ocr\\] command"):
        get_engine("command", EngineSettings()).run([], tmp_path)


def test_document_commands_are_split_then_filled_never_shell_parsed():
    template = "run_resume_pipeline.py --input {uri} --workdir '{workdir}' --output-s3 {output} --tag=s{shard}"
    argv = command_engine.document_command(template, {"uri": "s3://b/a b; rm -rf ~.pdf", "workdir": "/w d",
                                                      "output": "s3://o/x", "shard": "3", "input": "", "outdir": ""})
    assert argv == ["run_resume_pipeline.py", "--input", "s3://b/a b; rm -rf ~.pdf", "--workdir", "/w d",
                    "--output-s3", "s3://o/x", "--tag=s3"]
    with pytest.raises(ValueError, match="unknown placeholder"):
        command_engine.document_command("x {nope}", {})
    values = {name: "v" for name in reversed(command_engine.DOCUMENT_PLACEHOLDERS)}
    with pytest.raises(ValueError, match=r"unknown placeholder \{nope\} in the command; "
                                         r"use uri, input, workdir, outdir, output, shard$"):
        command_engine.document_command("x {nope}", values)




def document_engine(tmp_path: Path, command: str, timeout: float = 0.0) -> command_engine.DocumentCommandEngine:
    folder = tmp_path / "doc"
    (folder / "output").mkdir(parents=True)
    return command_engine.DocumentCommandEngine(command, {"uri": "s3://b/raw/a b.pdf", "workdir": str(folder),
                                                          "output": "s3://o/b/raw/a b", "shard": "2"}, timeout)


def test_document_command_engine_runs_once_per_document(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text("import pathlib, sys\nuri, pdf, outdir, out, shard = sys.argv[1:]\nprint('working on', uri)\n"
                      "pathlib.Path(outdir, 'sub').mkdir()\npathlib.Path(outdir, 'sub', 'r.txt').write_text("
                      "' '.join([uri, pathlib.Path(pdf).name, out, shard, pathlib.Path.cwd().name]))\n")
    engine = document_engine(tmp_path, f"{sys.executable} {script} {{uri}} {{input}} {{outdir}} {{output}} {{shard}}")
    outdir = tmp_path / "doc" / "output"
    assert engine.run([tmp_path / "in put.pdf"], outdir) == [outdir / "sub" / "r.txt"]
    assert (outdir / "sub" / "r.txt").read_text() == "s3://b/raw/a b.pdf in put.pdf s3://o/b/raw/a b 2 doc"
    assert (tmp_path / "doc" / "command.log").read_text() == "working on s3://b/raw/a b.pdf\n"


def test_document_command_engine_failures_say_why(tmp_path: Path) -> None:
    program = "import sys; sys.exit('cannot process ' + sys.argv[1])"
    failing = document_engine(tmp_path, f"{sys.executable} -c \"{program}\" {{uri}}")
    with pytest.raises(command_engine.EngineFailed, match="command exited with 1: cannot process s3://b/raw/a b.pdf"):
        failing.run([tmp_path / "a.pdf"], tmp_path / "doc" / "output")
    missing = command_engine.DocumentCommandEngine("no-such-program {input}", {"workdir": str(tmp_path / "doc")})
    with pytest.raises(command_engine.EngineFailed, match="command could not start"):
        missing.run([tmp_path / "a.pdf"], tmp_path / "doc" / "output")
    hanging = command_engine.DocumentCommandEngine(f"{sys.executable} -c \"import time; time.sleep(600)\"",
                                                   {"workdir": str(tmp_path / "doc")}, timeout=1)
    with pytest.raises(command_engine.EngineFailed, match="command timed out after 1 s"):
        hanging.run([tmp_path / "a.pdf"], tmp_path / "doc" / "output")


def test_chunk_timeout_grows_with_pages(tmp_path: Path) -> None:
    small = chunk(tmp_path / "in", ["a.pdf"])
    big = tmp_path / "in" / "big.pdf"
    big.write_bytes(samples.blank_pdf(100))
    missing = tmp_path / "in" / "missing.pdf"
    base, per_page = command_engine.BASE_SECONDS, command_engine.SECONDS_PER_PAGE
    assert command_engine.chunk_timeout([]) == base
    assert command_engine.chunk_timeout(small + [missing]) == base + 2 * per_page
    assert command_engine.chunk_timeout([big]) == base + 100 * per_page


INVALID_TEXT_SCRIPT = r'''
import json, os, sys
chunk_list, output = sys.argv[1], sys.argv[2]
paths = open(chunk_list).read().splitlines()
with open(output, "w") as out:
    for path in paths:
        name = os.path.basename(path)
        text = "Text of " + name + " \udc63\x00" if name.startswith("bad") else "Text of " + name
        source = path if not name.startswith("unnamed") else path + "\x01"
        tokens = float("nan") if name.startswith("nan") else 0
        out.write(json.dumps({"id": "x", "text": text, "source": "olmocr", "added": "2025-01-01",
                              "created": "2025-01-01",
                              "metadata": {"Source-File": source, "olmocr-version": "my-ocr-1.0",
                                           "pdf-total-pages": 1, "total-input-tokens": tokens},
                              "attributes": {"pdf_page_numbers": [[0, len(text), 1]]}}) + "\n")
    out.write("not json at all\n")
'''


def test_command_engine_output_is_made_valid_text(tmp_path: Path) -> None:
    script = tmp_path / "my_ocr.py"
    script.write_text(INVALID_TEXT_SCRIPT)
    pdfs = chunk(tmp_path / "in", ["fine.pdf", "bad.pdf", "unnamed.pdf", "nan_bad.pdf"])
    settings = EngineSettings(command=[sys.executable, str(script), "{chunk_list}", "{output}"])
    (out,) = get_engine("command", settings).run(pdfs, tmp_path / "ws")
    lines = out.read_bytes().decode("utf-8").splitlines()
    assert lines[-1] == "not json at all"  # no record: kept for splitting to report
    records = read_records_lenient(out)
    assert set(records) == {"fine", "bad"}  # unnamed's Source-File cannot be repaired, NaN is no JSON: dropped
    assert records["bad"]["text"] == "Text of bad.pdf \ufffd\ufffd"
    assert records["bad"]["metadata"]["replaced-characters"] == 2
    assert "replaced-characters" not in records["fine"]["metadata"]


def read_records_lenient(path: Path) -> dict[str, dict]:
    return {olmocr_format.identifier_from_source(olmocr_format.source_file_of(line.record)): line.record
            for line in olmocr_format.iter_records(path) if line.record is not None}
