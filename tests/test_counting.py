"""cloud/counting: page counts of a prefix, in parts that a rerun resumes, on a real moto server."""
from __future__ import annotations

import pytest

from pipeline import samples
from pipeline.cloud import counting
from pipeline.cloud.s3 import Listed, S3Error, S3Settings, Storage
from tests.fault_proxy import FaultProxy
from tests.test_shards import full_parse, get, keys, upload


def storage_at(endpoint: str) -> Storage:
    return Storage(S3Settings(endpoint_url=endpoint))


def test_an_object_replaced_after_listing_is_reported_not_mixed(moto_endpoint, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="doc.pdf", Body=samples.text_pdf(["one"]))
    listed = next(iter(storage_at(moto_endpoint).list(f"s3://{bucket}/")))
    s3_client.put_object(Bucket=bucket, Key="doc.pdf", Body=samples.text_pdf(["one", "two"]))
    row = counting.count_document(storage_at(moto_endpoint), listed)
    assert row.pages is None and row.error.startswith("changed:")


def test_local_files_count_through_the_same_path(tmp_path):
    path = tmp_path / "doc.pdf"
    path.write_bytes(samples.text_pdf(["a", "b"]))
    row = counting.count_document(Storage(), Listed(str(path), "doc.pdf", path.stat().st_size))
    assert (row.pages, row.error) == (2, "")
    assert row.bytes_fetched > 0
    gone = Listed(str(tmp_path / "gone.pdf"), "gone.pdf", 9)
    assert counting.count_document(Storage(), gone).error.startswith("missing")


def test_part_ranges_cover_every_document_once():
    assert counting.part_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert counting.part_ranges(0, 2) == []
    with pytest.raises(ValueError, match="--chunk-size must be at least 1"):
        counting.part_ranges(5, 0)
    assert counting.parts_folder("s3://b/counts/pc.csv") == "s3://b/counts/pc_parts"


def test_count_pages_writes_parts_then_the_master_and_a_rerun_reads_no_document(moto_endpoint, s3_client, bucket):
    docs = {f"raw/doc {i}.pdf": samples.text_pdf(["page"] * (i + 1)) for i in range(5)}
    upload(s3_client, bucket, {**docs, "raw/notes.txt": b"not counted", "raw/empty.pdf": b""})
    output = f"s3://{bucket}/counts/pc.csv"
    lines: list[tuple[float, str, bool]] = []
    stats = counting.count_pages(storage_at(moto_endpoint), f"s3://{bucket}/raw", output, max_workers=2,
                                 chunk_size=2, progress=lambda percent, message, force=False: lines.append(
                                     (percent, message, force)))
    rows = counting.csv_rows(get(s3_client, bucket, "counts/pc.csv"))
    assert list(rows[0]) == list(counting.MASTER_COLUMNS)
    assert {r["key"]: r["pages"] for r in rows if not r["error"]} == {
        f"s3://{bucket}/{k}": str(full_parse(d)) for k, d in docs.items()}
    assert [r["error"].split(":")[0] for r in rows if r["error"]] == ["empty"]
    parts = sorted(k.rsplit("/", 1)[1] for k in keys(s3_client, bucket, "counts/pc_parts/"))
    assert parts == ["listing.csv", *(counting.part_name(s, e) for s, e in counting.part_ranges(6, 2))]
    assert (stats.documents, stats.parts, stats.counted) == (6, 3, 6)
    assert 0 < stats.bytes_fetched <= sum(len(d) for d in docs.values())
    assert lines[0] == (0, f"listing s3://{bucket}/raw", True) and lines[-1][0] == 100
    assert lines[-1][1].startswith("6 documents counted; this run fetched") and lines[-1][2]

    s3_client.delete_object(Bucket=bucket, Key="counts/pc.csv")
    with FaultProxy(moto_endpoint) as watch:
        again = counting.count_pages(storage_at(watch.endpoint), f"s3://{bucket}/raw", output, chunk_size=2)
    assert (again.counted, again.bytes_fetched) == (0, 0)
    assert not [path for method, path in watch.log if method == "GET" and "/raw/" in path]
    assert counting.csv_rows(get(s3_client, bucket, "counts/pc.csv")) == rows


def test_count_pages_stops_at_the_first_s3_failure(moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, {f"raw/d{i}.pdf": samples.text_pdf(["a"]) for i in range(4)})
    down = lambda n, method, path: 500 if method == "GET" and "/raw/" in path else None  # noqa: E731
    with FaultProxy(moto_endpoint, down) as proxy:
        storage = Storage(S3Settings(endpoint_url=proxy.endpoint, max_attempts=2))
        with pytest.raises(S3Error, match="failed after 2 attempts"):
            counting.count_pages(storage, f"s3://{bucket}/raw", f"s3://{bucket}/pc.csv", max_workers=1, chunk_size=4)
    assert "pc.csv" not in keys(s3_client, bucket, "")
