"""The lease lock on a shared folder: one holder at a time, renewed while held, taken over when its
holder is gone (expired, or a dead process on this host), one winner when several take over at once,
and a holder whose lease was taken over learns it."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from pipeline import lease

ROOT = Path(__file__).resolve().parent.parent


def holder_process(path: Path, seconds: float, then: str) -> subprocess.Popen:
    """A separate process that takes the lease, says so on stdout, then runs ``then``."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from pipeline import lease
        held = lease.try_acquire(Path({str(path)!r}), {seconds})
        print("held" if held else "not held", flush=True)
    """) + textwrap.dedent(then)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)


def test_one_holder_at_a_time_and_nothing_left_after_release(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    with lease.hold(path, 30) as held:
        assert lease.is_held(path)
        assert lease.read(path) == held.holder and held.holder.pid == os.getpid()
        assert lease.try_acquire(path, 30) is None  # another holder in this process too
    assert list(tmp_path.iterdir()) == []
    assert lease.try_acquire(path, 30) is not None


def test_a_held_lease_is_renewed_and_never_taken_while_its_holder_runs(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    with lease.hold(path, 2.0) as held:
        first = lease.read(path)
        assert first is not None
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:  # three lease lengths: stale unless renewed
            assert lease.try_acquire(path, 2.0) is None
            time.sleep(0.05)
        later = lease.read(path)
        assert later is not None and later.token == first.token
        assert later.renewals > first.renewals and later.expires > first.expires
        assert not held.lost.is_set()


def test_the_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    child = holder_process(path, 3600, "os.kill(os.getpid(), 9)")
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    assert child.wait(30) == -signal.SIGKILL
    dead = lease.read(path)
    assert dead is not None and dead.pid == child.pid and dead.expires > time.time() + 3000
    taken = lease.try_acquire(path, 3600)  # an hour before expiry: the dead pid decides
    assert taken is not None
    assert lease.read(path) == taken.holder
    taken.release()
    assert list(tmp_path.iterdir()) == []


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    child = holder_process(path, 1.0, """
        held.lost.wait(60)
        print("lost to", held.taker.pid if held.taker else None, flush=True)
    """)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    os.kill(child.pid, signal.SIGSTOP)  # alive, but renews nothing: a hung or cut-off host
    try:
        assert lease.try_acquire(path, 1.0) is None  # not expired yet
        waited: list[lease.Holder | None] = []
        with lease.hold(path, 1.0, waiting=waited.append) as taken:
            assert [h.pid if h else None for h in waited] == [child.pid]
            os.kill(child.pid, signal.SIGCONT)
            assert child.stdout.readline().strip() == f"lost to {os.getpid()}"
            assert child.wait(30) == 0
            assert lease.read(path) == taken.holder and not taken.lost.is_set()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.wait(30)


def test_a_lease_left_by_another_host_is_taken_only_after_it_expires(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    other = lease.Holder("elsewhere", 1, "", "f" * 32, time.time(), time.time() + 3600, 0)
    path.write_text(json.dumps(asdict(other)))
    assert lease.is_held(path)  # pid 1 on another host: only its expiry says it is gone
    assert lease.try_acquire(path, 30) is None
    path.write_text(json.dumps({**asdict(other), "expires": time.time() - 1}))
    assert not lease.is_held(path)
    assert lease.try_acquire(path, 30) is not None


def _race(path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait()
    held = lease.try_acquire(Path(path), 30)
    results.put(held is not None)
    barrier.wait()  # hold until every taker has tried
    assert held is None or lease.read(Path(path)) == held.holder
    if held is not None:
        held.release()


def test_several_takers_racing_for_one_stale_lease_make_one_holder(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    context = multiprocessing.get_context("fork")
    takers = 8
    for _round in range(40):
        stale = lease.Holder("elsewhere", 1, "", os.urandom(16).hex(), 0.0, time.time() - 5, 3)
        path.write_text(json.dumps(asdict(stale)))
        barrier, results = context.Barrier(takers), context.Queue()
        processes = [context.Process(target=_race, args=(str(path), barrier, results)) for _ in range(takers)]
        for process in processes:
            process.start()
        won = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
        assert won.count(True) == 1, won
        assert list(tmp_path.iterdir()) == []  # the winner released; no moved-aside file left


def test_work_under_a_lease_taken_over_stops_at_once_with_the_taker_named(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    with lease.hold(path, 0.6) as held:
        taken_over = f"Finalize of batch 0007: its lease .* taken over by host .* pid {os.getpid()}"
        with pytest.raises(lease.LeaseLost, match=taken_over):
            with lease.stop_when_lost(held, "Finalize of batch 0007"):
                os.rename(path, tmp_path / "moved")  # as a taker that judged it stale would
                taker = lease.try_acquire(path, 30)
                assert taker is not None
                time.sleep(60)  # the work: cut short by the renewal that finds the new holder
        assert held.lost.is_set()
    assert lease.read(path) == taker.holder  # the holder that lost it leaves the taker's lease alone
    taker.release()


def test_a_takeover_guard_left_by_a_dead_taker_is_cleared_after_a_whole_lease(tmp_path: Path) -> None:
    path = tmp_path / "Stage.lease"
    stale = lease.Holder("elsewhere", 1, "", "e" * 32, 0.0, time.time() - 5, 3)
    path.write_text(json.dumps(asdict(stale)))
    guard = tmp_path / "Stage.lease.takeover"
    guard.touch()  # a taker that died between taking the guard and removing it
    assert lease.try_acquire(path, 30) is None  # a fresh guard: another taker may be at work
    os.utime(guard, (time.time() - 60, time.time() - 60))
    lease.try_acquire(path, 30)  # clears the guard left a whole lease ago
    held = lease.try_acquire(path, 30)
    assert held is not None and lease.read(path) == held.holder
    held.release()
    assert list(tmp_path.iterdir()) == []
