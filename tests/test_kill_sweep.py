"""SIGKILL sweep: the pipeline killed at named instants of every stage, then rerun, loses nothing.

Each kill lands deterministically: the run is started with PIPELINE_PAUSE_AT (pipeline/faults.py),
the process reaching that point stops itself, the live tree is checked, and then exactly one of
these is SIGKILLed:
    luigi   the luigi process alone (a chunk job it was waiting for runs on as an orphan)
    group   the whole process group (a machine crash)
    paused  only the process that reached the point (a chunk job dying under a live luigi)
Kills come in chains on one base_dir, so each kill after the first lands in the recovery from
the one before. After the chain a clean rerun must converge to what an undisturbed run produced
(tests/invariants.py), and a second rerun must change no byte.

Without the slow marker: the reduced sweep (chains over every file stage, RunShard, CountPages).
With it: more chains, OCRBatch on the dev SLURM cluster, and the trace-driven sweep over a whole
ProcessAll (KILL_SWEEP_STEP=1 for every point).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import faults, samples
from pipeline.cloud import counting, shard_plan

from . import invariants
from .conftest import FULL_CAMPAIGN, Site, luigi_executable, snapshot, write_config
from .s3server import RETCODES, luigi_command, run_luigi, write_luigi_cfg
from .test_slurm_client import cluster  # noqa: F401  (the fixture)

MODES = ("luigi", "group", "paused")


@dataclass(frozen=True)
class Kill:
    """Stop at the ``n``-th point whose "<point> <detail>" matches ``pattern``, then kill by ``mode``."""

    stage: str
    pattern: str
    n: int = 1
    mode: str = "group"

    @property
    def spec(self) -> str:
        return f"{self.pattern}:{self.n}"


# --- the collection and its sites ------------------------------------------------------------------

def make_collection(folder: Path) -> None:
    """Six born-digital documents (1-3 pages: three chunks of at most 4 pages) and two broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (folder / f"doc {i}.pdf").write_bytes(samples.text_pdf([f"Document {i} page {p} ledger"
                                                                for p in range(i % 3 + 1)]))
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "cut.pdf").write_bytes(samples.text_pdf(["x"] * 3)[:500])


def new_site(root: Path, incoming: Path, **extra: dict[str, object]) -> Site:
    root.mkdir(parents=True)
    config = root / "luigi.cfg"
    # One chunk and one document at a time: the order of points, and so each kill, is reproducible.
    sections: dict[str, dict[str, object]] = {
        # Luigi's pid lock is per command line; other runs of the same command on this machine
        # must not make a kill run exit "already running".
        "core": {"autoload_range": "false", "lock_pid_dir": root / "locks"},
        "retcode": RETCODES,
        "pipeline": {"base_dir": root / "data", "workers": 1},
        "download": {"source": incoming},
        "ocr": {"executor": "local", "engine": "text", "pages_per_chunk": 4, "parallel_chunks": 1,
                "engine_workers": 1},
        "backpressure": {"min_free_gb": 0.1},
    }
    for section, values in extra.items():
        sections[section] = {**sections.get(section, {}), **values}
    write_config(config, sections)
    return Site(root, config)


