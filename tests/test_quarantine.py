"""pipeline.stages.quarantine in-process, then every quarantine reason end to end through the real
`luigi` command line."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

from pipeline import atomic, samples
from pipeline import events as event_log
from pipeline.layout import BatchPaths, Layout
from pipeline.stages.quarantine import quarantine, read_reasons


def ab(identifier: str) -> str:
    return hashlib.sha1(identifier.encode()).hexdigest()[:2]


def events(site) -> list[dict]:
    return [json.loads(line) for line in (site.base / "_manifests" / "events.ndjson").read_text().splitlines()]


def assert_finalized(site, identifier: str, text: str) -> None:
    folder = site.base / "05_processed" / ab(identifier) / identifier
    record = json.loads((folder / f"{identifier}.ocr.json").read_text())
    assert text in record["text"]
    assert json.loads((folder / f"{identifier}.metadata.json").read_text())["identifier"] == identifier
    assert not (site.base / "_quarantine" / ab(identifier) / f"{identifier}.reason.json").exists()
    assert not list(site.base.glob(f"0[1-3]_*/**/{identifier}.pdf"))  # its PDF is gone after finalizing


def assert_quarantined(site, identifier: str, reason: str, original: bytes | None) -> dict:
    folder = site.base / "_quarantine" / ab(identifier)
    pdf = folder / f"{identifier}.pdf"
    assert pdf.is_file() and not pdf.is_symlink()
    if original is not None:
        assert pdf.read_bytes() == original  # the file is kept as it came, for a person to look at
    record = json.loads((folder / f"{identifier}.reason.json").read_text())
    assert record["reason"] == reason
    assert len(record["message"]) > 10
    logged = [e for e in events(site) if e["event"] == "quarantined" and e["identifier"] == identifier]
    assert [e["reason"] for e in logged] == [reason]
    assert logged[0]["message"] == record["message"]
    assert not (site.base / "05_processed" / ab(identifier) / identifier).exists()
    assert not list(site.base.glob(f"0[1-4]_*/**/{identifier}.*"))  # nothing of it left in the stages
    return record


def test_one_copy_is_kept_with_its_reason_and_every_other_copy_goes(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    paths = BatchPaths(layout.batch_dir(1))
    original = samples.text_pdf(["page"])
    atomic.write_bytes(layout.downloaded_pdf("odd"), original)
    atomic.link_or_copy(layout.downloaded_pdf("odd"), paths.pdf("odd"))  # the batch's hard link of it
    atomic.write_json(layout.downloaded_meta("odd"), {"pages": 1})

    kept = quarantine(layout, "odd", [paths.pdf("odd"), layout.downloaded_pdf("odd")], "ocr_failed",
                      "odd.pdf: the engine crashed on it", also_remove=(layout.downloaded_meta("odd"),), chunk=3)

    assert kept == tmp_path / "data" / "_quarantine" / ab("odd") / "odd.pdf"
    assert kept.read_bytes() == original and not kept.is_symlink()
    assert not paths.pdf("odd").exists() and not layout.downloaded_pdf("odd").exists()
    assert not layout.downloaded_meta("odd").exists()
    record = json.loads(layout.quarantine_reason("odd").read_text())
    assert (record["identifier"], record["reason"], record["message"], record["chunk"]) == (
        "odd", "ocr_failed", "odd.pdf: the engine crashed on it", 3)
    [logged] = [e for e in event_log.read(layout.events) if e["event"] == "quarantined"]
    assert (logged["identifier"], logged["reason"], logged["chunk"]) == ("odd", "ocr_failed", 3)
    assert read_reasons(layout, ["odd", "fine"]) == {"odd": record}

    # Killed after the reason was written and before the copies went: the rerun finishes the job.
    atomic.write_bytes(layout.downloaded_pdf("odd"), original)
    quarantine(layout, "odd", [layout.downloaded_pdf("odd")], "ocr_failed", "again")
    assert not layout.downloaded_pdf("odd").exists() and kept.read_bytes() == original
    assert os.stat(kept).st_nlink == 1


def finalize_report(site) -> dict:
    (report,) = site.base.glob("03_ocr_processing/batch_*/finalized.json")
    return json.loads(report.read_text())


def test_bad_downloads_are_quarantined_with_their_reason_and_the_batch_goes_on(tmp_path, make_site):
    good = samples.text_pdf(["A good text page"] * 3)
    bad = {
        "empty": (b"", "empty"),
        "truncated": (good[: len(good) // 3], "truncated"),
        "not_a_pdf": (b"<html><body>404 Not Found</body></html>\n", "not_a_pdf"),
        "locked": (samples.encrypted_pdf("owner-secret", user_password="user-secret"), "encrypted"),
    }
    source = tmp_path / "incoming"
    source.mkdir()
    for name, (data, _) in bad.items():
        (source / f"{name}.pdf").write_bytes(data)
    (source / "good one.pdf").write_bytes(samples.text_pdf(["Good one first page", "Good one second page"]))
    (source / "good two.pdf").write_bytes(samples.text_pdf(["Good two only page"]))
    # Encrypted with an empty user password: any reader opens it, so it is processed normally.
    (source / "open_encrypted.pdf").write_bytes(samples.encrypted_pdf("owner-only", user_password=""))
    site = make_site(source=source)

    site.luigi("ProcessAll", "--run-id", "q1")

    for name, (data, reason) in bad.items():
        assert_quarantined(site, name, reason, data)
    assert_finalized(site, "good one", "Good one second page")
    assert_finalized(site, "good two", "Good two only page")
    assert_finalized(site, "open_encrypted", "Encrypted page")
    report = finalize_report(site)
    assert report["finalized"] == 3 and report["remaining"] == []


def test_bad_files_found_in_a_legacy_pending_folder_are_quarantined_when_the_batch_is_made(make_site):
    site = make_site()
    pending = site.base / "02_ocr_pending"
    pending.mkdir(parents=True)
    truncated = samples.text_pdf(["Cut"] * 4)[:300]
    (pending / "zero.pdf").write_bytes(b"")
    (pending / "cut.pdf").write_bytes(truncated)
    (pending / "fine.pdf").write_bytes(samples.text_pdf(["Fine legacy page"]))

    site.luigi("ProcessAll", "--run-id", "legacy")

    assert_quarantined(site, "zero", "empty", b"")
    assert_quarantined(site, "cut", "truncated", truncated)
    assert_finalized(site, "fine", "Fine legacy page")
    assert not list(pending.iterdir())


# --- no OCR result: a command engine that leaves PDFs out ---------------------------------------

ENGINE_SCRIPT = textwrap.dedent("""
    import json
    import sys
    from pathlib import Path

    from pypdf import PdfReader
    from pipeline.olmocr_format import build_record

    chunk_list, output, calls, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    pdfs = [Path(line) for line in chunk_list.read_text(encoding="utf-8").splitlines() if line]
    first_call = not calls.exists()
    with open(calls, "a", encoding="utf-8") as log:
        log.write(json.dumps(sorted(p.stem for p in pdfs)) + "\\n")
    records = []
    for pdf in pdfs:
        if mode == "always" and pdf.stem == "dropme":
            continue
        if mode == "once" and pdf.stem == "flaky" and first_call:
            continue
        texts = [page.extract_text() or "" for page in PdfReader(pdf).pages]
        records.append(json.dumps(build_record(str(pdf), texts, version="test-engine")))
    output.write_text("".join(r + "\\n" for r in records), encoding="utf-8")
