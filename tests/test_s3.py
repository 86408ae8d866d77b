"""pipeline.s3 against a real moto server through boto3: client, storage, ranged reads, retries."""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import luigi
import pytest
from pypdf import PdfReader

from pipeline import pdf, samples
from pipeline.cloud import counting
from pipeline.cloud.s3 import (
    Listed,
    MarkerTarget,
    RangedSource,
    S3Error,
    S3Settings,
    Storage,
    folder,
    get_client,
    inside,
    iter_download_items,
    local_name,
)
from tests.fault_proxy import FaultProxy, answer_status
from tests.s3server import bad_startxref, noise_pdf, run_luigi, write_luigi_cfg


def storage_at(endpoint: str, **settings) -> Storage:
    return Storage(S3Settings(endpoint_url=endpoint, **settings))


def test_one_client_per_process_shared_by_threads(moto_endpoint, s3_env):
    settings = S3Settings(endpoint_url=moto_endpoint, max_pool_connections=48, retry_mode="adaptive", max_attempts=6)
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: get_client(settings), range(64)))
    assert all(c is clients[0] for c in clients)
    config = clients[0].meta.config
    assert config.max_pool_connections == 48
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 6}


def test_settings_come_from_luigi_cfg_with_the_pool_raised_to_the_workers():
    config = luigi.configuration.get_config()
    config.set("s3", "endpoint_url", "http://127.0.0.1:9")
    config.set("s3", "max_pool_connections", "16")
    config.set("s3", "retry_mode", "adaptive")
    try:
        assert S3Settings.from_config(pool=64) == S3Settings(
            endpoint_url="http://127.0.0.1:9", max_pool_connections=64, retry_mode="adaptive")
        assert S3Settings.from_config().max_pool_connections == 16
    finally:
        config.remove_section("s3")


def test_ranged_reads_count_like_a_full_parse_and_fetch_little(moto_endpoint, s3_client, bucket):
    docs = {
        "scan big.pdf": noise_pdf(3, seed=1),
        "many pages.pdf": samples.blank_pdf(3000),
        "text.pdf": samples.text_pdf([f"page {i}" for i in range(7)]),
    }
    client = storage_at(moto_endpoint).client
    for key, data in docs.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
        source = RangedSource(client, bucket, key, len(data))
        result = pdf.count_source(source)
        assert result.pages == len(PdfReader(io.BytesIO(data)).pages)
        assert result.method == "count"  # the fast path: no fetch of the whole object for a parse
        if len(data) > 1_000_000:
            assert source.bytes_fetched < len(data) / 100
            assert source.requests <= 6


def test_block_cache_serves_repeated_and_neighbouring_reads(moto_endpoint, s3_client, bucket):
    data = bytes(range(256)) * 100
    s3_client.put_object(Bucket=bucket, Key="blob", Body=data)
    source = RangedSource(storage_at(moto_endpoint).client, bucket, "blob", len(data), block_size=1024)
    assert source.read_at(1000, 100) == data[1000:1100]
    assert (source.requests, source.bytes_fetched) == (1, 2048)
    assert source.read_at(1500, 400) == data[1500:1900]
    assert source.read_at(len(data) - 10, 100) == data[-10:]
    assert source.read_at(len(data), 5) == b""
    assert source.requests == 2


def test_a_damaged_object_is_fetched_whole_once(moto_endpoint, s3_client, bucket):
    data = bad_startxref(samples.blank_pdf(800))
    s3_client.put_object(Bucket=bucket, Key="damaged.pdf", Body=data)
    source = RangedSource(storage_at(moto_endpoint).client, bucket, "damaged.pdf", len(data))
    assert pdf.count_source(source) == pdf.PageCount(800, "parse")
    assert source.bytes_fetched == len(data)
    assert source.requests <= 8


def wire_log(client) -> list[int]:
    """Content-Length of every GetObject response the client receives, as the server sent them."""
    sizes: list[int] = []
    client.meta.events.register(
        "after-call.s3.GetObject",
        lambda http_response, **_: sizes.append(int(http_response.headers["content-length"])))
    return sizes


