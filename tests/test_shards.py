"""Cloud shards end to end on a real moto server, through the real ``luigi`` command line."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pypdf import PdfReader

from pipeline import pdf, samples
from pipeline.cloud import counting, markers, s3, shard_plan
from tests.fault_proxy import FaultProxy, answer_status
from tests.s3server import bad_startxref, luigi_command, noise_pdf, run_luigi, write_luigi_cfg


def make_cfg(tmp_path: Path, endpoint: str, bucket: str = "", **s3_values: object) -> Path:
    values: dict[str, object] = {"endpoint_url": endpoint, "max_attempts": 3}
    if bucket:
        values |= {
            "shard_prefix": f"s3://{bucket}/manifests/shards",
            "status_prefix": f"s3://{bucket}/status",
            "output_prefix": f"s3://{bucket}/outputs",
            "work_dir": tmp_path / "work",
        }
    return write_luigi_cfg(tmp_path / "luigi.cfg", {"core": {"autoload_range": "false"}, "s3": values | s3_values})


def keys(client, bucket: str, prefix: str) -> dict[str, dict]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found |= {item["Key"]: item for item in page.get("Contents", [])}
    return found


def get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def full_parse(data: bytes) -> int:
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        reader.decrypt("")
    return len(reader.pages)


# --- CountPages -------------------------------------------------------------------------------------

def corpus() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(good, bad) documents by key: large scans, a 3,000-page file, damaged, not a PDF, empty."""
    text = samples.text_pdf(["first", "second", "third"])
    good = {
        "raw/scan big 1.pdf": noise_pdf(3, seed=1),
        "raw/scan big 2.pdf": noise_pdf(2, side=1400, seed=2),
        "raw/many pages.pdf": samples.blank_pdf(3000),
        "raw/ünïcödé/text.pdf": text,
        "raw/scanned.pdf": samples.scanned_pdf(["a scanned page"]),
        "raw/damaged but readable.pdf": bad_startxref(samples.blank_pdf(400)),
        "raw/locked-open.pdf": samples.encrypted_pdf("owner"),
    }
    bad = {
        "raw/truncated.pdf": text[: len(text) // 2],
        "raw/garbage.pdf": b"%PDF-1.4\n" + random.Random(3).randbytes(5000) + b"\n%%EOF\n",
        "raw/not_a_pdf.pdf": b"<html><body>503 Service Unavailable</body></html>\n",
        "raw/empty.pdf": b"",
        "raw/locked.pdf": samples.encrypted_pdf("owner", user_password="user"),
    }
    return good, bad


def upload(client, bucket: str, docs: dict[str, bytes]) -> None:
    for key, data in docs.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def part_rows(client, bucket: str, prefix: str) -> list[dict[str, str]]:
    rows = []
    for key in sorted(keys(client, bucket, prefix)):
        if key.rsplit("/", 1)[-1].startswith("part_"):
            rows += counting.csv_rows(get(client, bucket, key))
    return rows


def test_count_pages_on_s3_matches_a_full_parse_with_few_bytes(tmp_path, moto_endpoint, s3_client, bucket):
    good, bad = corpus()
    upload(s3_client, bucket, {**good, **bad, "raw/notes.txt": b"not counted", "elsewhere/x.pdf": b"outside"})
    output = f"s3://{bucket}/manifests/page_counts/page_counts_master.csv"
    result = run_luigi(make_cfg(tmp_path, moto_endpoint), "CountPages", "--source", f"s3://{bucket}/raw",
                       "--output", output, "--max-workers", "8", "--chunk-size", "5")
    assert result.returncode == 0, result.stdout
    assert "documents counted" in result.stdout

    master = get(s3_client, bucket, "manifests/page_counts/page_counts_master.csv")
    assert master.splitlines()[0] == b"key,size,pages,error"
    rows = {r["key"]: r for r in counting.csv_rows(master)}
    assert list(rows) == sorted(f"s3://{bucket}/{k}" for k in {**good, **bad})
    for key, data in good.items():
        row = rows[f"s3://{bucket}/{key}"]
        assert (int(row["pages"]), row["error"], int(row["size"])) == (full_parse(data), "", len(data)), key
    for key, data in bad.items():
        row = rows[f"s3://{bucket}/{key}"]
        local = tmp_path / "bad.pdf"
        local.write_bytes(data)
        with pytest.raises(pdf.PdfError) as caught:
            pdf.count_pages(local)
        locked_pages = {"raw/locked.pdf": "1"}  # a password does not hide the page tree's count
        assert row["pages"] == locked_pages.get(key, "") and row["error"].startswith(caught.value.reason + ":"), key

    parts = part_rows(s3_client, bucket, "manifests/page_counts/page_counts_master_parts/")
    assert len(parts) == len(rows)
    fetched = sum(int(r["bytes_fetched"]) for r in parts)
    total = sum(len(d) for d in {**good, **bad}.values())
    assert fetched < total * 0.05, (fetched, total)
    by_key = {r["key"]: r for r in parts}
    big = by_key[f"s3://{bucket}/raw/scan big 1.pdf"]
    assert big["method"] == "count" and int(big["bytes_fetched"]) < len(good["raw/scan big 1.pdf"]) / 100
    damaged = by_key[f"s3://{bucket}/raw/damaged but readable.pdf"]
    assert damaged["method"] == "parse"  # a full GET, then a full parse


def test_count_pages_on_a_local_folder_to_a_local_csv(tmp_path, moto_endpoint):
    good, bad = corpus()
    folder = tmp_path / "collection"
    for key, data in {**good, **bad}.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)
    output = tmp_path / "counts" / "page_counts_master.csv"
    result = run_luigi(make_cfg(tmp_path, moto_endpoint), "CountPages", "--source", str(folder),
                       "--output", str(output))
    assert result.returncode == 0, result.stdout
    rows = {r["key"]: r for r in counting.csv_rows(output.read_bytes())}
    assert {k: int(r["pages"]) for k, r in rows.items() if r["pages"] and not r["error"]} == {
        str(folder / k): full_parse(d) for k, d in good.items()}
    assert {k for k, r in rows.items() if r["error"]} == {str(folder / k) for k in bad}
    assert rows[str(folder / "raw/locked.pdf")]["pages"] == "1"  # locked, yet its count is known
    assert (tmp_path / "counts" / "page_counts_master_parts" / "listing.csv").exists()


