"""S3 answering 5xx, dropping connections, cutting answers short and losing writes, during
CountPages and RunShard: retried; an outage longer than the retries fails the run clearly without
blaming any document; a rerun ends where an undisturbed run ends; an upload that never arrived is
redone, never trusted."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import samples
from pipeline.cloud import markers, s3
from tests.fault_proxy import FaultProxy
from tests.s3server import run_luigi
from tests.test_shards import get, keys, make_cfg, put_shard, upload

FAULTS = (503, "cut", "drop", 500)


class EveryFourth:
    """One request in four fails, with each kind of fault in turn (an answer is cut short only where
    it has a body, a GET: a cut waits for the next GET while the other kinds go on)."""

    def __init__(self) -> None:
        self.order = list(FAULTS)

    def __call__(self, n: int, method: str, path: str):
        if n % 4 != 1:
            return None
        fault = next(f for f in self.order if method == "GET" or f != "cut")
        self.order.remove(fault)
        self.order.append(fault)
        return fault


class Outage:
    """Every request answers 503 from the moment ``starts(method, path)`` first holds, for ``length``
    requests (0: until the end)."""

    def __init__(self, starts, length: int = 0) -> None:
        self.starts, self.length, self.first = starts, length, None

    def __call__(self, n: int, method: str, path: str):
        if self.first is None and self.starts(method, path):
            self.first = n + 1  # the triggering request itself goes through
        if self.first is not None and n >= self.first and (not self.length or n < self.first + self.length):
            return 503
        return None


def documents(count: int) -> dict[str, bytes]:
    return {f"raw/doc {i:02d}.pdf": samples.text_pdf([f"Document {i}, page {p}." for p in range(i % 3 + 1)])
            for i in range(count)}


# --- CountPages ---------------------------------------------------------------------------------------

def count_args(bucket: str, output: str) -> tuple[str, ...]:
    return ("CountPages", "--source", f"s3://{bucket}/raw/", "--output", f"s3://{bucket}/{output}",
            "--max-workers", "2", "--chunk-size", "2")


def test_count_pages_rides_out_5xx_drops_and_cut_answers(tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, documents(8))
    assert run_luigi(make_cfg(tmp_path, moto_endpoint), *count_args(bucket, "undisturbed.csv")).returncode == 0

    with FaultProxy(moto_endpoint, EveryFourth()) as proxy:
        result = run_luigi(make_cfg(tmp_path, proxy.endpoint, max_attempts=5), *count_args(bucket, "faulted.csv"))

    assert result.returncode == 0, result.stdout[-3000:]
    assert {action for action, _, _ in proxy.injected} == {str(f) for f in FAULTS}
    assert get(s3_client, bucket, "faulted.csv") == get(s3_client, bucket, "undisturbed.csv")


def test_count_pages_outage_fails_clearly_and_a_rerun_resumes(tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, documents(8))
    assert run_luigi(make_cfg(tmp_path, moto_endpoint), *count_args(bucket, "undisturbed.csv")).returncode == 0
    outage = Outage(lambda method, path: method == "PUT" and "/part_000000002_" in path)

    with FaultProxy(moto_endpoint, outage) as down:
        failed = run_luigi(make_cfg(tmp_path, down.endpoint, max_attempts=3), *count_args(bucket, "pc.csv"))

    assert failed.returncode != 0 and down.injected
    assert "failed after 3 attempts" in failed.stdout and "then rerun" in failed.stdout
    parts = {k: v["LastModified"] for k, v in keys(s3_client, bucket, "pc_parts/").items() if "/part_" in k}
    assert len(parts) == 2 and "pc.csv" not in keys(s3_client, bucket, "")

    with FaultProxy(moto_endpoint) as healthy:
        assert run_luigi(make_cfg(tmp_path, healthy.endpoint), *count_args(bucket, "pc.csv")).returncode == 0
    assert get(s3_client, bucket, "pc.csv") == get(s3_client, bucket, "undisturbed.csv")
    after = keys(s3_client, bucket, "pc_parts/")
    assert all(after[k]["LastModified"] == when for k, when in parts.items())  # kept, not counted again
    fetched = {path.split("?")[0] for method, path in healthy.log if method == "GET"}
    assert not any("/raw/doc 00.pdf".replace(" ", "%20") in p or "/raw/doc 00.pdf" in p for p in fetched)


# --- RunShard -----------------------------------------------------------------------------------------

def shard_cfg(tmp_path: Path, endpoint: str, bucket: str, run: str, **values: object) -> Path:
    values = {"engine": "text", "parallel_documents": 2, "document_attempts": 1, **values}
    return make_cfg(tmp_path, endpoint, bucket, status_prefix=f"s3://{bucket}/{run}/status",
                    output_prefix=f"s3://{bucket}/{run}/outputs", **values)


def shard_texts(client, bucket: str, run: str, uris: list[str]) -> dict[str, str]:
    """uri -> text of the record its .done marker points at (every document must have one)."""
    texts = {}
    for uri in uris:
        marker = json.loads(get(client, bucket, f"{run}/status/{markers.doc_key(uri)}.done"))
        (output,) = marker["outputs"]
        (line,) = get(client, bucket, s3.split(output)[1]).decode("utf-8").splitlines()
        texts[uri] = json.loads(line)["text"]
    return texts


def marker_objects(client, bucket: str, run: str) -> dict[str, dict]:
    """The markers under the run's status prefix (not the nodes' statistics under _nodes/)."""
    return {k: v for k, v in keys(client, bucket, f"{run}/status/").items() if "/status/_nodes/" not in k}


def setup_shard(tmp_path, moto_endpoint, s3_client, bucket, count: int = 6) -> tuple[list[str], dict[str, str]]:
    """Upload documents and shard 1; returns the URIs and the texts of an undisturbed run."""
    docs = documents(count)
    upload(s3_client, bucket, docs)
    uris = [f"s3://{bucket}/{k}" for k in docs]
    put_shard(s3_client, bucket, 1, uris)
    result = run_luigi(shard_cfg(tmp_path, moto_endpoint, bucket, "undisturbed"), "RunShard", "--shard", "1")
    assert result.returncode == 0, result.stdout[-3000:]
    return uris, shard_texts(s3_client, bucket, "undisturbed", uris)


def assert_shard_converged(tmp_path, client, bucket: str, run: str, uris: list[str], expected: dict[str, str]) -> None:
    status = marker_objects(client, bucket, run)
    assert sorted(status) == sorted([f"{run}/status/{markers.doc_key(u)}.done" for u in uris]
                                    + [f"{run}/status/_shards/shard_1.done"])
    assert shard_texts(client, bucket, run, uris) == expected
    assert json.loads(get(client, bucket, f"{run}/status/_shards/shard_1.done"))["failed"] == []
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


def test_run_shard_rides_out_5xx_drops_and_cut_answers(tmp_path, moto_endpoint, s3_client, bucket):
    uris, expected = setup_shard(tmp_path, moto_endpoint, s3_client, bucket)

    with FaultProxy(moto_endpoint, EveryFourth()) as proxy:
        result = run_luigi(shard_cfg(tmp_path, proxy.endpoint, bucket, "faulted", max_attempts=5),
                           "RunShard", "--shard", "1")

    assert result.returncode == 0, result.stdout[-3000:]
    assert {action for action, _, _ in proxy.injected} == {str(f) for f in FAULTS}
    assert_shard_converged(tmp_path, s3_client, bucket, "faulted", uris, expected)


def test_run_shard_outage_fails_clearly_blames_no_document_and_a_rerun_converges(
        tmp_path, moto_endpoint, s3_client, bucket):
    uris, expected = setup_shard(tmp_path, moto_endpoint, s3_client, bucket)
    # Long enough to exhaust the retries of one request (the download of a document), then over.
    outage = Outage(lambda method, path: method == "HEAD" and path.endswith("/raw/doc%2003.pdf"), length=3)

    with FaultProxy(moto_endpoint, outage) as down:
        failed = run_luigi(shard_cfg(tmp_path, down.endpoint, bucket, "outage", max_attempts=3,
                                     parallel_documents=1), "RunShard", "--shard", "1")

    assert failed.returncode != 0 and len(down.injected) == 3
    assert "failed after 3 attempts" in failed.stdout and "then rerun" in failed.stdout, failed.stdout[-3000:]
    before = marker_objects(s3_client, bucket, "outage")
    assert before and all(k.endswith(".pdf.done") for k in before)  # no .failed: S3, not a document, failed

    with FaultProxy(moto_endpoint) as healthy:
        result = run_luigi(shard_cfg(tmp_path, healthy.endpoint, bucket, "outage"), "RunShard", "--shard", "1")
    assert result.returncode == 0, result.stdout[-3000:]
    assert_shard_converged(tmp_path, s3_client, bucket, "outage", uris, expected)
    after = marker_objects(s3_client, bucket, "outage")
    assert all(after[k]["LastModified"] == v["LastModified"] for k, v in before.items())  # not run twice


def test_an_upload_that_never_arrived_is_redone_not_trusted(tmp_path, moto_endpoint, s3_client, bucket):
    uris, expected = setup_shard(tmp_path, moto_endpoint, s3_client, bucket)
    lost = markers.output_uri(f"s3://{bucket}/lost/outputs", uris[2])

    def lose_one_output(n: int, method: str, path: str):
        return "lose" if method == "PUT" and f"/{s3.split(lost)[1]}/".replace(" ", "%20") in path else None

    with FaultProxy(moto_endpoint, lose_one_output) as proxy:
        failed = run_luigi(shard_cfg(tmp_path, proxy.endpoint, bucket, "lost"), "RunShard", "--shard", "1")

    assert [m for _, m, _ in proxy.injected] == ["PUT"]
    assert failed.returncode != 0
    assert "outputs of 1 documents are not in storage" in failed.stdout and uris[2] in failed.stdout
    assert f"lost/status/{markers.doc_key(uris[2])}.done" not in marker_objects(s3_client, bucket, "lost")

    result = run_luigi(shard_cfg(tmp_path, moto_endpoint, bucket, "lost"), "RunShard", "--shard", "1")
    assert result.returncode == 0, result.stdout[-3000:]
    assert_shard_converged(tmp_path, s3_client, bucket, "lost", uris, expected)


def test_a_done_marker_whose_outputs_are_gone_is_redone_on_the_next_run(tmp_path, moto_endpoint, s3_client, bucket):
    uris, expected = setup_shard(tmp_path, moto_endpoint, s3_client, bucket)
    # As if the run had been killed before the shard's marker, and one output then went missing.
    s3_client.delete_object(Bucket=bucket, Key="undisturbed/status/_shards/shard_1.done")
    marker = json.loads(get(s3_client, bucket, f"undisturbed/status/{markers.doc_key(uris[4])}.done"))
    s3_client.delete_object(Bucket=bucket, Key=s3.split(marker["outputs"][0])[1])
    before = marker_objects(s3_client, bucket, "undisturbed")
    read_once: set[str] = set()

    def cut_first_reads(n: int, method: str, path: str):  # the shard file and each marker read
        if method == "GET" and path.endswith((".txt", ".done")) and path not in read_once:
            read_once.add(path)
            return "cut"
        return None

    with FaultProxy(moto_endpoint, cut_first_reads) as proxy:
        result = run_luigi(shard_cfg(tmp_path, proxy.endpoint, bucket, "undisturbed"), "RunShard", "--shard", "1")

    assert result.returncode == 0, result.stdout[-3000:]
    assert len(proxy.injected) == 1 + len(uris)
    assert "1 documents had a .done marker but not all its outputs" in result.stdout
    assert_shard_converged(tmp_path, s3_client, bucket, "undisturbed", uris, expected)
    after = marker_objects(s3_client, bucket, "undisturbed")
    redone = f"undisturbed/status/{markers.doc_key(uris[4])}.done"
    assert after[redone]["LastModified"] >= before[redone]["LastModified"]
    assert all(after[k]["LastModified"] == v["LastModified"] for k, v in before.items() if k != redone)
    assert json.loads(get(s3_client, bucket, redone))["attempts"] == 1
