"""Identifier rules: odd file names go end to end untouched; names that would escape a folder are rejected."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.layout import InvalidIdentifier, fanout_of, identifier_of, normalize_batch, validate_identifier
from tests.test_download import PdfServer

ODD_NAMES = [
    "with  two spaces",
    "single ' quote",
    'double " quote',
    "Zürich façade 東京",
    "$(touch PWNED)",
    "`touch PWNED`",
    "semi; touch PWNED; #",
    "-rf --help",
]


def ab(identifier: str) -> str:
    return hashlib.sha1(identifier.encode("utf-8")).hexdigest()[:2]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_odd_names_go_end_to_end_with_their_exact_names(tmp_path, make_site, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shared = [Path("/tmp/PWNED"), Path.home() / "PWNED"]
    there_before = {p for p in shared if p.exists()}
    source = tmp_path / "incoming"
    source.mkdir()
    for name in ODD_NAMES:
        (source / f"{name}.pdf").write_bytes(samples.text_pdf([f"Text of document {ODD_NAMES.index(name)}"]))
    site = make_site(source=source)

    site.luigi("ProcessAll", "--run-id", "odd")

    for number, name in enumerate(ODD_NAMES):
        folder = site.base / "05_processed" / ab(name) / name
        assert sorted(p.name for p in folder.iterdir()) == sorted([f"{name}.metadata.json", f"{name}.ocr.json"])
        record = json.loads((folder / f"{name}.ocr.json").read_text(encoding="utf-8"))
        assert f"Text of document {number}" in record["text"]
        metadata = json.loads((folder / f"{name}.metadata.json").read_text(encoding="utf-8"))
        assert metadata["identifier"] == name
    assert not (site.base / "_quarantine").exists()
    assert not [p for p in files_under(tmp_path) if p.name == "PWNED"]  # cwd, site root, base_dir, inputs
    assert {p for p in shared if p.exists()} == there_before


def test_a_name_with_a_line_break_does_not_break_the_chunk_list(tmp_path, make_site):
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "two\nlines.pdf").write_bytes(samples.text_pdf(["Broken name"]))
    (source / "plain.pdf").write_bytes(samples.text_pdf(["Plain name"]))
    site = make_site(source=source)

    site.luigi("ProcessAll", "--run-id", "newline")

    assert (site.base / "05_processed" / ab("plain") / "plain" / "plain.ocr.json").is_file()
    # The odd one is finalized or set aside with a reason; it never turns into other paths.
    finalized = (site.base / "05_processed" / ab("two\nlines") / "two\nlines" / "two\nlines.ocr.json").is_file()
    quarantined = (site.base / "_quarantine" / ab("two\nlines") / "two\nlines.reason.json").is_file()
    rejected = [json.loads(line) for line in (site.base / "_manifests" / "events.ndjson").read_text().splitlines()
                if '"rejected"' in line]
    assert finalized or quarantined or rejected
    assert not [p for p in files_under(site.base) if p.name in ("two", "lines.pdf", "lines")]


ESCAPING = {
    "..%2F..%2Fescape.pdf": "path separator",
    "%2Fetc%2Fpasswd.pdf": "path separator",
    "..%5C..%5Cwinescape.pdf": "path separator",
    ".hidden.pdf": "starts with a dot",
    "..pdf": "starts with a dot",
    "nul%00byte.pdf": "NUL",
}


def test_names_that_would_escape_a_folder_are_rejected(tmp_path, make_site):
    server = PdfServer()
    try:
        server.files["/Zürich façade.pdf"] = samples.text_pdf(["Good page"])
        for quoted in ESCAPING:  # were any of them fetched, there would be something to write
            server.files["/" + quoted.replace("%2F", "/").replace("%5C", "\\").replace("%00", "\0")] = \
                samples.text_pdf(["Evil page"])
        urls = [f"{server.root}/{quoted}" for quoted in ESCAPING]
        urls += ["file:///etc/passwd.pdf", f"{server.root}/Z%C3%BCrich%20fa%C3%A7ade.pdf"]
        listing = tmp_path / "urls.txt"
        listing.write_text("".join(f"{u}\n" for u in urls))
        outside_before = files_under(tmp_path)
        site = make_site(source=listing)
        outside_before |= {site.config}

        result = site.luigi("ProcessAll", "--run-id", "r1")

        requested = [r["path"] for r in server.requests]
    finally:
        server.close()
    assert requested == ["/Zürich façade.pdf"]  # a rejected name is never used, not even to fetch
    assert (site.base / "05_processed" / ab("Zürich façade") / "Zürich façade" / "Zürich façade.ocr.json").is_file()
    events = [json.loads(line) for line in (site.base / "_manifests" / "events.ndjson").read_text().splitlines()]
    rejected = [e["message"] for e in events if e["event"] == "rejected"]
    assert len(rejected) == len(ESCAPING) + 1
    for why in set(ESCAPING.values()):
        assert any(why in m for m in rejected), why
    for fragment in ("escape", "passwd", "winescape", ".hidden", "nul\\x00byte", "file:///etc/passwd.pdf"):
        assert sum(fragment in m for m in rejected) >= 1, (fragment, rejected)
    assert all("rename" in m or "not an http" in m for m in rejected)
    new_outside = {p for p in files_under(tmp_path) - outside_before if site.base not in p.parents}
    assert new_outside == set()
    written = files_under(site.base)
    assert not [p for p in written if any(w in p.name for w in ("escape", "passwd", "hidden", "byte"))]
    assert "'../../escape' contains a path separator" in result.stdout + result.stderr  # told on the terminal too


def test_hidden_names_in_a_local_folder_are_rejected(tmp_path, make_site):
    source = tmp_path / "incoming"
    source.mkdir()
    (source / ".hidden.pdf").write_bytes(samples.text_pdf(["Hidden"]))
    (source / "visible.pdf").write_bytes(samples.text_pdf(["Visible"]))
    site = make_site(source=source)

    site.luigi("Download", "--run-id", "hidden")

    assert [p.name for p in (site.base / "01_downloaded").rglob("*.pdf")] == ["visible.pdf"]
    events = [json.loads(line) for line in (site.base / "_manifests" / "events.ndjson").read_text().splitlines()]
    assert [e["identifier"] for e in events if e["event"] == "downloaded"] == ["visible"]
    (rejected,) = [e for e in events if e["event"] == "rejected"]
    assert "'.hidden'" in rejected["message"] and "starts with a dot" in rejected["message"]


# --- unit rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("identifier", ["plain", "with space", "a'b", 'a"b', "Zürich façade 東京", "$(x)",
                                        "a.b.c", "dots..inside", "x" * 200, "é" * 100])
def test_validate_identifier_accepts_one_safe_path_component(identifier):
    assert validate_identifier(identifier) == identifier


@pytest.mark.parametrize("identifier, why", [
    ("", "empty"),
    ("a/b", "path separator"),
    ("../x", "path separator"),
    ("/etc/passwd", "path separator"),
    ("a\\b", "path separator"),
    ("a\x00b", "NUL"),
    (".", "dot"),
    ("..", "dot"),
    (".hidden", "dot"),
    ("x" * 201, "200 bytes"),
    ("é" * 101, "200 bytes"),  # 202 bytes in UTF-8
])
def test_validate_identifier_rejects_what_could_escape_a_folder(identifier, why):
    with pytest.raises(InvalidIdentifier) as error:
        validate_identifier(identifier)
    assert why in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("name, identifier", [
    ("report.pdf", "report"),
    ("REPORT.PDF", "REPORT"),
    ("mixed.Pdf", "mixed"),
    ("archive.tar.pdf", "archive.tar"),
    ("Zürich façade 東京.pdf", "Zürich façade 東京"),
    ("no suffix", "no suffix"),
])
def test_identifier_of_strips_only_the_pdf_suffix(name, identifier):
    assert identifier_of(name) == identifier


@pytest.mark.parametrize("name", [".pdf", "..pdf", ".hidden.pdf", "a/b.pdf", "a\x00.pdf"])
def test_identifier_of_rejects_unsafe_names(name):
    with pytest.raises(InvalidIdentifier):
        identifier_of(name)


@pytest.mark.parametrize("identifier", ["report_001", "minutes 000 (draft)", "Zürich façade 東京", "$(touch PWNED)"])
def test_shard_of_is_the_sha1_prefix_of_the_utf8_identifier(identifier):
    digest = hashlib.sha1(identifier.encode("utf-8")).hexdigest()
    assert fanout_of(identifier, 0) == ""
    assert fanout_of(identifier, 2) == digest[:2]
    assert fanout_of(identifier, 3) == digest[:3]
    assert len(fanout_of(identifier, 3)) == 3 and all(c in "0123456789abcdef" for c in fanout_of(identifier, 3))


def test_shard_of_known_value():
    # The FIPS 180 test vector: sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
    assert fanout_of("abc", 2) == "a9"
    assert fanout_of("abc", 3) == "a99"


@pytest.mark.parametrize("value", ["7", "0007", 7, "batch_0007", " 7 ", "00007"])
def test_normalize_batch_names_the_same_batch(value):
    assert normalize_batch(value) == "0007"


def test_normalize_batch_keeps_larger_numbers_and_rejects_non_numbers():
    assert normalize_batch(12345) == "12345"
    assert normalize_batch("batch_0123") == "0123"
    for bad in ("x", "", "-1", "7a", "batch_", "batch_x", "../7"):
        with pytest.raises(ValueError, match="not a number"):
            normalize_batch(bad)


def test_batch_7_and_0007_are_one_batch_on_the_command_line(make_site):
    site = make_site()
    pending = site.base / "02_ocr_pending"
    pending.mkdir(parents=True)
    (pending / "one.pdf").write_bytes(samples.text_pdf(["One"]))

    site.luigi("CreateBatch", "--batch", "7")
    result = site.luigi("CreateBatch", "--batch", "0007")

    assert [p.name for p in (site.base / "03_ocr_processing").iterdir() if p.is_dir()] == ["batch_0007"]
    assert "already" in result.stdout + result.stderr or "complete" in result.stdout + result.stderr
    assert os.path.exists(site.base / "03_ocr_processing" / "batch_0007" / "batch.json")


# --- S3 keys through CountPages, ShardManifest and RunShard -------------------------------------------

HOSTILE_KEYS = [
    "raw/../../escape.pdf",
    "raw/./dot.pdf",
    "raw/.hidden.pdf",
    "raw/..pdf",
    "raw//double slash.pdf",
    "/leading slash.pdf",
    "raw/%2E%2E/encoded.pdf",
    "raw/line\u2028separator.pdf",
    "raw/group\x1cseparator.pdf",
    "raw/tab\there.pdf",
    "raw/$(touch PWNED).pdf",
]


def test_hostile_keys_are_counted_sharded_and_run_without_becoming_paths(tmp_path, moto_endpoint, s3_client, bucket):
    from pipeline.cloud import counting, markers, s3, shard_plan
    from tests.s3server import run_luigi
    from tests.test_shards import get, keys, make_cfg

    docs = {key: samples.text_pdf([f"Text of key number {n}"] * (n % 3 + 1)) for n, key in enumerate(HOSTILE_KEYS)}
    for key, data in docs.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    cfg = make_cfg(tmp_path, moto_endpoint, bucket, engine="text", document_attempts=1)
    before = files_under(tmp_path)

    counted = run_luigi(cfg, "CountPages", "--source", f"s3://{bucket}/", "--output", f"s3://{bucket}/pc.csv")
    assert counted.returncode == 0, counted.stdout[-3000:]
    rows = {r["key"]: r for r in counting.csv_rows(get(s3_client, bucket, "pc.csv"))}
    assert {k: int(r["pages"]) for k, r in rows.items()} == {
        f"s3://{bucket}/{k}": n % 3 + 1 for n, k in enumerate(HOSTILE_KEYS)}

    sharded = run_luigi(cfg, "ShardManifest", "--page-counts", f"s3://{bucket}/pc.csv", "--shards", "1")
    assert sharded.returncode == 0, sharded.stdout[-3000:]
    summary = json.loads(get(s3_client, bucket, "manifests/shards/shard_summary.json"))
    assert summary["skipped"] == [] and summary["documents"] == len(HOSTILE_KEYS)
    uris = shard_plan.parse_shard_file(get(s3_client, bucket, "manifests/shards/shard_1.txt"))
    assert sorted(uris) == sorted(f"s3://{bucket}/{k}" for k in HOSTILE_KEYS)  # one line per key, none split

    ran = run_luigi(cfg, "RunShard", "--shard", "1")
    assert ran.returncode == 0, ran.stdout[-3000:]
    for n, key in enumerate(HOSTILE_KEYS):
        uri = f"s3://{bucket}/{key}"
        (output,) = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uri)}.done"))["outputs"]
        assert output.startswith(f"s3://{bucket}/outputs/{bucket}/")
        assert "/../" not in output and "/./" not in output and "//" not in output[len("s3://"):]
        record = json.loads(get(s3_client, bucket, s3.split(output)[1]))
        assert record["metadata"]["Source-File"] == uri and f"Text of key number {n}" in record["text"]
    stored = keys(s3_client, bucket, "")
    assert all(k in docs or k.startswith(("status/", "outputs/", "manifests/", "pc.csv", "pc_parts/")) for k in stored)
    assert files_under(tmp_path) - before == set()  # the work folder is emptied; nothing landed beside it
    assert not [p for p in files_under(tmp_path) if p.name == "PWNED"]


def test_shard_file_lines_that_name_no_document_are_rejected_never_read(tmp_path, moto_endpoint, s3_client, bucket):
    from tests.s3server import run_luigi
    from tests.test_shards import get, keys, make_cfg, put_shard

    s3_client.put_object(Bucket=bucket, Key="raw/good.pdf", Body=samples.text_pdf(["Good document"]))
    bait = tmp_path / "relative" / "bait.pdf"  # RunShard's working folder is tmp_path
    bait.parent.mkdir()
    bait.write_bytes(samples.text_pdf(["Local file that no shard line may read"]))
    (tmp_path / "collection").mkdir()
    bad = {
        "relative/bait.pdf": "neither an s3:// URI nor an absolute path",
        f"{tmp_path}/collection/../relative/bait.pdf": "'..'",
        "s3:///nobucket.pdf": "not an s3://bucket/key URI",
        f"s3://{bucket}/": "not an s3://bucket/key URI",
        f"s3://{bucket}": "not an s3://bucket/key URI",
        f"s3://{bucket}/raw/nul\x00byte.pdf": "NUL",
    }
    put_shard(s3_client, bucket, 1, [f"s3://{bucket}/raw/good.pdf", *bad])
    cfg = make_cfg(tmp_path, moto_endpoint, bucket, engine="text")

    result = run_luigi(cfg, "RunShard", "--shard", "1")

    assert result.returncode == 0, result.stdout[-3000:]
    marker = json.loads(get(s3_client, bucket, "status/_shards/shard_1.done"))
    assert marker["done"] == 1 and marker["failed"] == []
    assert [r["line"] for r in marker["rejected"]] == list(bad)
    for entry, why in zip(marker["rejected"], bad.values(), strict=True):
        assert why in entry["reason"], entry
        assert f"line rejected: {entry['reason']}" in result.stdout
    assert sorted(k for k in keys(s3_client, bucket, "status/") if not k.startswith("status/_nodes/")) == [
        "status/_shards/shard_1.done", f"status/{bucket}/raw/good.pdf.done"]
    assert not list((tmp_path / "work").rglob("*.pdf"))
    s3_client.put_object(Bucket=bucket, Key="manifests/shards/shard_summary.json",
                         Body=json.dumps({"shards": [{"shard": 1}]}).encode())
    status = run_luigi(cfg, "ShardStatus")
    assert status.returncode == 0, status.stdout[-2000:]
    row = next(line.split() for line in status.stdout.splitlines() if line.split()[:1] == ["1"])
    assert (row[1], row[3], row[5]) == ("1", "0", "0")  # done, failed, remaining: rejected lines are not work
