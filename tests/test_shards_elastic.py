"""Elastic cloud shards end to end: several ``luigi RunShard`` processes (nodes) on a real moto
server sharing shards by claims, stealing work, and finishing the work of a node that was killed
or stalled past its lease."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.cloud import counting, markers, shard_plan
from tests.s3server import luigi_command
from tests.test_shards import get, keys, make_cfg

UNIT = 0.25  # seconds of engine time per unit of a document's cost

ENGINE = """\
import pathlib, re, sys, time
uri, pdf, outdir, log, node, unit = sys.argv[1:7]
cost = int(re.search(rb"%cost (\\d+)", pathlib.Path(pdf).read_bytes()).group(1))
def note(what):
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{what} {time.time():.3f} {node} {uri}\\n")
note("start")
time.sleep(cost * float(unit))
pathlib.Path(outdir, "result.txt").write_text(f"{uri} {node}")
note("end")
"""


def put_collection(client, bucket: str, costs: dict[int, list[int]], pages: int = 10) -> dict[str, int]:
    """Documents whose engine cost is the number in the file, the shard files, their summary and the
    page counts (every document has the same pages: balanced pages, uneven time); {uri: cost}."""
    cost_of, rows = {}, []
    for shard, shard_costs in costs.items():
        uris = []
        for i, cost in enumerate(shard_costs):
            key = f"raw/s{shard}-d{i}.pdf"
            client.put_object(Bucket=bucket, Key=key, Body=samples.text_pdf([key]) + f"%cost {cost}\n".encode())
            uri = f"s3://{bucket}/{key}"
            uris.append(uri)
            cost_of[uri] = cost
            rows.append({"key": uri, "size": 1, "pages": pages, "error": ""})
        client.put_object(Bucket=bucket, Key=f"manifests/shards/{shard_plan.shard_name(shard)}",
                          Body=shard_plan.shard_file_bytes(uris))
    client.put_object(Bucket=bucket, Key="pc.csv", Body=counting.csv_bytes(rows, counting.MASTER_COLUMNS))
    client.put_object(Bucket=bucket, Key="manifests/shards/shard_summary.json", Body=json.dumps(
        {"page_counts": f"s3://{bucket}/pc.csv", "shards": [{"shard": k} for k in costs]}).encode())
    return cost_of


class Nodes:
    """RunShard processes, each a node with its own name, config and output file."""

    def __init__(self, tmp_path: Path, endpoint: str, bucket: str, status: str = "status", **s3_values: object) -> None:
        self.tmp_path, self.endpoint, self.bucket, self.status = tmp_path, endpoint, bucket, status
        self.values = s3_values
        self.script, self.log = tmp_path / "engine.py", tmp_path / f"{status}-engine.log"
        self.script.write_text(ENGINE)
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, node: str, shard: int, *args: str) -> subprocess.Popen:
        folder = self.tmp_path / node
        folder.mkdir(exist_ok=True)
        command = f"{sys.executable} {self.script} {{uri}} {{input}} {{outdir}} {self.log} {node} {UNIT}"
        cfg = make_cfg(folder, self.endpoint, self.bucket, engine="command", command=command, node_name=node,
                       parallel_documents=1, document_attempts=1, status_prefix=f"s3://{self.bucket}/{self.status}",
                       **self.values)
        argv, env = luigi_command(cfg, "RunShard", "--shard", str(shard), *args)
        output = open(folder / "output.txt", "w")  # noqa: SIM115 (closed when the process is waited for)
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=folder)
        output.close()
        self.processes[node] = process
        return process

    def output(self, node: str) -> str:
        return (self.tmp_path / node / "output.txt").read_text()

    def wait(self, *names: str, timeout: float = 180) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for name in names or list(self.processes):
            try:
                codes[name] = self.processes[name].wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{name} did not finish: {self.output(name)[-3000:]}")
        return codes

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def events(self) -> list[tuple[str, float, str, str]]:
        """(start | end, time, node, uri) of every engine run."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [(w, float(t), n, u) for w, t, n, u in (line.split(" ", 3) for line in lines)]

    def until(self, condition, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.05)


@pytest.fixture
def nodes_factory(tmp_path, moto_endpoint, bucket):
    made: list[Nodes] = []

    def make(**values: object) -> Nodes:
        made.append(Nodes(tmp_path, moto_endpoint, bucket, **values))
        return made[-1]

    yield make
    for group in made:
        group.kill()


def done_node(client, bucket: str, status: str, uri: str) -> str:
    return json.loads(get(client, bucket, f"{status}/{markers.doc_key(uri)}.done"))["node"]


COSTS = {1: [8, 6, 5, 4, 3], 2: [3, 3, 2, 2, 1], 3: [2, 2, 1, 1, 1], 4: [2, 1, 1, 1, 1]}


