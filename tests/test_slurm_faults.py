"""SLURM faults on the dev cluster, through the real `luigi` command line.

slurmctld restarted while jobs run, slurmdbd stopped (sacct fails), the node drained and then set
DOWN (its jobs are requeued), and jobs that exit 0 having written nothing. Each case ends with what
a user relies on: every document finalized once with the text of an undisturbed run, no PDF or
temp file left behind, one array submission where nothing failed, and a rerun that changes nothing.

The cluster is shared with the rest of the suite: each disruption waits (a little) for a quiet
queue, lasts seconds, and the ``faults`` fixture brings every daemon back and resumes the node
when the test ends, pass or fail.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.executors.slurm.client import SlurmClient
from pipeline.executors.slurm.parse import SlurmError
from pipeline.layout import BatchPaths

from .conftest import Site, snapshot, write_config
from .invariants import Reference, assert_converged, reference
from .s3server import RETCODES
from .test_slurm_client import cluster  # noqa: F401  (the fixture)
from .test_slurm_luigi import call_log, logged, read_calls, wait_until  # noqa: F401  (call_log: a fixture)

# The commands of the dev cluster.
slurm = SlurmClient()

ROOT = Path(__file__).resolve().parent.parent
DEV_CLUSTER = ROOT / "slurm" / "dev-cluster.sh"
POLL = 0.5

ENGINE = '''\
"""Test OCR program: logs each run, holds until its PDFs (or 'all') are released, writes one record each.

control/<name>.first makes the first run of a chunk with that document end badly: 'fail' exits 1,
'nothing' exits 0 without writing its output, 'empty' writes an empty output and exits 0.
"""
import json, os, sys, time
chunk_list, output, control = sys.argv[1], sys.argv[2], sys.argv[3]
names = [os.path.basename(p)[:-4] for p in open(chunk_list).read().splitlines() if p]
with open(os.path.join(control, "runs.log"), "a") as log:
    log.write(json.dumps({"documents": names, "job": os.environ.get("SLURM_JOB_ID", "local"),
                          "restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}) + "\\n")
release = os.path.join(control, "release")
while not (os.path.exists(os.path.join(release, "all"))
           or all(os.path.exists(os.path.join(release, name)) for name in names)):
    time.sleep(0.2)
for name in names:
    first = os.path.join(control, name + ".first")
    if os.path.exists(first):
        mode = open(first).read().strip()
        os.rename(first, first + ".used")
        print("first run of", name, "ends with", mode, flush=True)
        if mode == "fail":
            sys.exit(1)
        if mode == "nothing":
            sys.exit(0)
        if mode == "empty":
            open(output, "w").close()
            sys.exit(0)
with open(output, "w") as out:
    for name in names:
        text = "Text of " + name + " \\u00e9t\\u00e9"
        out.write(json.dumps({
            "id": name, "text": text, "source": "olmocr", "added": "2026-01-01", "created": "2026-01-01",
            "metadata": {"Source-File": os.path.join("/in", name + ".pdf"), "olmocr-version": "test-1",
                         "pdf-total-pages": 1, "total-input-tokens": 0, "total-output-tokens": 0,
                         "total-fallback-pages": 0},
            "attributes": {"pdf_page_numbers": [[0, len(text), 1]]},
        }) + "\\n")
'''


# --- sites, the cluster, the end state --------------------------------------------------------

def make_fault_site(root: Path, names: list[str], batch: str | None = None, executor: str = "slurm",
                    **overrides: Any) -> Site:
    """A site whose OCR program is ENGINE, controlled through root/control; ``names`` downloaded, and
    in ``batch`` when one is given."""
    from pipeline import samples

    control = root / "control"
    (control / "release").mkdir(parents=True, exist_ok=True)
    incoming = root / "incoming"
    incoming.mkdir(exist_ok=True)
    for name in names:
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"Page of {name}"]))
    engine = root / "engine.py"
    engine.write_text(ENGINE)
    sections: dict[str, dict[str, object]] = {
        "core": {"autoload_range": "false"},
        "retcode": RETCODES,
        "pipeline": {"base_dir": root / "data", "workers": 2},
        "download": {"source": incoming},
        "ocr": {"executor": executor, "engine": "command", "pages_per_chunk": 1, "parallel_chunks": 2,
                "command": f"{sys.executable} {engine} {{chunk_list}} {{output}} {control}"},
        "backpressure": {"min_free_gb": 0.1},
        "slurm": {"poll_initial_seconds": POLL, "poll_max_seconds": POLL, "poll_growth": 1,
                  "cpus_per_task": 1, "mem": "200M", "walltime_base_seconds": 120, "lost_after_seconds": 20},
    }
    for key, value in overrides.items():
        section, name = key.split("__", 1)
        sections.setdefault(section, {})[name] = value
    write_config(root / "luigi.cfg", sections)
    site = Site(root, root / "luigi.cfg")
    if batch:
        site.luigi("Download", "--run-id", f"faults-{root.name}")
        site.luigi("CreateBatch", "--batch", batch)
    return site


def control(site: Site) -> Path:
    return site.root / "control"


def runs(site: Site) -> list[dict[str, Any]]:
    log = control(site) / "runs.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The outcome of a plain local run of every test document: what a disturbed run must match."""
    names = ["alpha", "beta", "gamma"]
    root = tmp_path_factory.mktemp("undisturbed")
    site = make_fault_site(root, names, executor="local")
    (control(site) / "release" / "all").touch()
    site.luigi("ProcessAll", "--run-id", f"undisturbed-{root.name}")
    return reference(site.base)


