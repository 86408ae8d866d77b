"""engines/process: the bounded subprocess runner and the command-template expander, on real processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.engines import EngineFailed, process


def test_expand_keeps_other_braces() -> None:
    template = ["ocr", "--in={chunk_list}", "{output}", '{"json": {workspace}}', "{unknown}"]
    assert process.expand(template, {"chunk_list": "/c.txt", "output": "/o.jsonl", "workspace": "/w"}) == [
        "ocr", "--in=/c.txt", "/o.jsonl", '{"json": /w}', "{unknown}"]


def test_expand_strict_names_the_unknown_placeholder() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder \{nope\} in the command; use uri, shard"):
        process.expand(["x", "{uri}", "{nope}"], {"uri": "s3://b/k", "shard": "1"}, strict=True)


def test_expand_fills_each_placeholder_once() -> None:
    # A value that looks like a placeholder (a folder named '{output}') is not expanded again.
    assert process.expand(["{workspace}/x", "{output}"], {"workspace": "/w/{output}", "output": "/o"}) == [
        "/w/{output}/x", "/o"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Reaped by init once its parent is gone; a zombie still answers kill(0), so check its state.
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.parametrize("own_group", [True, False], ids=["own group", "our group"])
def test_run_bounded_stops_every_process_of_the_program(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_group: bool) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # The grandchild ignores SIGTERM: only the SIGKILL of the whole group ends it.
    program = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pid_file)!r} + ".tmp", "w").write(str(child.pid))
        os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
        time.sleep(600)
    """)
    monkeypatch.setattr(process, "TERMINATE_GRACE_SECONDS", 5.0)
    # The kill must land after the grandchild exists: a machine too busy to start it within the
    # timeout gets a longer one (the program never ends on its own, so only the timeout ends it).
    for timeout in (1.5, 6.0, 24.0, 96.0):
        with pytest.raises(EngineFailed, match=f"still running after {timeout:.0f} s; stopped"):
            process.run_bounded([sys.executable, "-c", program], timeout=timeout, own_group=own_group)
        if pid_file.exists():
            break
    grandchild = int(pid_file.read_text())
    for _ in range(100):  # SIGKILL was sent before run_bounded returned; the kernel ends it meanwhile
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the grandchild outlived the timeout")


def test_a_program_in_our_group_ends_when_our_group_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "program.pid"
    program = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    call = f"process.run_bounded([sys.executable, '-c', {program!r}], timeout=None, own_group=False)"
    caller = subprocess.Popen([sys.executable, "-c", f"import sys; from pipeline.engines import process; {call}"],
                              start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        for _ in range(600):  # the program has started once its pid is written
            if pid_file.exists() and pid_file.read_text():
                break
            assert caller.poll() is None, "the caller ended before the program started"
            time.sleep(0.1)
    finally:
        os.killpg(caller.pid, signal.SIGKILL)  # as a node's job killer or Ctrl-C reaches RunShard
        caller.wait()
    pid = int(pid_file.read_text())
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the program outlived its caller's process group")


def test_run_bounded_returns_the_status_and_writes_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    program = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"
    assert process.run_bounded([sys.executable, "-c", program], timeout=None, cwd=tmp_path, log=log) == 3
    assert sorted(log.read_text().splitlines()) == ["to stderr", "to stdout"]


def test_run_bounded_cannot_start_a_missing_program(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        process.run_bounded([str(tmp_path / "no-such-program")], timeout=5)


def test_captured_output_and_status_come_back_and_a_hang_is_cut(tmp_path: Path) -> None:
    status, out, err = process.run_captured(
        [sys.executable, "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"],
        timeout=60)
    assert (status, out, err) == (3, b"to stdout\n", b"to stderr\n")
    with pytest.raises(process.TimedOut):
        process.run_captured([sys.executable, "-c", "import time; time.sleep(600)"], timeout=1)
