"""OCR engines: real tesseract on generated scans, the text layer, and olmOCR / command programs
stood in for by small scripts that write real-format records."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pipeline import olmocr_format, samples
from pipeline.engines import EngineSettings, get_engine, output_name
from pipeline.engines import command as command_engine
from pipeline.engines import olmocr as olmocr_engine
from pipeline.engines import tesseract as tesseract_engine

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


# --- tesseract ----------------------------------------------------------------------------------

@needs_tesseract
def test_tesseract_reads_scanned_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = tmp_path / "in" / "scan_001.pdf"
    scan.parent.mkdir()
    scan.write_bytes(samples.scanned_pdf(SCANNED_PAGES, dpi=150))
    pdfs = [scan, *broken_pdfs(scan.parent)]
    engine = get_engine("tesseract", EngineSettings(tesseract_dpi=150, workers=2))
    outputs = engine.run(pdfs, tmp_path / "workspace")

    assert outputs == [tmp_path / "workspace" / "results" / output_name(pdfs)]
    records = read_records(outputs)
    assert set(records) == {"scan_001"}
    record = records["scan_001"]
    assert record["metadata"]["olmocr-version"] == tesseract_engine.tesseract_version()
    assert record["metadata"]["pdf-total-pages"] == 3
    assert record["metadata"]["total-fallback-pages"] == 0
    found = page_texts(record)
    assert len(found) == 3
    for expected, text in zip(SCANNED_PAGES, found, strict=True):
        assert character_error_rate(expected, text) < 0.05, (expected, text)
    out = capsys.readouterr().out
    for name, reason in (("empty", "empty"), ("truncated", "truncated"), ("not_a_pdf", "not_a_pdf"),
                         ("locked", "encrypted")):
        assert f"{name}.pdf: no record: {reason}" in out
    assert not any((tmp_path / "workspace" / "tmp").iterdir()), "page images are cleaned up"


@needs_tesseract
def test_tesseract_drops_documents_over_the_page_error_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fragile = tmp_path / "fragile.pdf"
    fragile.write_bytes(samples.scanned_pdf(["First page", "Second page", "Third page"], dpi=60))
    sturdy = tmp_path / "sturdy.pdf"
    sturdy.write_bytes(samples.scanned_pdf(["Only page"], dpi=60))
    real_rasterise = tesseract_engine.TesseractEngine.rasterise

    def flaky(self, source: Path, page: int, prefix: Path) -> Path:
        if source.name == "fragile.pdf" and page == 2:
            raise tesseract_engine.PageFailed("pdftoppm exited with status 99: simulated")
        return real_rasterise(self, source, page, prefix)

    monkeypatch.setattr(tesseract_engine.TesseractEngine, "rasterise", flaky)
    strict = get_engine("tesseract", EngineSettings(tesseract_dpi=60, max_page_error_rate=0.004))
    assert set(read_records(strict.run([fragile, sturdy], tmp_path / "strict"))) == {"sturdy"}
    assert "fragile.pdf: no record: 1 of 3 pages failed" in capsys.readouterr().out

    lenient = get_engine("tesseract", EngineSettings(tesseract_dpi=60, max_page_error_rate=0.5))
    records = read_records(lenient.run([fragile, sturdy], tmp_path / "lenient"))
    assert records["fragile"]["metadata"]["total-fallback-pages"] == 1
    assert page_texts(records["fragile"])[1] == "\n"
    assert "fragile.pdf: kept with an empty page 2" in capsys.readouterr().out


def test_tesseract_names_missing_language_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tesseract_engine, "installed_languages", lambda: frozenset({"eng"}))
    monkeypatch.setattr(tesseract_engine.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    engine = get_engine("tesseract", EngineSettings(tesseract_lang="eng+fra"))
    with pytest.raises(RuntimeError, match="no language data for fra"):
        engine.run([], tmp_path)


# --- text ---------------------------------------------------------------------------------------

def test_text_engine_reads_the_text_layer(tmp_path: Path) -> None:
    pages = ["Document 1 page 1\nArchive letter council", "Document 1 page 2\nHarbour river ledger"]
    source = tmp_path / "report_001.pdf"
    source.write_bytes(samples.text_pdf(pages))
    pdfs = [source, *broken_pdfs(tmp_path)]
    records = read_records(get_engine("text").run(pdfs, tmp_path / "workspace"))
    assert set(records) == {"report_001"}
    found = page_texts(records["report_001"])
    assert [normalise(t) for t in found] == [normalise(p) for p in pages]
    assert records["report_001"]["metadata"]["Source-File"] == str(source)


# --- olmocr, through a stand-in interpreter -----------------------------------------------------

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


def chunk(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(samples.text_pdf([name]))
    return [folder / name for name in names]


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


# --- command ------------------------------------------------------------------------------------

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


def test_get_engine_names() -> None:
    for name in ("text", "tesseract", "olmocr", "command"):
        assert get_engine(name).name == name
    with pytest.raises(ValueError):
        get_engine("nope")


def test_config_checks_and_the_registry_know_the_same_engines() -> None:
    from pipeline import config, engines

    assert config.ENGINES == tuple(engines.ENGINES) == ("olmocr", "tesseract", "text", "command")
    with pytest.raises(ValueError, match="use olmocr, tesseract, text or command"):
        get_engine("nope")



# --- one document's failure is its own ----------------------------------------------------------

POISON_LINES = ["Poisoned text layer", "A\udc63B\x00C\x07D", "Last line"]


def failures_by_file(engine) -> dict[str, dict[str, str]]:
    assert all(set(f) == {"file", "error", "message", "log"} for f in engine.failures)
    return {f["file"]: f for f in engine.failures}


def test_text_engine_isolates_each_document(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    files = {
        "good.pdf": samples.text_pdf(["Good page one", "Good page two"]),
        "poison.pdf": samples.text_layer_pdf(POISON_LINES),
        "cycle.pdf": samples.kids_cycle_pdf(),
        "slow.pdf": samples.slow_text_pdf(300_000),  # pypdf needs many seconds for it
        "caf\udce9.pdf": samples.text_pdf(["A file name that is not UTF-8"]),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    pdfs = [folder / name for name in files] + broken_pdfs(folder)
    engine = get_engine("text", EngineSettings(document_timeout=3, workers=2))
    outputs = engine.run(pdfs, tmp_path / "workspace")

    outputs[0].read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    records = read_records(outputs)
    assert set(records) == {"good", "poison"}
    assert records["poison"]["text"] == "Poisoned text layer\nA\ufffdB\ufffdC\ufffdD\nLast line"
    assert records["poison"]["metadata"]["replaced-characters"] == 3
    assert "replaced-characters" not in records["good"]["metadata"]
    failed = failures_by_file(engine)
    assert set(failed) == {"cycle.pdf", "slow.pdf", "caf\udce9.pdf", "empty.pdf", "truncated.pdf",
                           "not_a_pdf.pdf", "locked.pdf"}
    assert failed["cycle.pdf"]["error"] == "PdfReadError" and "cyclic" in failed["cycle.pdf"]["message"]
    assert "Traceback" in failed["cycle.pdf"]["log"]
    assert failed["slow.pdf"]["error"] == "TimeLimit"
    assert failed["caf\udce9.pdf"]["error"] == "InvalidRecord"


@needs_tesseract
def test_tesseract_reports_documents_without_a_record(tmp_path: Path) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(samples.scanned_pdf(["Only page"], dpi=60))
    pdfs = [scan, *broken_pdfs(tmp_path)]
    engine = get_engine("tesseract", EngineSettings(tesseract_dpi=60, workers=2))
    assert set(read_records(engine.run(pdfs, tmp_path / "ws"))) == {"scan"}
    failed = failures_by_file(engine)
    assert set(failed) == {"empty.pdf", "truncated.pdf", "not_a_pdf.pdf", "locked.pdf"}
    for name, reason in (("empty", "empty"), ("truncated", "truncated"), ("not_a_pdf", "not_a_pdf"),
                         ("locked", "encrypted")):
        assert failed[f"{name}.pdf"]["error"] == "PdfError"
        assert failed[f"{name}.pdf"]["message"].startswith(reason)


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
