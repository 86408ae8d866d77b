"""Crash-safe writes (pipeline.atomic): temp file, fsync, rename; never a partly written target."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline import atomic


def test_write_bytes_creates_folders_and_leaves_only_the_target(tmp_path):
    target = tmp_path / "a" / "b" / "report.json"

    assert atomic.write_bytes(target, b"first") is True

    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_unchanged_bytes_touch_nothing(tmp_path):
    target = tmp_path / "same.bin"
    atomic.write_bytes(target, b"x" * 1000)
    os.utime(target, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = target.stat()

    assert atomic.write_bytes(target, b"x" * 1000) is False

    after = target.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.bin"]


def test_changed_bytes_of_the_same_size_are_written(tmp_path):
    target = tmp_path / "same_size.bin"
    atomic.write_bytes(target, b"aaaa")
    assert atomic.write_bytes(target, b"bbbb") is True
    assert target.read_bytes() == b"bbbb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same_size.bin"]


def test_the_target_is_replaced_never_rewritten_in_place(tmp_path):
    target = tmp_path / "doc.json"
    atomic.write_bytes(target, b"old content")
    other_name = tmp_path / "hard link"
    os.link(target, other_name)  # whoever still has the old file open or linked keeps it whole

    atomic.write_bytes(target, b"new content, longer")

    assert other_name.read_bytes() == b"old content"
    assert target.read_bytes() == b"new content, longer"


def test_a_failed_write_removes_its_temp_file_and_keeps_the_old_target(tmp_path):
    target = tmp_path / "kept.txt"
    atomic.write_bytes(target, b"keep me")
    with pytest.raises(TypeError):
        atomic.write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_write_json_is_canonical_and_idempotent(tmp_path):
    target = tmp_path / "v.json"
    assert atomic.write_json(target, {"b": 1, "a": "é"}) is True
    assert target.read_bytes() == '{\n  "a": "é",\n  "b": 1\n}\n'.encode()
    assert atomic.write_json(target, {"a": "é", "b": 1}) is False
    assert atomic.read_json(target) == {"a": "é", "b": 1}


def test_link_or_copy_makes_a_hard_link_never_a_symlink(tmp_path):
    source = tmp_path / "src.pdf"
    source.write_bytes(b"%PDF-1.4 data")
    target = tmp_path / "batch" / "src.pdf"
    assert atomic.link_or_copy(source, target) == "hardlink"
    assert not target.is_symlink() and os.path.samefile(source, target)
    assert atomic.link_or_copy(source, target) == "hardlink"  # a rerun finds its own link
    other = tmp_path / "other.pdf"
    other.write_bytes(b"different")
    with pytest.raises(FileExistsError):
        atomic.link_or_copy(other, target)  # never overwrites a different file
    assert target.read_bytes() == b"%PDF-1.4 data"


def test_remove_files_reports_what_it_removed(tmp_path):
    present = tmp_path / "present"
    present.write_bytes(b"1")
    assert atomic.remove_files([present, tmp_path / "absent"]) == [present]
    assert not present.exists()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline import atomic

    target, size = Path(sys.argv[1]), int(sys.argv[2])
    contents = [b"A" * size, b"B" * (size + 4096)]
    n = 0
    while True:
        atomic.write_bytes(target, contents[n % 2])
        n += 1
        if n == 1:
            print("first", flush=True)
""")


def test_a_writer_killed_at_any_moment_never_leaves_a_partial_target(tmp_path):
    """SIGKILL a process that rewrites a large file in a loop: the target is always one whole version."""
    size = 8 << 20
    whole = {b"A" * size, b"B" * (size + 4096)}
    target = tmp_path / "big.bin"
    rng = random.Random(1234)
    interrupted = 0
    rounds = 0
    while rounds < 40 and interrupted < 3:
        rounds += 1
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"first\n"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert target.read_bytes() in whole
        leftovers = [p for p in tmp_path.iterdir() if p != target]
        # A kill mid-write may leave a hidden temp file beside the target, never under its name.
        assert all(p.name.startswith(".big.bin.") and p.name.endswith(".tmp") for p in leftovers)
        if leftovers:
            interrupted += 1
            for p in leftovers:
                p.unlink()
    assert interrupted >= 1, "no kill landed inside a write; the test did not exercise the crash"
