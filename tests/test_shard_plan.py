"""cloud/shard_plan: selecting, balancing and writing shard files, on a real moto server."""
from __future__ import annotations

import json
import random

import pytest

from pipeline.cloud import counting, s3, shard_plan
from tests.fault_proxy import FaultProxy
from tests.test_shards import get


def storage_at(endpoint: str) -> s3.Storage:
    return s3.Storage(s3.S3Settings(endpoint_url=endpoint))


def test_balance_is_even_deterministic_and_complete():
    rng = random.Random(5)
    documents = {f"s3://b/doc{i:04d}.pdf": int(rng.lognormvariate(3, 1.2)) + 1 for i in range(800)}
    shards = shard_plan.balance(documents, 7)
    assert sorted(u for s in shards for u in s) == sorted(documents)
    loads = [sum(documents[u] for u in s) for s in shards]
    assert max(loads) - min(loads) <= max(documents.values())
    assert max(loads) / (sum(loads) / 7) - 1 < 0.01
    shuffled = dict(sorted(documents.items(), key=lambda _: rng.random()))
    assert shard_plan.balance(shuffled, 7) == shards
    assert all(s == sorted(s, key=lambda u: (-documents[u], u)) for s in shards)


def test_balance_improves_on_largest_first():
    # Largest-first alone gives 7 and 5 pages here.
    documents = {"a": 3, "b": 3, "c": 2, "d": 2, "e": 2}
    assert sorted(sorted(documents[u] for u in s) for s in shard_plan.balance(documents, 2)) == [[2, 2, 2], [3, 3]]


def test_select_documents_rules():
    rows = [
        {"key": "s3://b/ok.pdf", "pages": "10", "error": ""},
        {"key": "s3://b/one.pdf", "pages": "1", "error": ""},
        {"key": "s3://b/bad.pdf", "pages": "", "error": "truncated: cut short"},
        {"key": "s3://b/ok.pdf", "pages": "10", "error": ""},
        {"key": "s3://b/line\nbreak.pdf", "pages": "3", "error": ""},
        {"key": "relative/x.pdf", "pages": "4", "error": ""},
    ]
    with pytest.raises(ValueError, match="--skip-errors"):
        shard_plan.select_documents(rows, min_pages=2, skip_errors=False, source_base="s3://b")
    with pytest.raises(ValueError, match="--source-base"):
        shard_plan.select_documents(rows, min_pages=2, skip_errors=True)
    docs, skipped = shard_plan.select_documents(rows, min_pages=2, skip_errors=True, source_base="s3://b/")
    assert docs == {"s3://b/ok.pdf": 10, "s3://b/relative/x.pdf": 4}
    assert [s["kind"] for s in skipped] == ["min_pages", "error", "duplicate", "bad_key"]


def test_shard_files_list_one_uri_a_line_whatever_the_key_holds():
    uris = ["s3://b/raw/a b.pdf", "s3://b/raw/line\u2028sep.pdf", "s3://b/raw/x\x1cy.pdf"]
    data = shard_plan.shard_file_bytes(uris)
    assert data.count(b"\n") == 3 and shard_plan.parse_shard_file(data) == uris


@pytest.mark.parametrize(("uri", "problem"), [
    ("s3://b/raw/ok.pdf", ""),
    ("/data/raw/ok.pdf", ""),
    ("s3://b/", "is not an s3://bucket/key URI of an object"),
    ("s3:///k.pdf", "is not an s3://bucket/key URI of an object"),
    ("raw/relative.pdf", "is neither an s3:// URI nor an absolute path"),
    ("/data/../etc/passwd", "is a local path with '..' (it would read outside its folder)"),
    ("s3://b/a\x00b.pdf", "contains a NUL byte"),
])
def test_uri_problem_names_lines_that_name_no_document(uri, problem):
    assert shard_plan.uri_problem(uri) == problem


def page_counts(rows: list[dict[str, object]]) -> bytes:
    return counting.csv_bytes(rows, counting.MASTER_COLUMNS)


def test_make_shard_files_writes_the_shards_then_the_summary(moto_endpoint, s3_client, bucket):
    rows = [{"key": f"s3://{bucket}/raw/d{i}.pdf", "size": 10, "pages": p, "error": ""}
            for i, p in enumerate([9, 7, 5, 3, 1, 1])]
    rows.append({"key": f"s3://{bucket}/raw/empty.pdf", "size": 0, "pages": "", "error": "empty: zero-byte file"})
    s3_client.put_object(Bucket=bucket, Key="pc.csv", Body=page_counts(rows))
    prefix = f"s3://{bucket}/shards"
    with FaultProxy(moto_endpoint) as watch:
        summary = shard_plan.make_shard_files(storage_at(watch.endpoint), f"s3://{bucket}/pc.csv", 2, prefix,
                                              min_pages=2, skip_errors=True)
    puts = [path.split("?")[0] for method, path in watch.log if method == "PUT"]
    assert puts == [f"/{bucket}/shards/shard_1.txt", f"/{bucket}/shards/shard_2.txt",
                    f"/{bucket}/shards/shard_summary.json"]  # the summary last: the mark of a complete set
    shards = [shard_plan.parse_shard_file(get(s3_client, bucket, f"shards/shard_{k}.txt")) for k in (1, 2)]
    pages = {r["key"]: r["pages"] for r in rows}
    assert sorted(sum(pages[u] for u in shard) for shard in shards) == [12, 12]  # 9+3 and 7+5
    assert sorted(u for shard in shards for u in shard) == sorted(k for k, p in pages.items() if p and p >= 2)
    stored = json.loads(get(s3_client, bucket, "shards/shard_summary.json"))
    assert stored == summary
    assert (summary["documents"], summary["pages"], summary["max_imbalance"]) == (4, 24, 0.0)
    assert summary["skipped_by_reason"] == {"error": 1, "min_pages": 2}
    assert summary["page_counts"] == f"s3://{bucket}/pc.csv" and summary["min_pages"] == 2
    assert shard_plan.shard_uris(prefix, 2) == {"shard_1": f"{prefix}/shard_1.txt", "shard_2": f"{prefix}/shard_2.txt",
                                                "summary": f"{prefix}/shard_summary.json"}


def test_make_shard_files_writes_nothing_when_counts_have_errors(moto_endpoint, s3_client, bucket):
    rows = [{"key": f"s3://{bucket}/raw/a.pdf", "size": 10, "pages": 3, "error": ""},
            {"key": f"s3://{bucket}/raw/bad.pdf", "size": 5, "pages": "", "error": "truncated: cut short"}]
    s3_client.put_object(Bucket=bucket, Key="pc.csv", Body=page_counts(rows))
    with pytest.raises(ValueError, match="1 documents have page-count errors .*bad.pdf.*--skip-errors"):
        shard_plan.make_shard_files(storage_at(moto_endpoint), f"s3://{bucket}/pc.csv", 2, f"s3://{bucket}/shards")
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix="shards/")