""")


def command_site(tmp_path, make_site, names: list[str], mode: str):
    source = tmp_path / "incoming"
    source.mkdir()
    for name in names:
        (source / f"{name}.pdf").write_bytes(samples.text_pdf([f"Page of {name}"]))
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    calls = tmp_path / "calls.ndjson"
    command = f"{sys.executable} {script} {{chunk_list}} {{output}} {calls} {mode}"
    site = make_site(source=source, engine="command", ocr__command=command)
    return site, calls


def retry_plan(site) -> list[dict]:
    (plan,) = site.base.glob("03_ocr_processing/batch_*/chunks/retries.json")
    return json.loads(plan.read_text())["chunks"]


def test_a_pdf_without_result_after_the_retry_is_quarantined_as_no_ocr_result(tmp_path, make_site):
    site, calls = command_site(tmp_path, make_site, ["keep_a", "dropme", "keep_b"], "always")

    site.luigi("ProcessAll", "--run-id", "drop")

    invocations = [json.loads(line) for line in calls.read_text().splitlines()]
    assert invocations == [["dropme", "keep_a", "keep_b"], ["dropme"]]  # the chunk, then its retry
    (retry,) = retry_plan(site)
    assert retry["documents"] == ["dropme"]
    record = assert_quarantined(site, "dropme", "no_ocr_result", samples.text_pdf(["Page of dropme"]))
    assert "retry" in record["message"]
    assert_finalized(site, "keep_a", "Page of keep_a")
    assert_finalized(site, "keep_b", "Page of keep_b")
    report = finalize_report(site)
    assert report["quarantined"] == {"dropme": "no_ocr_result"} and report["finalized"] == 2


def test_a_pdf_dropped_once_is_recovered_by_its_retry_chunk(tmp_path, make_site):
    site, calls = command_site(tmp_path, make_site, ["steady", "flaky", "sure"], "once")

    site.luigi("ProcessAll", "--run-id", "flaky")

    (retry,) = retry_plan(site)
    assert retry["documents"] == ["flaky"]
    batch = site.base / "03_ocr_processing" / "batch_0001"
    retry_list = batch / "chunks" / f"chunk_{retry['index']:03d}.txt"
    assert [Path(line).name for line in retry_list.read_text().splitlines()] == ["flaky.pdf"]
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [["flaky", "steady", "sure"], ["flaky"]]
    for name in ("steady", "flaky", "sure"):
        assert_finalized(site, name, f"Page of {name}")
    assert not (site.base / "_quarantine").exists() or not list((site.base / "_quarantine").rglob("*"))
    assert finalize_report(site)["quarantined"] == {}
