"""cloud/claims: claims on documents by conditional writes on a real moto server (and a local
folder): one winner of a race, renewals, stale claims taken over, lost claims, S3 faults."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from botocore.exceptions import ClientError

from pipeline.cloud import s3
from pipeline.cloud.claims import ClaimLost, Claims, LeaseKeeper, Node
from tests.fault_proxy import FaultProxy
from tests.test_shards import get, keys


def storage_at(endpoint: str) -> s3.Storage:
    return s3.Storage(s3.S3Settings(endpoint_url=endpoint, max_attempts=5))


def claims_for(endpoint: str, bucket: str, node: str, lease: float = 60.0) -> Claims:
    return Claims(storage_at(endpoint), f"s3://{bucket}/status", Node.here(node), lease)


def test_two_nodes_racing_for_a_document_one_wins_the_other_gets_412(moto_endpoint, s3_client, bucket):
    uri = f"s3://{bucket}/raw/a.pdf"
    racers = [claims_for(moto_endpoint, bucket, f"node-{i}") for i in range(8)]
    start = threading.Barrier(len(racers))
    won: list[object] = [None] * len(racers)

    def race(i: int) -> None:
        start.wait()
        won[i] = racers[i].create(uri, shard=1)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [held for held in won if held is not None]
    assert len(winners) == 1
    body = json.loads(get(s3_client, bucket, "status/" + f"{bucket}/raw/a.pdf.claim"))
    assert body["node"] == winners[0].body["node"] and body["attempt"] == 1  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as caught:  # what the losers were answered
        s3_client.put_object(Bucket=bucket, Key=f"status/{bucket}/raw/a.pdf.claim", Body=b"{}", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_a_claim_taken_over_is_lost_by_its_holder_at_the_next_renewal(moto_endpoint, s3_client, bucket):
    uri = f"s3://{bucket}/raw/a.pdf"
    first, second = claims_for(moto_endpoint, bucket, "first", lease=1), claims_for(moto_endpoint, bucket, "second")
    held = first.create(uri, shard=1)
    assert held is not None
    first.renew(held)
    assert held.body["renewals"] == 1
    found = second.read(uri)
    assert found is not None and not found.stale()
    time.sleep(4.2)  # the lease (1 s) and the margin for the server's one-second clock
    found = second.read(uri)
    assert found is not None and found.stale() and found.body["node"] == "first"
    taken = second.take_over(found, shard=2)
    assert taken is not None and taken.attempt == 2
    assert [h["node"] for h in taken.body["history"]] == ["first"]
    assert "expired" in taken.body["history"][0]["outcome"]
    assert second.take_over(found, shard=2) is None  # the stale ETag is gone: a second taker loses
    with pytest.raises(ClaimLost, match="claim of .*a.pdf lost"):
        first.renew(held)
    assert held.lost.is_set()
    first.release(held)  # not ours any more: left alone
    assert json.loads(get(s3_client, bucket, f"status/{bucket}/raw/a.pdf.claim"))["node"] == "second"
    second.release(taken)
    assert not keys(s3_client, bucket, "status/")


def test_a_fresh_claim_is_not_stale_and_cannot_be_taken_over(moto_endpoint, bucket):
    uri = f"s3://{bucket}/raw/a.pdf"
    first, second = claims_for(moto_endpoint, bucket, "first"), claims_for(moto_endpoint, bucket, "second")
    assert first.create(uri, shard=1) is not None
    assert second.create(uri, shard=1) is None
    found = second.read(uri)
    assert found is not None and not found.stale() and found.age < 5


def test_the_keeper_renews_while_the_document_runs(moto_endpoint, s3_client, bucket):
    uri = f"s3://{bucket}/raw/a.pdf"
    claims = claims_for(moto_endpoint, bucket, "node", lease=1.5)
    held = claims.create(uri, shard=1)
    assert held is not None
    with LeaseKeeper(claims, held):
        time.sleep(4)
        found = claims.read(uri)
        assert found is not None and not found.stale()
    assert held.body["renewals"] >= 4 and not held.lost.is_set()
    held.check(1.5)
    time.sleep(1.6)  # no keeper any more: the lease runs out
    with pytest.raises(ClaimLost, match="not renewed within its lease"):
        held.check(1.5)


def test_a_claim_of_this_node_whose_process_ended_is_known_without_waiting():
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = Node.here("node-a")
    body = {**here.fields(), "pid": int(ended.stdout)}
    assert here.ended(body)
    assert not Node.here("node-b").ended(body)  # another node: its lease decides
    assert not here.ended({**here.fields(), "pid": os.getppid()})  # still running
    assert not here.ended(here.fields())  # this very process


def test_claims_retry_server_errors_and_answers_lost_after_the_write(moto_endpoint, s3_client, bucket):
    uri = f"s3://{bucket}/raw/a.pdf"
    puts = {"n": 0}

    def rule(n: int, method: str, path: str) -> int | str | None:
        if method != "PUT":
            return None
        puts["n"] += 1
        return {1: 503, 2: "drop", 3: "swallow", 5: "swallow", 9: "swallow"}.get(puts["n"])

    with FaultProxy(moto_endpoint, rule) as flaky:
        claims = claims_for(flaky.endpoint, bucket, "node")
        storage = storage_at(flaky.endpoint)
        held = claims.create(uri, shard=1)  # 503, dropped, stored but unanswered, then 412: ours all the same
        assert held is not None
        claims.renew(held)  # stored but unanswered, then 412 to the retry
        claims.renew(held)
        assert json.loads(get(s3_client, bucket, f"status/{bucket}/raw/a.pdf.claim"))["renewals"] == 2
        assert held.body["renewals"] == 2
        assert storage.create(f"s3://{bucket}/status/x.done", b"done\n")
        assert storage.create(f"s3://{bucket}/status/y.done", b"done\n")  # stored but unanswered, then 412
        assert not storage.create(f"s3://{bucket}/status/x.done", b"someone else\n")
    assert {action for action, _, _ in flaky.injected} == {"503", "drop", "swallow"}
    assert get(s3_client, bucket, "status/y.done") == b"done\n"


def test_a_keeper_whose_renewals_s3_does_not_answer_loses_the_claim_at_the_end_of_its_lease(
        moto_endpoint, bucket):
    uri = f"s3://{bucket}/raw/a.pdf"
    down = threading.Event()

    def rule(n: int, method: str, path: str) -> str | None:
        return "drop" if down.is_set() else None

    with FaultProxy(moto_endpoint, rule) as flaky:
        claims = Claims(s3.Storage(s3.S3Settings(endpoint_url=flaky.endpoint, max_attempts=2)),
                        f"s3://{bucket}/status", Node.here("node"), 3.0)
        down.set()
        with pytest.raises(s3.S3Error, match=r"GET s3://.*a\.pdf\.claim failed after all attempts") as raised:
            claims.read(uri)
        assert raised.value.unavailable
        down.clear()
        held = claims.create(uri, shard=1)
        assert held is not None
        down.set()
        lost: list[str] = []
        with LeaseKeeper(claims, held, on_lost=lambda: lost.append(held.reason)):
            time.sleep(5)  # the renewals fail as S3Error and are tried again until the lease is over
        assert lost == [f"claim of {uri} lost: not renewed within its lease of 3 s"]
        assert [a for a, method, _ in flaky.injected if method == "PUT"]


def test_claims_on_a_local_status_folder(tmp_path):
    uri = "/data/raw/a.pdf"
    first = Claims(s3.Storage(), str(tmp_path / "status"), Node.here("first"), 1)
    second = Claims(s3.Storage(), str(tmp_path / "status"), Node.here("second"), 60)
    held = first.create(uri, shard=1)
    assert held is not None and second.create(uri, shard=1) is None
    first.renew(held)
    time.sleep(3.5)
    found = second.read(uri)
    assert found is not None and found.stale()
    taken = second.take_over(found, shard=1)
    assert taken is not None and taken.attempt == 2
    with pytest.raises(ClaimLost):
        first.renew(held)
    second.release(taken)
    assert second.read(uri) is None
    assert s3.Storage().create(str(tmp_path / "status" / "x.done"), b"a")
    assert not s3.Storage().create(str(tmp_path / "status" / "x.done"), b"b")