def test_scattered_reads_then_a_full_read_fetch_each_byte_once(moto_endpoint, s3_client, bucket):
    data = bytes(range(256)) * 400
    s3_client.put_object(Bucket=bucket, Key="blob", Body=data)
    wire = wire_log(s3_client)
    source = RangedSource(s3_client, bucket, "blob", len(data), block_size=1024, budget=4096)
    assert source.read_at(10 * 1024 + 5, 10) == data[10 * 1024 + 5:10 * 1024 + 15]
    assert source.read_at(50 * 1024, 1500) == data[50 * 1024:50 * 1024 + 1500]
    assert source.read_at(0, len(data)) == data  # past the budget: the gaps only
    assert source.read_at(77, 5000) == data[77:5077]
    assert sum(wire) == source.bytes_fetched == len(data)
    assert len(wire) == source.requests == 2 + 3  # the two reads, then the three gaps around them


@pytest.mark.parametrize("damage", ["startxref", "junk-before-header", "html"])
def test_a_damaged_object_is_fetched_at_most_once(moto_endpoint, s3_client, bucket, damage):
    good = samples.blank_pdf(800)
    data = {
        "startxref": bad_startxref(good),  # pypdf reads it
        "junk-before-header": b"x" * 3000 + b"\n" + good,  # pypdf fails, pdfinfo reads a temp copy
        "html": b"<html>" + b"<p>not found</p>" * 9000 + b"</html>",  # every reader fails
    }[damage]
    s3_client.put_object(Bucket=bucket, Key="damaged.pdf", Body=data)
    wire = wire_log(s3_client)
    source = RangedSource(s3_client, bucket, "damaged.pdf", len(data))
    if damage == "html":
        with pytest.raises(pdf.PdfError) as caught:
            pdf.count_source(source)
        assert caught.value.reason == "not_a_pdf"
    else:
        assert pdf.count_source(source).pages == 800
    assert sum(wire) == source.bytes_fetched <= len(data)


def test_storage_round_trip_on_s3_and_local(moto_endpoint, bucket, tmp_path):
    storage = storage_at(moto_endpoint)
    for base in (f"s3://{bucket}/data", str(tmp_path / "data")):
        storage.write_bytes(folder(base).rstrip("/") + "/a b/ünï.txt", b"1")
        storage.write_bytes(base + "/c.txt", b"22")
        storage.write_bytes(base + "2/other.txt", b"3")
        assert storage.read_bytes(base + "/c.txt") == b"22"
        assert storage.read_optional(base + "/missing") is None
        assert storage.exists(base + "/c.txt") and not storage.exists(base + "/missing")
        assert [(i.name, i.size) for i in storage.list(folder(base))] == [("a b/ünï.txt", 1), ("c.txt", 2)]
        storage.delete(base + "/c.txt")
        assert storage.names(folder(base)) == {"a b/ünï.txt"}


@pytest.mark.slow
def test_marker_target_is_one_head_and_many_markers_one_list_per_thousand(moto_endpoint, s3_client, bucket):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3_client.put_object(Bucket=bucket, Key=f"status/m{i:05d}.done", Body=b""),
                      range(1001)))
    with FaultProxy(moto_endpoint) as proxy:
        storage = storage_at(proxy.endpoint, connect_timeout=9.5)
        assert MarkerTarget(f"s3://{bucket}/status/m00007.done", storage).exists()
        assert not MarkerTarget(f"s3://{bucket}/status/nope.done", storage).exists()
        assert [method for method, _ in proxy.log] == ["HEAD", "HEAD"]
        proxy.log.clear()
        assert len(storage.names(f"s3://{bucket}/status/")) == 1001
        assert [method for method, _ in proxy.log] == ["GET", "GET"]


@pytest.mark.parametrize("key", [
    "raw/plain.pdf", "raw/with space.pdf", "raw/ünïcödé 書.pdf", "raw/../../etc/passwd.pdf", "/leading.pdf",
    "raw/..", "raw/", ".hidden.pdf", "a\x00b.pdf", "raw/" + "x" * 300 + ".pdf",
])
def test_keys_map_to_safe_local_names(tmp_path, key):
    name = local_name(key)
    assert name.endswith(".pdf") and "/" not in name and not name.startswith(".") and len(name) < 120
    assert name.replace(".pdf", "").replace("-", "").replace("_", "").replace(".", "").isalnum()
    assert inside(tmp_path, "input", name).parent == tmp_path / "input"
    assert local_name(key) == name


def test_distinct_keys_keep_distinct_local_names():
    assert local_name("a/x y.pdf") != local_name("a/x_y.pdf")
    assert local_name("raw/plain.pdf") == "plain.pdf"


def test_inside_refuses_paths_out_of_the_work_folder(tmp_path):
    for parts in (("..", "x"), ("/etc/passwd",), ("a", "..", "..", "b")):
        with pytest.raises(ValueError):
            inside(tmp_path / "work", *parts)