@pytest.fixture(scope="module")
def incoming(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("collection") / "incoming"
    make_collection(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, incoming) -> invariants.Reference:
    """The outcome of an undisturbed ProcessAll on the same collection."""
    site = new_site(tmp_path_factory.mktemp("reference") / "site", incoming)
    site.luigi("ProcessAll", "--run-id", "r")
    ref = invariants.reference(site.base)
    assert len(ref.texts) == 6 and ref.quarantined == {"empty": "empty", "cut": "truncated"}
    assert not invariants.check_converged(site.base, ref)
    return ref


# --- one paused and killed run ---------------------------------------------------------------------

def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of the live processes of a process group (zombies left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append((int(entry.name), fields[0]))
    return members


def process_state(pid: int) -> str:
    """The state letter of a process ('T' stopped, 'Z' zombie), '' when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2:].split()[0]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def kill_at(argv: list[str], env: dict[str, str], cwd: Path, kill: Kill, fault_dir: Path, check) -> dict:
    """Run ``argv`` until a process pauses at ``kill``; ``check()`` the live state, kill, wait, check again."""
    shutil.rmtree(fault_dir, ignore_errors=True)
    fault_dir.mkdir(parents=True)
    env = {**env, faults.FAULT_DIR: str(fault_dir), faults.PAUSE_AT: kill.spec}
    log = open(fault_dir / "luigi.log", "wb")
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    paused_file = fault_dir / faults.PAUSED
    try:
        wait_for(lambda: paused_file.exists() or process.poll() is not None, 120, f"{kill} to be reached")
        if not paused_file.exists():
            raise AssertionError(f"{kill}: the run ended ({process.returncode}) without reaching the point; "
                                 f"log: {(fault_dir / 'luigi.log').read_text()[-3000:]}")
        paused = json.loads(paused_file.read_text())
        wait_for(lambda: process_state(paused["pid"]) == "T", 30, "the paused process to stop")
        check()  # at the instant of the kill
        chunk_job = paused["pid"] != process.pid
        if kill.mode == "group":
            os.killpg(process.pid, signal.SIGKILL)
        elif kill.mode == "luigi" or not chunk_job:
            os.kill(process.pid, signal.SIGKILL)
        else:
            os.kill(paused["pid"], signal.SIGKILL)
        if process_state(paused["pid"]) == "T":  # a chunk job the kill spared (a SLURM job is in no group of ours)
            os.kill(paused["pid"], signal.SIGCONT)  # runs on as an orphan
        process.wait(timeout=120)
        wait_for(lambda: not group_members(process.pid), 120, "orphaned chunk jobs to finish")
    finally:
        if process.poll() is None or group_members(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    check()  # after the kill
    return paused


def run_chain(site: Site, args: tuple[str, ...], kills: list[Kill], ref: invariants.Reference,
              fault_dir: Path, settle=lambda: None) -> list[dict]:
    """Kill at each point in turn on one base_dir, then rerun: converged, and a second rerun is a no-op."""
    reached = []
    argv = [luigi_executable(), "--module", "pipeline", *args, "--local-scheduler"]
    for number, kill in enumerate(kills):
        # A folder per kill: a SLURM job orphaned by one kill goes on counting in its own.
        paused = kill_at(argv, site.env(), site.root, kill, fault_dir / f"kill{number:02d}",
                         lambda: invariants.assert_safe(site.base))
        reached.append({"kill": kill, "point": paused["point"], "detail": paused["detail"],
                        "chunk_job": paused["argv"][0].endswith("chunk_job.py")})
    site.luigi(*args)
    settle()
    invariants.assert_converged(site.base, ref)
    before = snapshot(site.base)
    site.luigi(*args)
    assert snapshot(site.base) == before, "a rerun of finished work changed files"
    return reached


# --- the chains ------------------------------------------------------------------------------------

PROCESS_ALL = ("ProcessAll", "--run-id", "r")

# Each chain walks forward through the stages; every kill after the first lands in the recovery
# of the kill before it. Patterns match "<point> <detail>" (see pipeline/faults.py).
CHAINS: dict[str, list[Kill]] = {
    "download-to-plan": [
        Kill("Download", "atomic.link.after */_quarantine/*/cut.pdf", mode="group"),
        Kill("Download", "atomic.rename.after */cut.reason.json", mode="luigi"),
        Kill("Download", "download.rename.before */doc 1.pdf", mode="luigi"),
        Kill("Download", "atomic.rename.before */doc 2.meta.json", mode="group"),
        Kill("Download", "atomic.rename.after */doc 3.meta.json", mode="luigi"),
        Kill("Download", "events.append.before events.ndjson:downloaded", mode="group"),
        Kill("Download", "atomic.rename.before */_manifests/downloads/*", mode="luigi"),
        Kill("CreateBatch", "atomic.link.after */batch_*/doc 2.pdf", mode="group"),
        Kill("CreateBatch", "atomic.rename.before */batch_*/batch.json", mode="luigi"),
        Kill("CreateBatch", "events.append.before events.ndjson:batch_created", mode="group"),
        Kill("PlanChunks", "atomic.rename.after */chunks/chunk_001.txt", mode="luigi"),
        Kill("PlanChunks", "atomic.rename.before */batch_*/chunks.json", mode="group"),
    ],
    "ocr-and-split": [
        Kill("OCRBatch", "atomic.rename.before */logs/job.sh", mode="group"),
        # luigi dies after chunk 0; the job of chunk 1, already started, runs on as an orphan
        Kill("OCRBatch", "events.append.after metrics.ndjson:", n=1, mode="luigi"),
        Kill("OCRBatch", "atomic.rename.before */done/chunk_002.done", mode="group"),
        Kill("OCRBatch", "events.append.before events.ndjson:chunk_done", mode="group"),
        Kill("OCRBatch", "atomic.rename.after */chunks/retries.json", mode="luigi"),
        Kill("OCRBatch", "atomic.rename.before */done/ocr_batch.done", mode="group"),
        Kill("SplitResults", "atomic.rename.before */04_ocr_completed/*", n=2, mode="luigi"),
        Kill("SplitResults", "atomic.rename.after */04_ocr_completed/*", n=4, mode="group"),
        Kill("SplitResults", "atomic.rename.before */split_report.json", mode="luigi"),
        Kill("Finalize", "atomic.delete.after */batch_*/*.pdf", n=1, mode="group"),
        Kill("Finalize", "atomic.delete.before */01_downloaded/*.pdf", n=2, mode="luigi"),
        Kill("Finalize", "atomic.delete.after */01_downloaded/*.meta.json", n=2, mode="group"),
    ],
    # A chunk job that dies under a live luigi is run again by the executor in the same run, which
    # then goes on to the end: nothing after it in a chain would be reached, so it is a chain of its own.
    "chunk-job-dies": [
        Kill("OCRBatch", "atomic.rename.before */results/results/output_*", n=1, mode="paused"),
    ],
    "finalize-and-summary": [
        Kill("Finalize", "atomic.rename.after */05_processed/*.ocr.json", n=2, mode="group"),
        Kill("Finalize", "atomic.rename.before */05_processed/*.metadata.json", n=3, mode="luigi"),
        Kill("Finalize", "events.append.before events.ndjson:finalized", mode="luigi"),
        Kill("Finalize", "atomic.rename.after */finalize_report.json", mode="group"),
        Kill("Finalize", "atomic.rename.before */batch_*/finalized.json", mode="luigi"),
        Kill("Finalize", "events.append.before events.ndjson:batch_finalized", mode="group"),
        Kill("ProcessAll", "atomic.rename.before */_manifests/runs/process_all_r.json", mode="luigi"),
    ],
}


# Chains only the full (slow) sweep runs.
SLOW_CHAINS: dict[str, list[Kill]] = {
    "chunk-jobs": [
        Kill("OCRBatch", "atomic.rename.after */results/results/output_*", n=1, mode="luigi"),
        Kill("OCRBatch", "atomic.rename.after */done/ocr_batch.done", mode="group"),
        Kill("SplitResults", "events.append.after events.ndjson:split", mode="luigi"),
        Kill("Finalize", "atomic.delete.after */01_downloaded/*.pdf", n=4, mode="group"),
    ],
    # A chunk job killed after its done marker: the executor's run goes on to the end (see above).
    "chunk-job-dies-after-its-marker": [
        Kill("OCRBatch", "atomic.rename.after */done/chunk_001.done", mode="paused"),
    ],
}


def all_kills() -> list[Kill]:
    return [k for kills in CHAINS.values() for k in kills] + SHARD_KILLS + COUNT_KILLS


def test_the_reduced_sweep_has_30_distinct_points_over_every_stage():
    kills = all_kills()
    assert len({(k.pattern, k.n) for k in kills}) >= 30
    assert {k.stage for k in kills} == {"Download", "CreateBatch", "PlanChunks", "OCRBatch", "SplitResults",
                                        "Finalize", "ProcessAll", "RunShard", "CountPages"}
    assert {k.mode for k in kills} == set(MODES)


@pytest.mark.parametrize("chain", [*sorted(CHAINS), *(pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CHAINS)])
def test_killed_at_each_point_of_a_chain_and_rerun_loses_nothing(chain, tmp_path, incoming, reference):
    kills = {**CHAINS, **SLOW_CHAINS}[chain]
    site = new_site(tmp_path / "site", incoming)
    reached = run_chain(site, PROCESS_ALL, kills, reference, tmp_path / "faults")
    assert len(reached) == len(kills)
    # The kills meant for a chunk job did hit one, not luigi.
    assert all(r["chunk_job"] for r in reached if r["kill"].mode == "paused")


# --- cloud shards on S3: RunShard and CountPages ------------------------------------------------------

SHARD_KILLS = [
    Kill("RunShard", "atomic.rename.after */work/*", n=1, mode="group"),
    Kill("RunShard", "s3.put.before */outputs/*", n=1, mode="luigi"),
    Kill("RunShard", "s3.put.after */outputs/*", n=1, mode="group"),
    Kill("RunShard", "s3.put.before */status/*.done", n=1, mode="luigi"),
    Kill("RunShard", "s3.put.after */status/*.done", n=2, mode="group"),
    Kill("RunShard", "s3.put.after */status/*.failed", n=1, mode="luigi"),
    Kill("RunShard", "s3.put.before */status/_shards/shard_1.done", mode="group"),
]

COUNT_KILLS = [
    Kill("CountPages", "s3.put.before */pc_parts/listing.csv", mode="group"),
    Kill("CountPages", "s3.put.after */pc_parts/listing.csv", mode="luigi"),
    Kill("CountPages", "s3.put.before */pc_parts/part_*", n=2, mode="group"),
    Kill("CountPages", "s3.put.after */pc_parts/part_*", n=2, mode="luigi"),
    Kill("CountPages", "s3.put.before */counts/pc.csv", mode="group"),
]


def shard_docs() -> dict[str, bytes]:
    docs = {f"raw/doc {i}.pdf": samples.text_pdf([f"Document {i} page {p} ledger" for p in range(i % 3 + 1)])
            for i in range(5)}
    docs["raw/cut.pdf"] = samples.text_pdf(["x"] * 3)[:700] + b"\n%%EOF\n"  # no record: failed with a reason
    return docs


def shard_cfg(folder: Path, endpoint: str, bucket: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    core = {"autoload_range": "false", "lock_pid_dir": folder / "locks"}
    return write_luigi_cfg(folder / "luigi.cfg", {"core": core, "s3": {
        "endpoint_url": endpoint, "max_attempts": 3, "engine": "text", "parallel_documents": 1,
        "document_attempts": 1, "work_dir": folder / "work",
        # Each kill that lands inside a document ends one of its claims; more than the default cap of
        # such ends would rightly mark the document failed, which is not what this sweep is about.
        "max_claim_attempts": 10,
        "shard_prefix": f"s3://{bucket}/manifests/shards", "status_prefix": f"s3://{bucket}/status",
        "output_prefix": f"s3://{bucket}/outputs"}})


def s3_state(client, bucket: str) -> dict[str, tuple[str, object]]:
    return {k: (v["ETag"], v["LastModified"]) for k, v in invariants.s3_objects(client, f"s3://{bucket}/").items()}


def test_run_shard_killed_at_each_point_and_rerun_loses_nothing(tmp_path, moto_endpoint, s3_client, bucket):
    docs = shard_docs()
    reference_bucket = f"{bucket}-reference"
    s3_client.create_bucket(Bucket=reference_bucket)
    for name in (bucket, reference_bucket):
        for key, data in docs.items():
            s3_client.put_object(Bucket=name, Key=key, Body=data)
        s3_client.put_object(Bucket=name, Key=f"manifests/shards/{shard_plan.shard_name(1)}",
                             Body=shard_plan.shard_file_bytes([f"s3://{name}/{k}" for k in docs]))
    reference_cfg = shard_cfg(tmp_path / "reference", moto_endpoint, reference_bucket)
    assert run_luigi(reference_cfg, "RunShard", "--shard", "1").returncode == 0
    ref = invariants.shard_reference(s3_client, f"s3://{reference_bucket}/status",
                                     [f"s3://{reference_bucket}/{k}" for k in docs])
    assert len(ref.texts) == 5 and list(ref.quarantined) == ["raw/cut.pdf"]

    cfg = shard_cfg(tmp_path / "node", moto_endpoint, bucket)
    uris = [f"s3://{bucket}/{k}" for k in docs]
    status, outputs = f"s3://{bucket}/status", f"s3://{bucket}/outputs"
    argv, env = luigi_command(cfg, "RunShard", "--shard", "1")

    def safe() -> None:
        problems = invariants.check_shard_safe(s3_client, status, uris)
        assert not problems, problems

    for kill in SHARD_KILLS:
        kill_at(argv, env, cfg.parent, kill, tmp_path / "faults", safe)
    assert run_luigi(cfg, "RunShard", "--shard", "1").returncode == 0
    problems = invariants.check_shard_converged(s3_client, status, outputs, 1, uris, ref, tmp_path / "node" / "work")
    assert not problems, problems
    before = s3_state(s3_client, bucket)
    assert run_luigi(cfg, "RunShard", "--shard", "1").returncode == 0
    assert s3_state(s3_client, bucket) == before


def test_count_pages_killed_at_each_point_and_rerun_gives_the_same_csv(tmp_path, moto_endpoint, s3_client, bucket):
    for key, data in shard_docs().items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    cfg = shard_cfg(tmp_path, moto_endpoint, bucket)
    common = ("--source", f"s3://{bucket}/raw/", "--max-workers", "1", "--chunk-size", "2")
    reference = f"s3://{bucket}/reference/pc.csv"
    assert run_luigi(cfg, "CountPages", *common, "--output", reference).returncode == 0
    expected = invariants.s3_objects(s3_client, f"s3://{bucket}/reference")
    master = s3_client.get_object(Bucket=bucket, Key="reference/pc.csv")["Body"].read()
    assert len(counting.csv_rows(master)) == 6

    argv, env = luigi_command(cfg, "CountPages", *common, "--output", f"s3://{bucket}/counts/pc.csv")

    def safe() -> None:  # whatever is written is whole and the same as in the undisturbed run
        for key in invariants.s3_objects(s3_client, f"s3://{bucket}/counts"):
            same = "reference/" + key.removeprefix("counts/")
            assert same in expected, key
            got = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert got == s3_client.get_object(Bucket=bucket, Key=same)["Body"].read(), key

    for kill in COUNT_KILLS:
        kill_at(argv, env, tmp_path, kill, tmp_path / "faults", safe)
    assert run_luigi(cfg, "CountPages", *common, "--output", f"s3://{bucket}/counts/pc.csv").returncode == 0
    safe()
    written = invariants.s3_objects(s3_client, f"s3://{bucket}/counts")
    assert sorted(k.removeprefix("counts/") for k in written) == sorted(k.removeprefix("reference/") for k in expected)
    before = s3_state(s3_client, bucket)
    assert run_luigi(cfg, "CountPages", *common, "--output", f"s3://{bucket}/counts/pc.csv").returncode == 0
    assert s3_state(s3_client, bucket) == before


# --- the full sweep: every few points of a whole ProcessAll, each followed by a kill in the recovery ---

def traced_points(site: Site, fault_dir: Path) -> list[tuple[str, str]]:
    """(point, detail) of every point an undisturbed ProcessAll reaches, in order."""
    fault_dir.mkdir(parents=True)
    env = {**site.env(), faults.FAULT_DIR: str(fault_dir)}
    subprocess.run([luigi_executable(), "--module", "pipeline", *PROCESS_ALL, "--local-scheduler"], env=env,
                   cwd=site.root, check=True, capture_output=True)
    return [tuple(line.split("\t")[2:4]) for line in (fault_dir / faults.TRACE).read_text().splitlines()]


@pytest.mark.slow
def test_full_sweep_killed_at_every_few_points_then_in_the_recovery(tmp_path, incoming, reference):
    """Every KILL_SWEEP_STEP-th point of ProcessAll, the kill modes in turn; the rerun after it is
    itself killed at a point that varies with the case; then a clean rerun converges.

    The default step (24, seven cases) keeps it short where the whole suite runs; FULL_CAMPAIGN=1
    kills at every third point, KILL_SWEEP_STEP=1 at every point (168 today, about 15 s a case).
    """
    step = int(os.environ.get("KILL_SWEEP_STEP", "3" if FULL_CAMPAIGN else "24"))
    points = traced_points(new_site(tmp_path / "traced", incoming), tmp_path / "trace")
    assert len(points) > 100, len(points)
    survived, recovery_kills, failures = 0, 0, []
    for case, t in enumerate(range(1, len(points) + 1, step)):
        site = new_site(tmp_path / f"case{t}", incoming)
        argv = [luigi_executable(), "--module", "pipeline", *PROCESS_ALL, "--local-scheduler"]
        first = Kill("sweep", "*", t, MODES[case % 3])
        second = Kill("sweep", "*", 1 + (t * 7) % 60, MODES[(case + 1) % 3])
        safe = functools.partial(invariants.assert_safe, site.base)
        try:
            kill_at(argv, site.env(), site.root, first, tmp_path / "faults", safe)
            try:
                kill_at(argv, site.env(), site.root, second, tmp_path / "faults", safe)
                recovery_kills += 1
            except AssertionError as exc:
                if "without reaching the point" not in str(exc):  # a short recovery may end first
                    raise
            site.luigi(*PROCESS_ALL)
            invariants.assert_converged(site.base, reference)
            before = snapshot(site.base)
            site.luigi(*PROCESS_ALL)
            assert snapshot(site.base) == before, "a rerun of finished work changed files"
            survived += 1
        except AssertionError as exc:
            failures.append(f"kill at point {t} {points[t - 1]} ({first.mode}): {str(exc)[:1500]}")
        shutil.rmtree(site.root, ignore_errors=True)
    print(f"full sweep: {survived} of {len(range(1, len(points) + 1, step))} kill points survived, "
          f"{recovery_kills} kills during the recovery; {len(points)} points in a ProcessAll")
    assert not failures, "\n".join(failures)


# --- OCRBatch on the dev SLURM cluster ---------------------------------------------------------------

SLURM_CHAINS: dict[str, list[Kill]] = {
    # luigi dies right after logging the submission: the rerun re-attaches to the jobs still
    # queued or running (or finds them done), and is itself killed before the batch's OCR marker.
    "reattach": [
        Kill("OCRBatch", "events.append.after events.ndjson:slurm_submitted", mode="luigi"),
        Kill("OCRBatch", "atomic.rename.before */done/ocr_batch.done", mode="group"),
    ],
    # Submitted, but killed before the submission reached the event log: the rerun cannot know
    # the jobs and submits again; both copies of a chunk write the same results.
    "unlogged-submission": [
        Kill("OCRBatch", "events.append.before events.ndjson:slurm_submitted", mode="group"),
    ],
    # The job of chunk 1 dies on the node just before its done marker: SLURM reports it failed
    # and the executor submits it again.
    "job-killed": [
        Kill("OCRBatch", "atomic.rename.before */done/chunk_001.done", mode="paused"),
    ],
}


def jobs_from(folder: Path) -> list[str]:
    """Ids of the queued or running SLURM jobs submitted from ``folder`` (their working directory)."""
    listing = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, check=True).stdout
    return [line.split(" ", 1)[0] for line in listing.splitlines() if line.split(" ", 1)[1:] == [str(folder)]]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize("chain", sorted(SLURM_CHAINS))
def test_ocr_on_slurm_killed_and_rerun_loses_nothing(chain, cluster, tmp_path, incoming, reference):
    site = new_site(tmp_path / "site", incoming, ocr={"executor": "slurm"}, slurm={
        "poll_initial_seconds": 0.5, "poll_max_seconds": 1, "poll_growth": 1, "cpus_per_task": 1,
        "mem": "200M", "walltime_base_seconds": 120})

    def no_jobs_left() -> None:  # jobs orphaned by a kill may still be writing
        wait_for(lambda: not jobs_from(site.root), 300, "the orphaned SLURM jobs to end")

    try:
        reached = run_chain(site, PROCESS_ALL, SLURM_CHAINS[chain], reference, tmp_path / "faults", no_jobs_left)
    finally:
        leftover = jobs_from(site.root)
        if leftover:
            subprocess.run(["scancel", *leftover], check=False)
    assert len(reached) == len(SLURM_CHAINS[chain])
    assert all(r["chunk_job"] for r in reached if r["kill"].mode == "paused")
