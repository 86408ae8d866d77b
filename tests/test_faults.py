"""The fault-injection hook: a no-op when unset, a shared count and trace, a pause at the n-th point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import atomic, faults

from .conftest import ROOT

CHILD = """\
from pipeline import faults
for n in range(1, 4):
    faults.point("demo.step", f"/data/01_downloaded/doc {n}.pdf")
print("finished", flush=True)
"""


@pytest.fixture
def restore_settings():
    yield
    faults.configure()  # back to the test process's own (unset) environment


def child(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD], env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.PIPE, text=True)


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[0]


def trace(folder: Path) -> list[list[str]]:
    return [line.split("\t") for line in (folder / faults.TRACE).read_text().splitlines()]


def test_unset_the_points_do_nothing(tmp_path, restore_settings, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert faults.configure({}) is None
    atomic.write_bytes(tmp_path / "a.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_every_point_is_counted_and_traced_in_order(tmp_path, restore_settings):
    faults.configure({faults.FAULT_DIR: str(tmp_path)})
    target = tmp_path / "out" / "x.json"
    atomic.write_bytes(target, b"1")
    atomic.remove_files([target])
    assert [(row[0], row[1], row[2], row[3]) for row in trace(tmp_path)] == [
        ("1", str(os.getpid()), "atomic.rename.before", str(target)),
        ("2", str(os.getpid()), "atomic.rename.after", str(target)),
        ("3", str(os.getpid()), "atomic.delete.before", str(target)),
        ("4", str(os.getpid()), "atomic.delete.after", str(target)),
    ]
    assert not (tmp_path / faults.PAUSED).exists()


def test_the_process_reaching_the_nth_matching_point_stops_itself(tmp_path):
    process = child({faults.FAULT_DIR: str(tmp_path), faults.PAUSE_AT: "demo.step */doc [23].pdf:2"})
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / faults.PAUSED).exists() or process_state(process.pid) != "T":
            assert process.poll() is None and time.monotonic() < deadline, "the child did not pause"
            time.sleep(0.01)
        paused = json.loads((tmp_path / faults.PAUSED).read_text())
        assert (paused["pid"], paused["point"], paused["occurrence"], paused["sequence"]) == (
            process.pid, "demo.step", 2, 3)
        assert paused["detail"] == "/data/01_downloaded/doc 3.pdf"
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert [row[3] for row in trace(tmp_path)] == [f"/data/01_downloaded/doc {n}.pdf" for n in (1, 2, 3)]


def test_the_count_is_shared_by_every_process_of_a_run(tmp_path):
    first = child({faults.FAULT_DIR: str(tmp_path), faults.PAUSE_AT: "demo.*:5"})
    assert first.communicate(timeout=30)[0] == "finished\n"  # three points: not yet the fifth
    second = child({faults.FAULT_DIR: str(tmp_path), faults.PAUSE_AT: "demo.*:5"})
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / faults.PAUSED).exists():
            assert second.poll() is None and time.monotonic() < deadline, "the second child did not pause"
            time.sleep(0.01)
        assert json.loads((tmp_path / faults.PAUSED).read_text())["pid"] == second.pid
    finally:
        second.kill()
        second.wait()


@pytest.mark.parametrize("env, message", [
    ({faults.PAUSE_AT: "x:1"}, "needs PIPELINE_FAULT_DIR"),
    ({faults.FAULT_DIR: "/tmp", faults.PAUSE_AT: "x"}, "expected '<point pattern>:<n>'"),
    ({faults.FAULT_DIR: "/tmp", faults.PAUSE_AT: "x:0"}, "n >= 1"),
    ({faults.FAULT_DIR: "/tmp", faults.PAUSE_AT: ":3"}, "expected"),
])
def test_a_bad_setting_says_what_is_expected(env, message):
    with pytest.raises(ValueError, match=message):
        faults.from_env(env)
