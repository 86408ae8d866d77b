"""cloud/status: shard progress from the shard files, the page counts and one listing of the
markers, on a real moto server; and ``python -m pipeline.sharding status`` in-process."""
from __future__ import annotations

import json
import time

import pytest

from pipeline.cloud import counting, markers, s3, shard_plan, status
from pipeline.cloud.claims import Claims, Node
from pipeline.config import S3Config
from tests.fault_proxy import FaultProxy
from tests.test_s3 import s3_endpoint_in_config  # noqa: F401 (a fixture)


def test_shard_status_of_100000_markers():
    # The time this takes is measured by bench/bench_shard_status.py.
    uris = [f"s3://b/raw/{i:06d}.pdf" for i in range(100_000)]
    shards = {k + 1: uris[k::4] for k in range(4)}
    pages = {u: 3 for u in uris}
    done = {markers.doc_key(u) for u in uris[:60_000]}
    failed = {markers.doc_key(u) for u in uris[59_000:61_000]}
    result = status.shard_status(shards, pages, done, failed)
    assert result["overall"] == {
        "done_documents": 60_000, "done_pages": 180_000, "failed_documents": 1_000, "failed_pages": 3_000,
        "remaining_documents": 39_000, "remaining_pages": 117_000, "total_documents": 100_000, "total_pages": 300_000}
    assert "100.0%" not in status.format_status(result)


def put_shards(client, bucket: str) -> list[str]:
    """Two shards of three documents (one a line no run accepts), their summary and page counts,
    one document done and one failed; returns the URIs."""
    uris = [f"s3://{bucket}/raw/{name}.pdf" for name in ("a", "b", "c", "d", "e")]
    client.put_object(Bucket=bucket, Key="shards/shard_1.txt", Body=shard_plan.shard_file_bytes(uris[:3]))
    client.put_object(Bucket=bucket, Key="shards/shard_2.txt", Body=shard_plan.shard_file_bytes([*uris[3:], "rel.pdf"]))
    rows = [{"key": u, "size": 1, "pages": i + 1, "error": ""} for i, u in enumerate(uris)]
    client.put_object(Bucket=bucket, Key="pc.csv", Body=counting.csv_bytes(rows, counting.MASTER_COLUMNS))
    client.put_object(Bucket=bucket, Key="shards/shard_summary.json", Body=json.dumps(
        {"page_counts": f"s3://{bucket}/pc.csv", "shards": [{"shard": 1}, {"shard": 2}]}).encode())
    for uri, kind in ((uris[0], "done"), (uris[3], "failed"), (uris[0], "failed")):
        client.put_object(Bucket=bucket, Key=s3.split(markers.marker_uri(f"s3://{bucket}/status", uri, kind))[1],
                          Body=b"{}")
    return uris


def test_collect_status_reads_four_objects(moto_endpoint, s3_client, bucket):
    put_shards(s3_client, bucket)
    with FaultProxy(moto_endpoint) as watch:
        result = status.collect_status(s3.Storage(s3.S3Settings(endpoint_url=watch.endpoint)),
                                       f"s3://{bucket}/shards", f"s3://{bucket}/status")
    assert [method for method, _ in watch.log] == ["GET"] * 5  # summary, two shard files, page counts, one LIST
    first, second = result["shards"]
    # a is done (done wins over its old .failed marker): 1 page; b and c remain: 2 + 3 pages
    assert (first["done_documents"], first["done_pages"], first["remaining_pages"], first["failed_documents"]) == (
        1, 1, 5, 0)
    # d failed (4 pages), e remains (5 pages); the line that names no document is not counted
    assert (second["failed_pages"], second["remaining_pages"], second["total_documents"]) == (4, 5, 2)
    assert result["overall"]["total_pages"] == 15


def test_status_command_prints_a_table_or_json(s3_endpoint_in_config, s3_client, bucket, capsys):
    put_shards(s3_client, bucket)
    args = ["status", "--shard-prefix", f"s3://{bucket}/shards", "--status-prefix", f"s3://{bucket}/status"]
    assert status.main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["shard", "done", "docs"] and table[-1].split()[0] == "all"
    assert status.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["done_documents"] == 1
    assert status.main([*args[:2], f"s3://{bucket}/nothing-here", *args[3:]]) == 1
    assert "error: GET s3://" in capsys.readouterr().err


