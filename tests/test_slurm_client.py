"""pipeline.executors.slurm.client: the commands against the real cluster, their failures and time limit.

The tests marked ``slurm`` need the dev cluster (``slurm/dev-cluster.sh start``, as root); they
fail, never skip, when it is not up.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.executors.slurm.client import AccountingDisabled, Backoff, PollInterval, SlurmClient, job_name
from pipeline.executors.slurm.parse import JobState, SlurmError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slurm"
JOBS = json.loads((FIXTURES / "jobs.json").read_text())


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# The commands of the dev cluster, with the default time limit.
slurm = SlurmClient()


def test_accounting_disabled_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    message = fixture("sacct_accounting_disabled.stderr").strip()
    calls: list[str] = []

    def fake_run(command: str, args: list[str]) -> str:
        calls.append(command)
        if command == "sacct":
            raise AccountingDisabled(message)
        if command == "squeue":
            return fixture("squeue_final.txt")
        return fixture("scontrol_job_failed.txt") if args[-1] == JOBS["failed"] else ""

    client = SlurmClient()
    monkeypatch.setattr(client, "_run", fake_run)
    states = client.query([JOBS["failed"], JOBS["completed"]])
    assert states[f"{JOBS['failed']}_3"].exit_code == "3:0"
    assert states[f"{JOBS['completed']}_1"].state == "COMPLETED"
    # One squeue for all jobs; scontrol only for jobs with finished tasks, once each.
    assert calls.count("sacct") == 1 and calls.count("squeue") == 1
    assert calls.count("scontrol") == len({s.job_id for s in states.values()})


# --- polling helpers --------------------------------------------------------------------------

def test_poll_interval_grows_while_quiet_and_resets_on_change() -> None:
    poll = PollInterval(initial=10, maximum=40, growth=1.5)
    assert poll.current == 10
    assert [poll.next(changed=False) for _ in range(5)] == [15, 22.5, 33.75, 40, 40]
    assert poll.next(changed=True) == 10
    assert poll.next(changed=False) == 15


def test_backoff() -> None:
    backoff = Backoff(base=5, factor=2, maximum=60)
    assert [backoff.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_job_name() -> None:
    assert job_name("0007") == "ocr-0007"


# --- the real cluster -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> None:
    """Fails (not skips) with what to do when the dev cluster does not answer."""
    try:
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"SLURM is not installed or not answering ({exc}); run `slurm/dev-cluster.sh start` as "
                    "root before pytest")
    if nodes.returncode or not nodes.stdout.strip() or accounting.returncode:
        pytest.fail("the dev SLURM cluster is not up: run `slurm/dev-cluster.sh start` as root before pytest\n"
                    f"sinfo: {nodes.stdout}{nodes.stderr}\nsacct: {accounting.stderr}")


def wait_for(job_ids: list[str], keys: list[str], done, timeout: float = 120) -> dict[str, JobState]:
    deadline = time.monotonic() + timeout
    while True:
        states = slurm.query(job_ids)
        if all(k in states and done(states[k]) for k in keys):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs {job_ids} not there after {timeout} s: {states}")
        time.sleep(1)


def finished(state: JobState) -> bool:
    return state.outcome != "waiting"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\n"
                    'echo "task $SLURM_ARRAY_TASK_ID"\n'
                    'if [ "$SLURM_ARRAY_TASK_ID" = 2 ]; then exit 4; fi\n'
                    'sleep "${SLEEP:-0}"\n')
    return path


@pytest.mark.slurm
def test_cluster_limits(cluster: None) -> None:
    assert slurm.max_array_size() >= 1001
    assert slurm.partition_max_time() == 7200
    assert slurm.partition_max_time("short") == 60
    with pytest.raises(SlurmError, match="does not exist"):
        slurm.partition_max_time("nope")


@pytest.mark.slurm
def test_submit_query_array(cluster: None, script: Path, tmp_path: Path) -> None:
    job = slurm.submit(script, job_name=job_name("9999"), array_indices=[0, 2, 3], throttle=2,
                       comment="batch 9999", partition="debug", cpus=1, mem="100M", time=120,
                       output=str(tmp_path / "chunk_%a.log"), chdir=tmp_path, extra_args=["--export=ALL"])
    assert job.isdigit()
    keys = [f"{job}_{i}" for i in (0, 2, 3)]
    states = wait_for([job], keys, finished)
    assert set(states) == set(keys)
    assert states[f"{job}_0"].state == "COMPLETED" and states[f"{job}_0"].exit_code == "0:0"
    assert (states[f"{job}_2"].state, states[f"{job}_2"].exit_code) == ("FAILED", "4:0")
    assert (tmp_path / "chunk_3.log").read_text() == "task 3\n"
    # The controller's view (the fallback when accounting is off) agrees.
    controller = slurm.query_controller([job])
    assert {k: (s.state, s.exit_code) for k, s in controller.items()} == {
        k: (s.state, s.exit_code) for k, s in states.items()}


@pytest.mark.slurm
def test_query_without_accounting(cluster: None, script: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = slurm.submit(script, job_name="ocr-test", array_indices=[1, 2], output=str(tmp_path / "%a.log"))
    wait_for([job], [f"{job}_1", f"{job}_2"], finished)
    conf = tmp_path / "slurm.conf"
    conf.write_text(Path("/etc/slurm/slurm.conf").read_text()
                    .replace("accounting_storage/slurmdbd", "accounting_storage/none"))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    states = slurm.query([job])
    assert (states[f"{job}_1"].state, states[f"{job}_2"].state) == ("COMPLETED", "FAILED")
    assert states[f"{job}_2"].exit_code == "4:0"


@pytest.mark.slurm
def test_cancel(cluster: None, script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEP", "300")
    job = slurm.submit(script, job_name="ocr-test", array_indices=list(range(5)), throttle=1,
                       output=str(tmp_path / "%a.log"))
    wait_for([job], [f"{job}_0"], lambda s: s.state == "RUNNING")
    slurm.cancel([job])
    states = wait_for([job], [f"{job}_{i}" for i in range(5)], finished)
    assert {s.state for s in states.values()} == {"CANCELLED"}
    slurm.cancel([job])  # cancelling a finished job is no error


@pytest.mark.slurm
def test_failures_raise_slurm_errors(cluster: None, tmp_path: Path) -> None:
    with pytest.raises(SlurmError, match="sbatch"):
        slurm.submit(tmp_path / "missing.sh", job_name="ocr-test", array_indices=[0])
    with pytest.raises(ValueError, match="MaxArraySize"):
        slurm.submit(tmp_path / "missing.sh", job_name="ocr-test", array_indices=[slurm.max_array_size()])
    assert slurm.query([]) == {}
    assert slurm.query_controller(["999999"]) == {}
    assert slurm.query(["999999"]) == {}


def test_a_command_that_hangs_fails_after_the_clients_time_limit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A controller that hangs: this scontrol never answers.
    hung = tmp_path / "bin" / "scontrol"
    hung.parent.mkdir()
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    monkeypatch.setenv("PATH", f"{hung.parent}:{os.environ['PATH']}")
    with pytest.raises(SlurmError, match="scontrol did not answer within 1 s"):
        SlurmClient(timeout=1).partition_max_time()