@pytest.mark.slow
def test_count_pages_killed_after_some_parts_resumes_with_the_missing_ones(tmp_path, moto_endpoint, s3_client, bucket):
    docs = {f"raw/doc{i:02d}.pdf": samples.text_pdf(["page"] * (i % 4 + 1)) for i in range(16)}
    upload(s3_client, bucket, docs)
    parts_prefix = "counts/pc_parts/"
    args = ("CountPages", "--source", f"s3://{bucket}/raw/", "--output", f"s3://{bucket}/counts/pc.csv",
            "--max-workers", "1", "--chunk-size", "2")
    with FaultProxy(moto_endpoint, delay=0.08) as slow:
        argv, env = luigi_command(make_cfg(tmp_path, slow.endpoint), *args)
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while sum(k.split("/")[-1].startswith("part_") for k in keys(s3_client, bucket, parts_prefix)) < 3:
                assert process.poll() is None and time.monotonic() < deadline, "CountPages ended before the kill"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    before = {k: v["LastModified"] for k, v in keys(s3_client, bucket, parts_prefix).items()}
    done_parts = [k for k in before if k.split("/")[-1].startswith("part_")]
    assert 3 <= len(done_parts) < 8 and "counts/pc.csv" not in keys(s3_client, bucket, "counts/")

    with FaultProxy(moto_endpoint) as watch:
        result = run_luigi(make_cfg(tmp_path, watch.endpoint), *args)
    assert result.returncode == 0, result.stdout
    after = keys(s3_client, bucket, parts_prefix)
    assert all(after[k]["LastModified"] == before[k] for k in done_parts)
    assert len([k for k in after if k.split("/")[-1].startswith("part_")]) == 8
    counted_first = {row["key"] for k in done_parts for row in counting.csv_rows(get(s3_client, bucket, k))}
    fetched_again = {path.split("?")[0] for method, path in watch.log if method == "GET"}
    assert not {f"/{bucket}/{k.removeprefix(f's3://{bucket}/')}" for k in counted_first} & fetched_again
    rows = counting.csv_rows(get(s3_client, bucket, "counts/pc.csv"))
    assert {r["key"]: int(r["pages"]) for r in rows} == {f"s3://{bucket}/{k}": full_parse(d) for k, d in docs.items()}


