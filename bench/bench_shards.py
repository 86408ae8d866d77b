"""Static shards against elastic ones (claims and stealing) on the same uneven workload, 4 nodes.

    python bench/bench_shards.py [--documents 64] [--unit 0.08] [--nodes 4] [--quick]

Starts moto's server on 127.0.0.1 (or uses --endpoint) and runs pipeline.cloud.runner.run_shard in
one process per node, each with the per-document command engine; the command sleeps for its
document's cost. Documents are balanced into shards by pages (ShardManifest's plan), but pages are
not time: the first shard holds the scanned part of the collection (3x the seconds per page), the
second tables (1.5x), and each document varies by up to 50% more. Both runs process every
document once; the elastic one claims each and steals once its own shard is empty.

Printed: the makespan of each (from the start signal to the last node's end), their ratio, idle
node-time (each node's time between its last document's end and the makespan: nodes that wait for
the slowest), and the elastic makespan against the ideal: work / nodes + the longest document, work
being the engine time plus each document's S3 requests and command start-up as measured (also
printed against engine time alone). Targets: within 5% of the ideal, idle time cut by 75%.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENGINE = """\
import pathlib, re, sys, time
uri, pdf, outdir, log, node = sys.argv[1:6]
cost = float(re.search(rb"%cost ([0-9.]+)", pathlib.Path(pdf).read_bytes()).group(1))
started = time.time()
time.sleep(cost)
pathlib.Path(outdir, "result.txt").write_text(uri)
with open(log, "a", encoding="utf-8") as handle:
    handle.write(f"{node} {started:.4f} {time.time():.4f} {uri}\\n")