def assert_end_state(site: Site, batch: str, undisturbed: Reference, names: list[str]) -> None:
    """Every document finalized once with the undisturbed text, nothing lost or left behind
    (tests/invariants.py), and a rerun that changes no byte."""
    assert_converged(site.base, Reference(texts={n: undisturbed.texts[n] for n in names}))
    assert [e["batch"] for e in logged(site, "batch_finalized")] == [batch]
    before = snapshot(site.base)
    site.luigi("Finalize", "--batch", batch)
    assert snapshot(site.base) == before


class Cluster:
    """Faults on the dev cluster; ``restore()`` undoes them all (the fixture calls it at the end)."""

    def __init__(self) -> None:
        self.node = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                                   check=True).stdout.split()[0]
        self.jobs: set[str] = set()
        self.processes: list[subprocess.Popen] = []

    def luigi(self, site: Site, *args: str) -> subprocess.Popen:
        """Start ``luigi`` on ``site`` in the background; ``restore()`` kills it if it still runs."""
        process = site.popen(*args)
        self.processes.append(process)
        return process

    def script(self, command: str) -> None:
        result = subprocess.run([str(DEV_CLUSTER), command], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"dev-cluster.sh {command} failed:\n{result.stderr}"

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
        assert not check or result.returncode == 0, f"scontrol {' '.join(args)}: {result.stderr}"
        return result

    def node_state(self) -> str:
        return subprocess.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], capture_output=True,
                              text=True).stdout.split()[0]

    def wait_for_quiet_queue(self, timeout: float = 30) -> None:
        """Give other tests' jobs a moment to end before disturbing the node they run on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
            if queue.returncode == 0 and not queue.stdout.strip():
                return
            time.sleep(1)

    def restore(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.jobs:
            subprocess.run(["scancel", *sorted(self.jobs)], capture_output=True)
        # `start` starts whatever daemon is down, resumes a drained or down node and returns once
        # the node takes jobs and sacct answers.
        self.script("start")
        assert self.node_state() in {"idle", "mixed", "allocated"}, self.node_state()
        assert subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode == 0


@pytest.fixture
def faults(cluster: None) -> Cluster:  # noqa: F811
    state = Cluster()
    try:
        yield state
    finally:
        state.restore()


def submitted_jobs(site: Site) -> list[str]:
    return [e["job_id"] for e in logged(site, "slurm_submitted")]


def wait_running(site: Site, process: subprocess.Popen, count: int) -> str:
    """The job id once ``count`` chunks run their OCR program."""
    [submitted] = wait_until(lambda: logged(site, "slurm_submitted"), "submission", process)
    wait_until(lambda: len(runs(site)) >= count, f"{count} chunks running the OCR program", process, timeout=90)
    return submitted["job_id"]


def finish(process: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the cases --------------------------------------------------------------------------------

@pytest.mark.slurm
def test_jobs_that_exit_0_without_output_are_retried(cluster: None, tmp_path: Path, call_log: Path,  # noqa: F811
                                                     undisturbed: Reference) -> None:
    batch = "0061"  # a command line of its own: Luigi locks on the command line machine-wide
    names = ["alpha", "beta", "gamma"]
    site = make_fault_site(tmp_path, names, batch, slurm__env_setup=f". {tmp_path / 'setup.sh'}")
    # The job script of chunk 0 exits 0 before its chunk runs (a broken setup line): COMPLETED, no marker.
    (tmp_path / "setup.sh").write_text(
        f'if [ "$SLURM_ARRAY_TASK_ID" = 0 ] && mv {control(site)}/skip {control(site)}/skipped 2>/dev/null; then\n'
        '    echo "setup ends the job"; exit 0\nfi\n')
    (control(site) / "skip").touch()
    (control(site) / "beta.first").write_text("nothing")  # the program exits 0, no output file
    (control(site) / "gamma.first").write_text("empty")   # the program exits 0, an empty output file
    (control(site) / "release" / "all").touch()
    site.luigi("Finalize", "--batch", batch)

    plan = {c["index"]: c["documents"] for c in json.loads(BatchPaths(site.layout.batch_dir(batch)).chunk_plan
                                                             .read_text())["chunks"]}
    chunk_of = {doc: index for index, docs in plan.items() for doc in docs}
    failed = logged(site, "slurm_chunk_failed")
    # Chunk 0 ended COMPLETED without its marker; beta's program wrote nothing, so its job failed.
    assert sorted((e["chunk"], e["state"]) for e in failed) == sorted(
        [(0, "COMPLETED"), (chunk_of["beta"], "FAILED")])
    # gamma's empty output left it missing from its chunk: the retry chunk OCRed it once more.
    [retry] = json.loads(BatchPaths(site.layout.batch_dir(batch)).retry_plan.read_text())["chunks"]
    assert retry["documents"] == ["gamma"] and retry["retry_of"] == chunk_of["gamma"]
    # The skipped attempt never started the program: beta and gamma ran twice, alpha once.
    assert {n: sum(n in r["documents"] for r in runs(site)) for n in names} == {"alpha": 1, "beta": 2, "gamma": 2}
    assert_end_state(site, batch, undisturbed, names)


@pytest.mark.slurm
def test_slurmdbd_stopped_falls_back_to_the_controller(faults: Cluster, tmp_path: Path, call_log: Path,
                                                       undisturbed: Reference) -> None:
    batch = "0062"  # a command line of its own: Luigi locks on the command line machine-wide
    names = ["alpha", "beta", "gamma"]
    site = make_fault_site(tmp_path, names, batch)
    faults.wait_for_quiet_queue()
    first = faults.luigi(site, "Finalize", "--batch", batch)
    job = wait_running(site, first, 1)
    faults.jobs.add(job)
    faults.script("stop-dbd")
    stopped = time.time()
    # sacct fails now: the executor asks squeue, keeps its jobs and goes on polling.
    wait_until(lambda: [c for c in read_calls(call_log, first.pid) if c.command == "squeue" and c.time > stopped],
               "a status query through squeue", first)
    time.sleep(3 * POLL)
    assert first.poll() is None
    # A restart while accounting is still down re-attaches to the live jobs from the controller's view.
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = faults.luigi(site, "Finalize", "--batch", batch)
    [reattached] = wait_until(lambda: logged(site, "slurm_reattached"), "re-attach", second)
    (control(site) / "release" / "all").touch()
    assert finish(second) == 0
    faults.script("start")

    assert (reattached["job_ids"], reattached["chunks"]) == ([job], [0, 1, 2])
    assert [c.parent for c in read_calls(call_log) if c.command == "sbatch"] == [first.pid]
    assert submitted_jobs(site) == [job] and logged(site, "slurm_chunk_failed") == []
    assert sorted(n for r in runs(site) for n in r["documents"]) == names  # each chunk ran once
    assert_end_state(site, batch, undisturbed, names)


@pytest.mark.slurm
def test_node_drained_then_down_requeues_without_a_second_submission(faults: Cluster, tmp_path: Path,
                                                                     call_log: Path, undisturbed: Reference,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    batch = "0063"  # a command line of its own: Luigi locks on the command line machine-wide
    names = ["alpha", "beta"]
    output_log = tmp_path / "slurm_output.log"
    output_log.touch()
    monkeypatch.setenv("SLURM_OUTPUT_LOG", str(output_log))
    site = make_fault_site(tmp_path, names, batch)
    faults.wait_for_quiet_queue()
    process = faults.luigi(site, "Finalize", "--batch", batch)
    job = wait_running(site, process, 2)
    faults.jobs.add(job)
    try:
        # Drained: the running chunks go on, the executor waits.
        faults.scontrol("update", f"nodename={faults.node}", "state=drain", "reason=fault-test")
        time.sleep(4 * POLL)
        # The controller's view: sacct may learn of the array late when slurmdbd lags under load.
        assert {s.state for s in slurm.query_controller([job]).values()} == {"RUNNING"}
        # DOWN: SLURM kills both chunks and requeues them; sacct says NODE_FAIL for a while (unless
        # slurmdbd, lagging under load, learns of the failure only after the requeue).
        down, seen = time.time(), output_log.stat().st_size
        faults.scontrol("update", f"nodename={faults.node}", "state=down", "reason=fault-test")
        wait_until(lambda: {s.state for s in slurm.query_controller([job]).values()} == {"PENDING"},
                   "both chunks requeued", process)
        time.sleep(4 * POLL)
        assert process.poll() is None
        with output_log.open("rb") as log:
            log.seek(seen)
            shown = log.read().decode()
        if any(line.startswith(f"{process.pid} sacct ") and "NODE_FAIL" in line for line in shown.splitlines()):
            # What sacct showed as ended, the executor checked with the controller before acting.
            wait_until(lambda: [c for c in read_calls(call_log, process.pid)
                                if c.command == "squeue" and c.time > down],
                       "the executor asking the controller about the ended jobs", process)
    finally:
        faults.scontrol("update", f"nodename={faults.node}", "state=resume", check=False)
    # A requeued job waits for SLURM's credential lifetime (2 minutes) before it starts again.
    faults.scontrol("update", f"jobid={job}", "starttime=now")
    (control(site) / "release" / "all").touch()
    assert finish(process) == 0

    assert submitted_jobs(site) == [job] and logged(site, "slurm_chunk_failed") == []
    assert [c.parent for c in read_calls(call_log) if c.command == "sbatch"] == [process.pid]
    # Each chunk ran twice within the one job: killed by the node failure, then requeued.
    assert sorted((r["documents"][0], r["restarts"], r["job"] != "local") for r in runs(site)) == [
        ("alpha", 0, True), ("alpha", 1, True), ("beta", 0, True), ("beta", 1, True)]
    assert_end_state(site, batch, undisturbed, names)


@pytest.mark.slurm
def test_slurmctld_restarted_while_jobs_run_and_the_executor_polls(faults: Cluster, tmp_path: Path,
                                                                    call_log: Path,
                                                                    undisturbed: Reference) -> None:
    batch = "0064"  # a command line of its own: Luigi locks on the command line machine-wide
    names = ["alpha", "beta", "gamma"]
    site = make_fault_site(tmp_path, names, batch)
    (control(site) / "beta.first").write_text("fail")
    faults.wait_for_quiet_queue()
    process = faults.luigi(site, "Finalize", "--batch", batch)
    job = wait_running(site, process, 2)
    faults.jobs.add(job)
    faults.script("stop-ctld")
    stopped = time.time()
    # While the controller is down the chunks finish (beta's first run fails); nothing reaches the
    # controller, and the executor goes on polling sacct.
    (control(site) / "release" / "all").touch()
    time.sleep(6 * POLL)
    assert process.poll() is None
    assert [c for c in read_calls(call_log, process.pid) if c.command == "sacct" and c.time > stopped]
    faults.script("start")
    assert finish(process) == 0

    plan = json.loads(BatchPaths(site.layout.batch_dir(batch)).chunk_plan.read_text())["chunks"]
    [beta_chunk] = [c["index"] for c in plan if c["documents"] == ["beta"]]
    # Only beta's chunk was submitted again, once, after its failure reached the controller.
    assert [(e["chunk"], e["state"]) for e in logged(site, "slurm_chunk_failed")] == [(beta_chunk, "FAILED")]
    submissions = logged(site, "slurm_submitted")
    assert [e["chunks"] for e in submissions] == [[0, 1, 2], [beta_chunk]]
    assert sorted(n for r in runs(site) for n in r["documents"]) == ["alpha", "beta", "beta", "gamma"]
    faults.jobs.update(e["job_id"] for e in submissions)
    assert_end_state(site, batch, undisturbed, names)


# --- the same decisions without the cluster (fast, for every run) ------------------------------

def test_sacct_failing_falls_back_to_the_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def answer(command: str, args: list[str]) -> str:
        calls.append(command)
        if command == "sacct":
            raise SlurmError("sacct -j 7 failed (exit 1): Problem talking to the database: Connection refused")
        if command == "squeue":
            return "7_0|RUNNING|0:05|2026-01-01T00:00:00|2026-01-01T02:00:00|None\n"
        raise AssertionError(f"unexpected {command}")

    client = SlurmClient()
    monkeypatch.setattr(client, "_run", answer)
    assert {k: s.state for k, s in client.query(["7"]).items()} == {"7_0": "RUNNING"}
    assert calls == ["sacct", "squeue"]

    def nothing_answers(command: str, args: list[str]) -> str:
        raise SlurmError(f"{command} failed (exit 1): Unable to contact slurm controller")

    monkeypatch.setattr(client, "_run", nothing_answers)
    with pytest.raises(SlurmError, match="sacct failed.*the controller could not answer either"):
        client.query(["7"])


def test_a_requeued_job_that_sacct_calls_node_fail_is_not_submitted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.executors.base import ChunkRun
    from pipeline.executors.slurm.executor import SlurmExecutor
    from pipeline.executors.slurm.parse import JobState
    from pipeline.executors.walltime import WalltimeModel
    from pipeline.layout import Layout

    layout = Layout(tmp_path / "data", 2)
    paths = BatchPaths(layout.batch_dir(7))
    paths.dir.mkdir(parents=True)
    submitted: list[list[int]] = []
    polls = iter([{"requeued": "NODE_FAIL", "ended": "NODE_FAIL"}, {"requeued": "PENDING", "ended": "NODE_FAIL"},
                  "done"])

    def submit(script: Path, *, array_indices: list[int], **options: Any) -> str:
        submitted.append(list(array_indices))
        return str(100 + len(submitted))

    def query(job_ids: set[str]) -> dict[str, JobState]:
        step = next(polls, {})
        if not step:
            return {}
        if step == "done":
            for index in (0, 1):
                paths.done_marker(index).parent.mkdir(parents=True, exist_ok=True)
                paths.done_marker(index).write_text('{"missing": []}')
            return {}
        return {"101_0": JobState("101", 0, step["requeued"]), "101_1": JobState("101", 1, step["ended"])}

    # The controller holds chunk 0 again (requeued); chunk 1's NODE_FAIL is final.
    client = SlurmClient()
    monkeypatch.setattr(client, "submit", submit)
    monkeypatch.setattr(client, "query", query)
    monkeypatch.setattr(client, "query_controller", lambda ids: {
        "101_0": JobState("101", 0, "PENDING"), "101_1": JobState("101", 1, "NODE_FAIL")})
    monkeypatch.setattr(client, "partition_max_time", lambda partition=None: 3600)
    SlurmExecutor(layout, ["true"], client=client, sleep=lambda s: None, walltime=WalltimeModel(60, 1, 0)).run(
        paths, [ChunkRun(0, 1, 1), ChunkRun(1, 1, 1)], lambda *a: None)
    assert submitted == [[0, 1], [1]]