def test_count_pages_retries_server_errors_then_fails_clearly(tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, {"raw/a.pdf": samples.text_pdf(["a", "b"])})
    args = ("CountPages", "--source", f"s3://{bucket}/raw/", "--output", f"s3://{bucket}/pc.csv")
    with FaultProxy(moto_endpoint, answer_status(503, lambda n: n < 3)) as flaky:
        result = run_luigi(make_cfg(tmp_path, flaky.endpoint, max_attempts=5), *args)
    assert result.returncode == 0, result.stdout
    assert flaky.failed == 3
    assert counting.csv_rows(get(s3_client, bucket, "pc.csv"))[0]["pages"] == "2"

    with FaultProxy(moto_endpoint, answer_status(500, lambda n: True)) as down:
        result = run_luigi(make_cfg(tmp_path, down.endpoint, max_attempts=2), *args[:-1], f"s3://{bucket}/pc2.csv")
    assert result.returncode != 0
    assert "failed after 2 attempts" in result.stdout and "check the endpoint" in result.stdout
    assert down.requests == 2


# --- ShardManifest ---------------------------------------------------------------------------------

def test_shard_manifest_cli_balanced_deterministic_with_filters(tmp_path, moto_endpoint, s3_client, bucket):
    rng = random.Random(11)
    rows = [{"key": f"s3://{bucket}/raw/d{i:03d}.pdf", "size": 1000, "pages": rng.randint(1, 400), "error": ""}
            for i in range(300)]
    rows += [{"key": f"s3://{bucket}/raw/bad{i}.pdf", "size": 0, "pages": "", "error": "empty: zero-byte file"}
             for i in range(3)]
    counts = tmp_path / "page_counts_master.csv"
    counts.write_bytes(counting.csv_bytes(rows, counting.MASTER_COLUMNS))
    cfg = make_cfg(tmp_path, moto_endpoint)

    def manifest(prefix: str, *extra: str):
        return run_luigi(cfg, "ShardManifest", "--page-counts", str(counts), "--shards", "4", "--min-pages", "5",
                         "--output-prefix", f"s3://{bucket}/{prefix}", *extra)

    failed = manifest("no-skip")
    assert failed.returncode != 0 and "--skip-errors" in failed.stdout
    assert not keys(s3_client, bucket, "no-skip/")

    assert manifest("shards-a", "--skip-errors").returncode == 0
    assert manifest("shards-b", "--skip-errors").returncode == 0
    first = {k.split("/")[-1]: get(s3_client, bucket, k) for k in keys(s3_client, bucket, "shards-a/")}
    second = {k.split("/")[-1]: get(s3_client, bucket, k) for k in keys(s3_client, bucket, "shards-b/")}
    assert first == second and sorted(first) == [f"shard_{k}.txt" for k in range(1, 5)] + ["shard_summary.json"]

    eligible = {r["key"]: r["pages"] for r in rows if not r["error"] and r["pages"] >= 5}
    listed = [u for k in range(1, 5) for u in shard_plan.parse_shard_file(first[f"shard_{k}.txt"])]
    assert sorted(listed) == sorted(eligible)
    summary = json.loads(first["shard_summary.json"])
    assert summary["documents"] == len(eligible) and summary["pages"] == sum(eligible.values())
    assert summary["max_imbalance"] < 0.01
    assert abs(sum(s["share"] for s in summary["shards"]) - 1) < 1e-4
    assert summary["skipped_by_reason"] == {"error": 3, "min_pages": 300 - len(eligible)}
    for shard in summary["shards"]:
        uris = shard_plan.parse_shard_file(first[shard["file"]])
        assert shard["documents"] == len(uris) and shard["pages"] == sum(eligible[u] for u in uris)