"""


def workload(documents: int, unit: float, shards: int, seed: int = 7) -> tuple[list[list[str]], dict[str, float]]:
    """(shards of document names, {name: seconds}): balanced by pages, uneven in time."""
    from pipeline.cloud import shard_plan

    rng = random.Random(seed)
    pages = {f"doc{i:04d}.pdf": rng.randint(2, 40) for i in range(documents)}
    plan = shard_plan.balance(pages, shards)
    factor = {0: 3.0, 1: 1.5}
    cost = {name: round(pages[name] * unit * factor.get(k, 1.0) * rng.uniform(1.0, 1.5), 3)
            for k, names in enumerate(plan) for name in names}
    return plan, cost


def node(endpoint: str, bucket: str, status: str, shard: int, uris: list[str], steal: bool, work: str,
         engine: str, log: str, go: multiprocessing.synchronize.Event) -> None:
    """One node: wait for the start signal, run its shard (stealing or not)."""
    from pipeline.cloud import runner, s3
    from pipeline.cloud.claims import Node

    name = f"node-{shard}"
    settings = runner.ShardSettings(
        shard=shard, status_prefix=f"s3://{bucket}/{status}", output_prefix=f"s3://{bucket}/{status}-out",
        work_dir=Path(work, status, name), engine="command", parallel=1, attempts=1,
        command=f"{sys.executable} {engine} {{uri}} {{input}} {{outdir}} {log} {name}", lease_seconds=30,
        steal=steal, shard_prefix=f"s3://{bucket}/shards", node=Node.here(name))
    storage = s3.Storage(s3.S3Settings(endpoint_url=endpoint))
    assert storage.client is not None  # connected before the start signal
    go.wait()
    runner.run_shard(storage, settings, uris)


def run(endpoint: str, bucket: str, status: str, plan: list[list[str]], steal: bool, work: Path) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    engine, log = work / "engine.py", work / f"{status}.log"
    engine.write_text(ENGINE)
    processes = [context.Process(target=node, args=(endpoint, bucket, status, k, [f"s3://{bucket}/{u}" for u in uris],
                                                     steal, str(work), str(engine), str(log), go))
                 for k, uris in enumerate(plan, start=1)]
    for process in processes:
        process.start()
    time.sleep(3)  # every node has imported and connected
    started = time.time()
    go.set()
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        raise SystemExit(f"{status}: a node failed (exit codes {[p.exitcode for p in processes]})")
    runs = [line.split(" ", 3) for line in log.read_text().splitlines()]
    ends = {n: max(float(e) for m, _, e, _ in runs if m == n) for n, _, _, _ in runs}
    makespan = max(ends.values()) - started
    busy = sum(float(e) - float(s) for _, s, e, _ in runs)
    nodes = {n: (sum(1 for m, *_ in runs if m == n), sum(float(e) - float(s) for m, s, e, _ in runs if m == n),
                 ends[n] - started) for n in sorted(ends)}
    # Idle: a node done with its last document while another still works. Work: everything before
    # that, the engine and each document's S3 requests and command start-up alike.
    worked = sum(end for _, _, end in nodes.values())
    return {"makespan": makespan, "busy": busy, "idle": makespan * len(plan) - worked, "work": worked,
            "runs": len(runs), "documents": len({u for _, _, _, u in runs}), "nodes": nodes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=64)
    # Per document a node spends ~0.1 s on S3 requests and the command's start (more on a busy
    # machine); documents of a few seconds keep that small, as minutes of OCR do in production.
    parser.add_argument("--unit", type=float, default=0.08, help="seconds of engine time per page (before factors)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="CI size: 16 documents, 0.06 s per page")
    parser.add_argument("--endpoint", default="", help="an S3-compatible endpoint; default: start moto's server")
    args = parser.parse_args()
    if args.quick:
        args.documents, args.unit = 16, 0.06

    import boto3

    from pipeline import samples
    from pipeline.cloud import counting, shard_plan
    from tests.s3server import FAKE_CREDENTIALS, start_moto_server, stop

    os.environ.update(FAKE_CREDENTIALS)
    server, endpoint = (None, args.endpoint) if args.endpoint else start_moto_server()
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        bucket = f"bench-shards-{os.getpid()}"
        client.create_bucket(Bucket=bucket)
        plan, cost = workload(args.documents, args.unit, args.nodes)
        body = samples.text_pdf(["page"])
        for name, seconds in cost.items():
            client.put_object(Bucket=bucket, Key=name, Body=body + f"%cost {seconds}\n".encode())
        rows = [{"key": f"s3://{bucket}/{n}", "size": 1, "pages": 1, "error": ""} for n in cost]
        client.put_object(Bucket=bucket, Key="pc.csv", Body=counting.csv_bytes(rows, counting.MASTER_COLUMNS))
        for k, names in enumerate(plan, start=1):
            client.put_object(Bucket=bucket, Key=f"shards/{shard_plan.shard_name(k)}",
                              Body=shard_plan.shard_file_bytes([f"s3://{bucket}/{n}" for n in names]))
        client.put_object(Bucket=bucket, Key="shards/shard_summary.json", Body=json.dumps(
            {"page_counts": f"s3://{bucket}/pc.csv", "shards": [{"shard": k} for k in range(1, args.nodes + 1)]}))
        with tempfile.TemporaryDirectory() as work:
            static = run(endpoint, bucket, "static", plan, False, Path(work))
            elastic = run(endpoint, bucket, "elastic", plan, True, Path(work))
    finally:
        if server is not None:
            stop(server)

    total, longest = sum(cost.values()), max(cost.values())
    overhead = (elastic["work"] - total) / args.documents  # per document, besides its engine time
    ideal = elastic["work"] / args.nodes + longest + overhead
    engine_ideal = total / args.nodes + longest
    per_shard = [sum(cost[n] for n in names) for names in plan]
    print(f"{args.documents} documents, {args.nodes} nodes, {total:.1f} s of engine time "
          f"(per shard: {', '.join(f'{s:.1f}' for s in per_shard)} s), longest document {longest:.2f} s")
    print(f"{'plan':<10} {'makespan s':>11} {'idle node-s':>12} {'runs':>6}")
    for label, result in (("static", static), ("elastic", elastic)):
        print(f"{label:<10} {result['makespan']:>11.2f} {result['idle']:>12.2f} {result['runs']:>6}")
    for label, result in (("static", static), ("elastic", elastic)):
        print(f"  {label}: " + "; ".join(f"{n} {d} documents, {b:.1f} s busy, ends at {e:.1f} s"
                                          for n, (d, b, e) in result["nodes"].items()))
    for result in (static, elastic):
        if result["runs"] != args.documents or result["documents"] != args.documents:
            print(f"ERROR: {result['runs']} engine runs for {args.documents} documents")
            return 1
    over = elastic["makespan"] / ideal - 1
    cut = 1 - elastic["idle"] / static["idle"] if static["idle"] > 0 else 0.0
    print(f"ratio static / elastic makespan: {static['makespan'] / elastic['makespan']:.2f}x")
    print(f"each document also took {overhead:.2f} s of S3 requests and command start-up on this machine")
    print(f"elastic vs ideal ({ideal:.2f} s = work / nodes + longest document, work counting that time): "
          f"{100 * over:+.1f}% (target within 5%): {'met' if over <= 0.05 else 'MISSED'}; against engine time "
          f"alone ({engine_ideal:.2f} s): {100 * (elastic['makespan'] / engine_ideal - 1):+.1f}%")
    print(f"idle node-time (nodes finished while another works) cut by {100 * cut:.0f}% (target 75%): "
          f"{'met' if cut >= 0.75 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
