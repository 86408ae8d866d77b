"""cloud/markers: marker and output names, and reading every marker of a prefix with one listing,
on a real moto server."""
from __future__ import annotations

import json
import socket

from pipeline.cloud import markers, s3
from tests.fault_proxy import FaultProxy


def test_doc_keys_are_one_to_one_and_cannot_escape():
    assert markers.doc_key("s3://b/raw/a b.pdf") == "b/raw/a b.pdf"
    assert markers.doc_key("s3://b//lead.pdf") == "b/%/lead.pdf"
    assert markers.doc_key("s3://b/raw/../x.pdf") == "b/raw/%2E%2E/x.pdf"
    assert markers.doc_key("s3://b/raw/%2E%2E/x.pdf") == "b/raw/%252E%252E/x.pdf"
    assert markers.marker_uri("s3://s/status/", "s3://b/k.pdf", "done") == "s3://s/status/b/k.pdf.done"
    assert markers.output_uri("s3://o/out", "s3://b/raw/k.pdf") == "s3://o/out/b/raw/k"
    assert markers.shard_marker_uri("s3://s/status", 3) == "s3://s/status/_shards/shard_3.done"


def test_doc_keys_of_local_paths_stay_under_their_own_folder():
    assert markers.doc_key("/data/raw/a.pdf") == "_local/data/raw/a.pdf"
    # "..pdf" without its suffix is ".": escaped like a "." segment, never the folder itself
    assert markers.output_uri("/out", "/data/raw/..pdf") == "/out/_local/data/raw/%2E"


def test_scan_markers_reads_a_prefix_with_one_listing(moto_endpoint, s3_client, bucket):
    status = f"s3://{bucket}/status"
    uris = [f"s3://{bucket}/raw/{name}.pdf" for name in ("a", "b b", "c", "ünï")]
    for uri, kind in zip(uris, ("done", "failed", "done", "failed"), strict=True):
        key = s3.split(markers.marker_uri(status, uri, kind))[1]
        s3_client.put_object(Bucket=bucket, Key=key, Body=markers.marker_bytes(uri=uri, attempts=1))
    s3_client.put_object(Bucket=bucket, Key="status/_shards/shard_1.done", Body=b"{}")
    with FaultProxy(moto_endpoint) as watch:
        done, failed = markers.scan_markers(s3.Storage(s3.S3Settings(endpoint_url=watch.endpoint)), status)
    assert done == {markers.doc_key(uris[0]), markers.doc_key(uris[2])}  # not the shard's own marker
    assert failed == {markers.doc_key(uris[1]), markers.doc_key(uris[3])}
    assert [method for method, _ in watch.log] == ["GET"]  # one LIST, no HEAD per document


def test_a_marker_says_where_and_when_it_was_written():
    body = json.loads(markers.marker_bytes(uri="s3://b/ünï.pdf", attempts=2, outputs=["s3://o/x"]))
    assert body["uri"] == "s3://b/ünï.pdf" and body["attempts"] == 2 and body["outputs"] == ["s3://o/x"]
    assert body["host"] == socket.gethostname() and body["time"][:2] == "20"


def test_node_counts_are_read_back_from_the_object_name_alone():
    counts = {"documents": 12, "pages": 3400, "failed": 1, "seconds": 930, "state": "running"}
    uri = markers.node_stats_uri("s3://b/status", "ip-10-0-0-7/../x y", "1795690000-4242", counts)
    name = uri.removeprefix("s3://b/status/")
    assert name.startswith("_nodes/ip-10-0-0-7_.._x_y/") and name.count("/") == 3
    assert markers.parse_node_stats(name) == {"node": "ip-10-0-0-7_.._x_y", "started": 1795690000, "pid": 4242,
                                              **counts}
    assert markers.parse_node_stats("_nodes/a/b.json") is None
    assert markers.parse_node_stats("bucket/raw/a.pdf.done") is None