# --- RunShard, ShardStatus ---------------------------------------------------------------------------

WEIRD_KEYS = ["raw/plain.pdf", "raw/with space & (quote's).pdf", "raw/ünïcödé 書.pdf", "raw/../../escape.pdf",
              "/leading slash.pdf"]


def put_shard(client, bucket: str, shard: int, uris: list[str]) -> None:
    client.put_object(Bucket=bucket, Key=f"manifests/shards/{shard_plan.shard_name(shard)}",
                      Body=shard_plan.shard_file_bytes(uris))


def test_run_shard_with_the_text_engine_end_to_end(tmp_path, moto_endpoint, s3_client, bucket):
    docs = {key: samples.text_pdf([f"{key} page {p}" for p in range(i + 1)]) for i, key in enumerate(WEIRD_KEYS)}
    docs["raw/truncated.pdf"] = samples.text_pdf(["x"] * 3)[:700] + b"\n%%EOF\n"
    upload(s3_client, bucket, docs)
    uris = [f"s3://{bucket}/{k}" for k in docs]
    put_shard(s3_client, bucket, 1, uris)
    counts = counting.csv_bytes(({"key": u, "size": 1, "pages": i + 1, "error": ""} for i, u in enumerate(uris)),
                                counting.MASTER_COLUMNS)
    s3_client.put_object(Bucket=bucket, Key="pc.csv", Body=counts)
    s3_client.put_object(Bucket=bucket, Key="manifests/shards/shard_summary.json", Body=json.dumps(
        {"page_counts": f"s3://{bucket}/pc.csv", "shards": [{"shard": 1}]}).encode())
    cfg = make_cfg(tmp_path, moto_endpoint, bucket, engine="text", parallel_documents=2, document_attempts=2)

    first = run_luigi(cfg, "RunShard", "--shard", "1")
    assert first.returncode == 30, first.stdout
    assert "1 documents failed" in first.stdout and "rerun RunShard --shard 1" in first.stdout
    status = keys(s3_client, bucket, "status/")
    done = {k for k in status if k.endswith(".done")}
    assert len(done) == len(WEIRD_KEYS) and "status/_shards/shard_1.done" not in status
    failed = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[-1])}.failed"))
    assert failed["attempts"] == 1 and "no record" in failed["error"]
    for key in WEIRD_KEYS:
        uri = f"s3://{bucket}/{key}"
        outputs = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uri)}.done"))["outputs"]
        record = json.loads(get(s3_client, bucket, s3.split(outputs[0])[1]))
        assert record["metadata"]["Source-File"] == uri and "page 0" in record["text"]
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["luigi.cfg", "work"]

    second = run_luigi(cfg, "RunShard", "--shard", "1")
    assert second.returncode == 0, second.stdout
    after = keys(s3_client, bucket, "status/")
    assert all(after[k]["LastModified"] == status[k]["LastModified"] for k in done)
    assert json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[-1])}.failed"))["attempts"] == 2
    assert json.loads(get(s3_client, bucket, "status/_shards/shard_1.done"))["failed"] == [uris[-1]]
    assert "RunShard(shard=1)" in run_luigi(cfg, "RunShard", "--shard", "1").stdout  # complete: nothing runs

    table = run_luigi(cfg, "ShardStatus")
    assert table.returncode == 0, table.stdout
    line = next(line for line in table.stdout.splitlines() if line.split()[:1] == ["1"]).split()
    assert line[1:7] == ["5", "15", "1", "6", "0", "0"]
    with FaultProxy(moto_endpoint) as watch:
        cli = subprocess.run(
            [sys.executable, "-m", "pipeline.sharding", "status", "--json",
             "--shard-prefix", f"s3://{bucket}/manifests/shards", "--status-prefix", f"s3://{bucket}/status"],
            env=luigi_command(make_cfg(tmp_path, watch.endpoint), "ShardStatus")[1], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    overall = json.loads(cli.stdout)["overall"]
    assert (overall["done_documents"], overall["failed_documents"], overall["remaining_pages"]) == (5, 1, 0)
    assert [m for m, _ in watch.log] == ["GET"] * 4  # summary, shard file, page counts, one LIST


COUNTER_SCRIPT = """\
import pathlib, sys, time
uri, pdf, outdir, counter = sys.argv[1:5]
time.sleep(0.5)
if "fail" in uri:
    sys.exit("cannot process " + uri)
assert pathlib.Path(pdf).read_bytes().startswith(b"%PDF")
pathlib.Path(outdir, "result.txt").write_text(uri)
with open(counter, "a", encoding="utf-8") as handle:
    handle.write(uri + "\\n")
"""


@pytest.mark.slow
def test_run_shard_killed_mid_shard_reruns_without_repeats_or_gaps(tmp_path, moto_endpoint, s3_client, bucket):
    docs = {f"raw/doc {i:02d}.pdf": samples.text_pdf([str(i)]) for i in range(12)}
    docs["raw/will fail.pdf"] = samples.text_pdf(["no"])
    upload(s3_client, bucket, docs)
    uris = [f"s3://{bucket}/{k}" for k in sorted(docs)]
    put_shard(s3_client, bucket, 2, uris)
    script, counter = tmp_path / "engine.py", tmp_path / "counter.txt"
    script.write_text(COUNTER_SCRIPT)
    command = f"{sys.executable} {script} {{uri}} {{input}} {{outdir}} {counter}"
    cfg = make_cfg(tmp_path, moto_endpoint, bucket, engine="command", command=command, parallel_documents=2,
                   document_attempts=1)

    def counted() -> list[str]:
        return counter.read_text(encoding="utf-8").splitlines() if counter.exists() else []

    argv, env = luigi_command(cfg, "RunShard", "--shard", "2")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "RunShard ended before the kill"
            lines = counted()
            done_markers = [k for k in keys(s3_client, bucket, "status/") if k.endswith(".done")]
            # Kill between documents' bookkeeping: every counted document already has its marker.
            if len(lines) >= 4 and len(done_markers) == len(lines) == len(counted()):
                break
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert len(counted()) < len(uris) - 1

    result = run_luigi(cfg, "RunShard", "--shard", "2")
    assert result.returncode == 0, result.stdout
    lines = counted()
    assert sorted(lines) == sorted(u for u in uris if "fail" not in u) and len(set(lines)) == len(lines)
    failed = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[-1])}.failed"))
    assert failed["attempts"] == 1 and "cannot process" in failed["error"]
    summary = json.loads(get(s3_client, bucket, "status/_shards/shard_2.done"))
    assert summary["failed"] == [uris[-1]] and summary["done"] == 12
    outputs = keys(s3_client, bucket, "outputs/")
    assert len(outputs) == 12 and get(s3_client, bucket, sorted(outputs)[0]).decode() == uris[0]
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