@pytest.mark.slow
def test_three_stealing_nodes_over_four_shards_run_each_document_once_and_finish_together(
        s3_client, bucket, nodes_factory):
    cost = put_collection(s3_client, bucket, COSTS)
    biggest = max(cost.values()) * UNIT

    # The static plan on the same input: three nodes, the fourth shard after the second.
    static = nodes_factory(status="static")
    started = time.monotonic()
    static.start("node-a", 1)
    static.start("node-c", 3)
    static.start("node-b", 2)
    assert static.wait("node-b") == {"node-b": 0}
    static.start("node-b", 4)
    assert set(static.wait().values()) == {0}
    static_seconds = time.monotonic() - started

    elastic = nodes_factory(status="elastic", claim_lease_seconds=20)
    started = time.monotonic()
    for number, name in enumerate(("node-a", "node-b", "node-c"), start=1):
        elastic.start(name, number, "--steal")
    codes = elastic.wait()
    elastic_seconds = time.monotonic() - started
    assert codes == {"node-a": 0, "node-b": 0, "node-c": 0}, {n: elastic.output(n)[-2000:] for n in codes}
    spans = {name: max(t for _, t, _, _ in group.events()) - min(t for _, t, _, _ in group.events())
             for name, group in (("static", static), ("elastic", elastic))}
    print(f"\nstatic plan: {static_seconds:.1f} s ({spans['static']:.1f} s from the first document to the last), "
          f"elastic with stealing: {elastic_seconds:.1f} s ({spans['elastic']:.1f} s)")

    events = elastic.events()
    started_uris = [u for what, _, _, u in events if what == "start"]
    assert sorted(started_uris) == sorted(cost) and len(set(started_uris)) == len(cost)  # each exactly once
    assert sorted(u for what, _, _, u in events if what == "end") == sorted(cost)
    for uri in cost:
        ran_on = next(n for what, _, n, u in events if u == uri and what == "end")
        assert done_node(s3_client, bucket, "elastic", uri) == ran_on
    # Shard 4 had no node of its own: the others took all of it, and nobody sat idle.
    assert {n for _, _, n, u in events if "/s4-" in u} - {"node-a", "node-b", "node-c"} == set()
    last_end = {name: max(t for what, t, n, _ in events if n == name and what == "end") for name in codes}
    # within one document's time: its engine time and its S3 requests and start-up on a busy machine
    assert max(last_end.values()) - min(last_end.values()) <= biggest + 2.0, last_end
    status_keys = keys(s3_client, bucket, "elastic/")
    assert {f"elastic/_shards/shard_{k}.done" for k in COSTS} <= set(status_keys)
    assert not [k for k in status_keys if k.endswith(".claim")]


@pytest.mark.slow
def test_a_killed_node_s_document_and_shard_are_finished_by_the_others_after_its_lease(
        s3_client, bucket, nodes_factory):
    lease = 3.0
    cost = put_collection(s3_client, bucket, {1: [12, 2, 2], 2: [2, 2], 3: [1, 1]})
    elastic = nodes_factory(status="status", claim_lease_seconds=lease)
    victim = elastic.start("node-a", 1, "--steal")
    elastic.until(lambda: any(what == "start" and n == "node-a" for what, _, n, _ in elastic.events()),
                  "node-a to start its first document")
    for number, name in ((2, "node-b"), (3, "node-c")):
        elastic.start(name, number, "--steal")
    time.sleep(0.5)
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    victim.wait()
    codes = elastic.wait("node-b", "node-c")
    assert codes == {"node-b": 0, "node-c": 0}, {n: elastic.output(n)[-2000:] for n in codes}

    events = elastic.events()
    (lost_uri,) = [u for what, _, n, u in events if what == "start" and n == "node-a"]
    assert lost_uri == f"s3://{bucket}/raw/s1-d0.pdf"
    again = [t for what, t, n, u in events if what == "start" and u == lost_uri and n != "node-a"]
    assert len(again) == 1 and again[0] > killed_at
    # Taken over only once the dead node's lease had run out since its last renewal.
    (lost,) = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(lost_uri)}.done"))["lost_claims"]
    assert lost["node"] == "node-a" and "expired" in lost["outcome"]
    assert again[0] >= datetime.fromisoformat(lost["renewed"]).timestamp() + lease
    for uri in cost:
        assert [n for what, _, n, u in events if what == "end" and u == uri] == [done_node(s3_client, bucket,
                                                                                            "status", uri)]
    assert done_node(s3_client, bucket, "status", lost_uri) in ("node-b", "node-c")
    summary = json.loads(get(s3_client, bucket, "status/_shards/shard_1.done"))
    assert summary["done"] == 3 and summary["failed"] == []