def test_prefixes_come_from_the_arguments_or_s3_config():
    cfg = S3Config(shard_prefix="s3://b/shards", status_prefix="s3://b/status")
    assert status.resolve_prefixes("", "", cfg) == ("s3://b/shards", "s3://b/status")
    assert status.resolve_prefixes("/local/shards", "", cfg) == ("/local/shards", "s3://b/status")
    with pytest.raises(ValueError, match="set --shard-prefix and --status-prefix"):
        status.resolve_prefixes("", "", S3Config(shard_prefix="", status_prefix=""))


def test_status_shows_claims_with_their_node_and_age_and_the_nodes_rates(moto_endpoint, s3_client, bucket):
    uris = put_shards(s3_client, bucket)
    storage = s3.Storage(s3.S3Settings(endpoint_url=moto_endpoint))
    status_prefix = f"s3://{bucket}/status"
    assert Claims(storage, status_prefix, Node.here("node-a"), lease_seconds=1).create(uris[1], shard=1)
    time.sleep(4.2)  # node-a stops renewing: its lease (1 s) runs out
    assert Claims(storage, status_prefix, Node.here("node-b"), lease_seconds=600).create(uris[4], shard=2)
    now = time.time()
    runs = [("node-a", now - 7200, {"documents": 4, "pages": 400, "failed": 0, "seconds": 3600, "state": "finished"}),
            ("node-a", now - 1800, {"documents": 2, "pages": 100, "failed": 1, "seconds": 1800, "state": "running"}),
            ("node-b", now - 900, {"documents": 1, "pages": 50, "failed": 0, "seconds": 900, "state": "running"})]
    for node, started, counts in runs:
        uri = markers.node_stats_uri(status_prefix, node, f"{int(started)}-42", counts)
        storage.write_bytes(uri, b"{}")

    result = status.collect_status(storage, f"s3://{bucket}/shards", status_prefix)
    claims = {c["uri"]: c for c in result["claims"]}
    assert set(claims) == {uris[1], uris[4]}
    assert (claims[uris[1]]["node"], claims[uris[1]]["shard"], claims[uris[1]]["stale"]) == ("node-a", 1, True)
    assert claims[uris[1]]["age"] >= 4
    assert (claims[uris[4]]["node"], claims[uris[4]]["shard"], claims[uris[4]]["stale"]) == ("node-b", 2, False)
    nodes = {r["node"]: r for r in result["nodes"]["rows"]}
    assert (nodes["node-a"]["documents"], nodes["node-a"]["pages"], nodes["node-a"]["failed"]) == (6, 500, 1)
    assert nodes["node-a"]["pages_per_hour"] == round(500 / 1.5, 1)  # 500 pages in 1.5 hours of runs
    assert nodes["node-a"]["running"] and nodes["node-b"]["running"]
    # running now: node-a at 200 pages/hour, node-b at 200; 2 + 3 + 5 pages remain (a is done)
    assert result["nodes"]["pages_per_hour"] == 400
    assert result["nodes"]["hours_to_finish"] == round(10 / 400, 2)
    table = status.format_status(result)
    assert "claims of shard 1: 1 claimed, 1 stale (node, lease age: node-a" in table and "STALE" in table
    assert "claims of shard 2: 1 claimed, 0 stale (node, lease age: node-b" in table
    assert "the rest takes 0.0 h" in table and any(line.startswith("node-a ") for line in table.splitlines())


def test_a_node_silent_for_an_hour_is_not_counted_as_running():
    runs = [{"node": "gone", "started": 0, "documents": 1, "pages": 10, "failed": 0, "seconds": 60,
             "state": "running"}]
    rates = status.node_rates(runs, remaining_pages=100, now=4 * 3600)
    assert not rates["rows"][0]["running"] and rates["hours_to_finish"] is None
    assert status.node_rates(runs, remaining_pages=100, now=120)["hours_to_finish"] == round(100 / 600, 2)