# --- Preflight --------------------------------------------------------------------------------------

def test_preflight_passes_on_a_good_node_and_says_what_to_fix(tmp_path, moto_endpoint, bucket):
    good = make_cfg(tmp_path, moto_endpoint, bucket, engine="text", min_root_free_gb=0, min_work_free_gb=0)
    result = run_luigi(good, "Preflight", env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout
    assert "[ok] status_prefix access" in result.stdout and "FAIL" not in result.stdout

    bad = make_cfg(tmp_path, moto_endpoint, bucket, engine="olmocr", min_work_free_gb=10 ** 9,
                   status_prefix="s3://no-such-bucket-here/status")
    result = run_luigi(bad, "Preflight", env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 30, result.stdout
    for text in ("[FAIL] work volume free", "[FAIL] status_prefix access", "NoSuchBucket", "[FAIL] GPU visible",
                 "[FAIL] engine olmocr", "fix: pip install olmocr", "fix: the engine needs a GPU"):
        assert text in result.stdout, text

    missing = make_cfg(tmp_path, moto_endpoint, bucket, engine="command", command="no-such-program {input}",
                       min_root_free_gb=0, min_work_free_gb=0)
    result = run_luigi(missing, "Preflight")
    assert result.returncode == 30 and "fix: install no-such-program" in result.stdout