def test_server_errors_are_retried(moto_endpoint, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"payload")
    with FaultProxy(moto_endpoint, answer_status(503, lambda n: n < 2)) as proxy:
        storage = storage_at(proxy.endpoint, max_attempts=4)
        assert storage.read_bytes(f"s3://{bucket}/k") == b"payload"
    assert proxy.failed == 2 and proxy.requests == 3


def test_a_server_that_keeps_failing_gives_a_clear_error(moto_endpoint, bucket):
    with FaultProxy(moto_endpoint, answer_status(500, lambda n: True)) as proxy:
        storage = storage_at(proxy.endpoint, max_attempts=3)
        with pytest.raises(S3Error) as caught:
            storage.read_bytes(f"s3://{bucket}/k")
        with pytest.raises(S3Error):
            counting.count_document(storage, Listed(f"s3://{bucket}/k", "k", 5000))
    message = str(caught.value)
    assert f"GET s3://{bucket}/k failed after 3 attempts" in message and "rerun" in message
    assert proxy.requests == 6


def test_secrets_never_reach_the_logs(moto_endpoint, bucket, s3_client, tmp_path):
    s3_client.put_object(Bucket=bucket, Key="raw/a.pdf", Body=samples.text_pdf(["a"]))
    cfg = write_luigi_cfg(tmp_path / "luigi.cfg",
                          {"core": {"log_level": "DEBUG"}, "s3": {"endpoint_url": moto_endpoint}})
    secrets = {"AWS_SECRET_ACCESS_KEY": "sEcReT-Key-0123456789", "AWS_SESSION_TOKEN": "SeSsIoN-Token-9876543210"}
    result = run_luigi(cfg, "CountPages", "--source", f"s3://{bucket}/raw/", "--output", str(tmp_path / "pc.csv"),
                       env=secrets)
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "pc.csv").read_text().count("\n") == 2
    for secret in secrets.values():
        assert secret not in result.stdout


@pytest.fixture
def s3_endpoint_in_config(moto_endpoint):
    """[s3] endpoint_url = the moto server, in this process's Luigi configuration, for the test."""
    config = luigi.configuration.get_config()
    if not config.has_section("s3"):
        config.add_section("s3")
    before = config.get("s3", "endpoint_url", None)
    config.set("s3", "endpoint_url", moto_endpoint)
    yield moto_endpoint
    if before is None:
        config.remove_option("s3", "endpoint_url")
    else:
        config.set("s3", "endpoint_url", before)


def test_an_s3_prefix_downloads_through_the_download_stage(s3_endpoint_in_config, s3_client, bucket, tmp_path):
    from pipeline.layout import Layout
    from pipeline.stages import download

    s3_client.put_object(Bucket=bucket, Key="raw/doc.pdf", Body=samples.text_pdf(["a", "b"]))
    layout = Layout(tmp_path / "data")
    summary = download.download_all(layout, download.iter_source(f"s3://{bucket}/raw"), workers=1,
                                    max_waiting=10, waiting_now=0, min_free_gb=0)
    assert (summary.fetched, summary.failed) == (1, 0)
    meta = json.loads(layout.downloaded_meta("doc").read_text())
    assert (meta["source"], meta["pages"]) == (f"s3://{bucket}/raw/doc.pdf", 2)
    assert layout.downloaded_pdf("doc").read_bytes() == samples.text_pdf(["a", "b"])


def test_download_items_of_an_s3_prefix(moto_endpoint, s3_client, bucket, tmp_path):
    from pipeline.layout import InvalidIdentifier

    for key in ("raw/a/doc one.pdf", "raw/b.PDF", "raw/.hidden.pdf", "raw/notes.txt", "rawer/x.pdf"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    items = list(iter_download_items(f"s3://{bucket}/raw", storage_at(moto_endpoint)))
    good = [i for i in items if not isinstance(i, InvalidIdentifier)]
    assert [(i.identifier, i.uri) for i in good] == [("doc one", f"s3://{bucket}/raw/a/doc one.pdf"),
                                                     ("b", f"s3://{bucket}/raw/b.PDF")]
    assert len(items) == 3 and isinstance(items[0], InvalidIdentifier)
    good[0].fetch(tmp_path / "doc.pdf")
    assert (tmp_path / "doc.pdf").read_bytes() == b"raw/a/doc one.pdf"