@pytest.mark.slow
def test_a_stalled_node_whose_claim_was_taken_over_writes_no_done_marker(s3_client, bucket, nodes_factory):
    lease = 2.0
    put_collection(s3_client, bucket, {1: [20], 2: [1]})
    uri = f"s3://{bucket}/raw/s1-d0.pdf"
    claim_key = f"status/{markers.doc_key(uri)}.claim"
    elastic = nodes_factory(status="status", claim_lease_seconds=lease)
    stalled = elastic.start("node-a", 1)
    elastic.until(lambda: any(what == "start" and n == "node-a" for what, _, n, _ in elastic.events()),
                  "node-a to start its document")
    os.killpg(stalled.pid, signal.SIGSTOP)  # a long pause: the node and its command
    try:
        elastic.start("node-b", 2, "--steal")

        def taken_over() -> bool:
            try:
                return json.loads(get(s3_client, bucket, claim_key))["node"] == "node-b"
            except s3_client.exceptions.NoSuchKey:
                return False

        elastic.until(taken_over, "node-b to take the stale claim over")
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    codes = elastic.wait()
    assert codes == {"node-a": 0, "node-b": 0}, {n: elastic.output(n)[-2000:] for n in codes}
    assert done_node(s3_client, bucket, "status", uri) == "node-b"
    # node-a's command may have ended by itself after the pause; what it made was never uploaded
    assert [n for what, _, n, u in elastic.events() if what == "end" and u == uri].count("node-b") == 1
    assert f"claim of {uri} lost" in elastic.output("node-a")  # its lease ran out, or it found the new claim
    marker = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uri)}.done"))
    assert [c["node"] for c in marker["lost_claims"]] == ["node-a"]
    (output,) = marker["outputs"]
    assert get(s3_client, bucket, output.split("/", 3)[3]).decode() == f"{uri} node-b"


POISON_ENGINE = """\
import os, pathlib, signal, sys
uri, outdir = sys.argv[1:3]
if "poison" in uri:
    os.kill(os.getppid(), signal.SIGKILL)  # takes its node down, as an OOM kill or a driver crash would
pathlib.Path(outdir, "result.txt").write_text(uri)
"""


def test_a_document_that_kills_every_node_that_takes_it_is_marked_failed_with_its_history(
        tmp_path, moto_endpoint, s3_client, bucket):
    uris = [f"s3://{bucket}/raw/poison.pdf", f"s3://{bucket}/raw/good.pdf"]
    for uri in uris:
        s3_client.put_object(Bucket=bucket, Key=uri.split("/", 3)[3], Body=samples.text_pdf(["x"]))
    s3_client.put_object(Bucket=bucket, Key="manifests/shards/shard_1.txt", Body=shard_plan.shard_file_bytes(uris))
    script = tmp_path / "engine.py"
    script.write_text(POISON_ENGINE)
    cfg = make_cfg(tmp_path, moto_endpoint, bucket, engine="command", node_name="node-a", max_claim_attempts=2,
                   command=f"{sys.executable} {script} {{uri}} {{outdir}}", parallel_documents=1)
    argv, env = luigi_command(cfg, "RunShard", "--shard", "1")
    codes = [subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
                            start_new_session=True).returncode for _ in range(3)]
    assert codes[:2] == [-signal.SIGKILL, -signal.SIGKILL] and codes[2] == 0, codes
    failed = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[0])}.failed"))
    assert "claimed 2 times without an outcome" in failed["error"]
    assert [h["outcome"] for h in failed["history"]] == ["its process ended without an outcome"] * 2
    assert json.loads(get(s3_client, bucket, "status/_shards/shard_1.done"))["failed"] == [uris[0]]
    assert done_node(s3_client, bucket, "status", uris[1]) == "node-a"
    assert not [k for k in keys(s3_client, bucket, "status/") if k.endswith(".claim")]


@pytest.mark.slow
def test_more_nodes_than_shards_and_a_late_node_share_the_work_without_repeats(s3_client, bucket, nodes_factory):
    cost = put_collection(s3_client, bucket, {1: [3, 3, 2, 2, 1, 1], 2: [2, 2, 1, 1]})
    elastic = nodes_factory(status="status", claim_lease_seconds=20)
    elastic.start("node-a", 1, "--steal")
    elastic.start("node-b", 2, "--steal")
    elastic.start("node-c", 1, "--steal")  # a third node for two shards: the claims share shard 1
    elastic.until(lambda: any(what == "end" for what, *_ in elastic.events()), "a first document to finish")
    elastic.start("node-d", 2, "--steal")  # joins late, when its shard may already be done
    codes = elastic.wait()
    assert codes == dict.fromkeys(("node-a", "node-b", "node-c", "node-d"), 0), {
        n: elastic.output(n)[-2000:] for n in codes}
    events = elastic.events()
    assert sorted(u for what, *_, u in events if what == "start") == sorted(cost)  # each exactly once
    assert {n for what, _, n, _ in events if what == "end"} >= {"node-a", "node-b", "node-c"}
    for uri in cost:
        assert done_node(s3_client, bucket, "status", uri) in ("node-a", "node-b", "node-c", "node-d")
    assert {f"status/_shards/shard_{k}.done" for k in (1, 2)} <= set(keys(s3_client, bucket, "status/"))
