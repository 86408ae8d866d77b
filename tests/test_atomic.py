"""Crash-safe writes (pipeline.atomic): temp file, fsync, rename; never a partly written target."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline import atomic, faults

from .conftest import ROOT, open_descriptors


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


SIZE = 2 << 20
VERSIONS = (b"A" * SIZE, b"B" * (SIZE + 4096))

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline import atomic

    target, size = Path(sys.argv[1]), int(sys.argv[2])
    if sys.argv[3:]:
        atomic.copy_file(Path(sys.argv[3]), target)  # from a pipe: the test decides how much arrives
    else:
        for n in range(3):
            atomic.write_bytes(target, [b"A" * size, b"B" * (size + 4096)][n % 2])
""")


def writer(target: Path, *source: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(SIZE), *map(str, source)],
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_whole_or_absent(target: Path, versions: set[bytes]) -> list[Path]:
    """The target holds one whole version (or none); anything else is a hidden temp file of it."""
    if target.exists():
        assert target.read_bytes() in versions
    leftovers = [p for p in target.parent.iterdir() if p != target]
    assert all(p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp") for p in leftovers), leftovers
    return leftovers


def test_a_writer_killed_inside_its_write_leaves_the_old_target_whole(tmp_path):
    """SIGKILL while the new version is half written to the temp file: the target keeps the old one."""
    target = tmp_path / "out" / "big.bin"
    atomic.write_bytes(target, VERSIONS[0])
    pipe = tmp_path / "incoming"
    os.mkfifo(pipe)
    child = writer(target, pipe)
    try:
        fd = -1

        def reader_is_there() -> bool:
            nonlocal fd
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: the writer has not opened its end yet
                assert child.poll() is None and exc.errno == errno.ENXIO, exc
                return False
            return True

        wait_for(reader_is_there, "the writer to open the pipe")
        os.set_blocking(fd, True)
        half = len(VERSIONS[1]) // 2 // (1 << 20) * (1 << 20)  # whole blocks of copy_file's 1 MiB
        os.write(fd, VERSIONS[1][:half])
        temp = lambda: [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]  # noqa: E731
        wait_for(lambda: len(temp()) == 1 and temp()[0].stat().st_size == half, "half of the new version")
        child.send_signal(signal.SIGKILL)  # it waits for the rest, inside its write
        child.wait()
        os.close(fd)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert target.read_bytes() == VERSIONS[0]
    (leftover,) = assert_whole_or_absent(target, set(VERSIONS))
    assert leftover.stat().st_size == half

    atomic.write_bytes(target, VERSIONS[1])  # the next write of the target clears what the killed one left
    assert [p.name for p in target.parent.iterdir()] == ["big.bin"]
    assert target.read_bytes() == VERSIONS[1]


@pytest.mark.parametrize("point, n, expected", [
    ("atomic.rename.before", 1, None),  # the first version is written, not yet renamed
    ("atomic.rename.before", 2, VERSIONS[0]),  # the second: the first stays
    ("atomic.rename.after", 2, VERSIONS[1]),  # renamed, its folder not yet synced
], ids=["first-before-rename", "second-before-rename", "second-after-rename"])  # not the megabyte versions
def test_a_writer_killed_around_its_rename_leaves_one_whole_version(tmp_path, point, n, expected):
    """Killed at a named instant of the write (pipeline/faults.py): the target is one whole version."""
    target = tmp_path / "out" / "big.bin"
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    child = writer(target, env={faults.FAULT_DIR: str(faults_dir), faults.PAUSE_AT: f"{point} */big.bin:{n}"})
    try:
        paused = faults_dir / faults.PAUSED
        wait_for(lambda: paused.exists() or child.poll() is not None, f"{point} #{n}")
        assert paused.exists(), f"the writer ended ({child.returncode}) without reaching {point} #{n}"
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
                 "the writer to stop")
    finally:
        child.kill()
        child.wait()
    leftovers = assert_whole_or_absent(target, set(VERSIONS))
    assert (target.read_bytes() if target.exists() else None) == expected
    assert len(leftovers) == (point == "atomic.rename.before")  # the whole new version, never renamed
    atomic.write_bytes(target, b"C")  # the next write of the target clears what the killed one left
    assert [p.name for p in target.parent.iterdir()] == ["big.bin"]


def test_prepare_makes_the_folders_and_removes_only_the_leftovers_of_the_files_to_be_written(tmp_path: Path) -> None:
    folder = tmp_path / "04" / "ab"
    folder.mkdir(parents=True)
    ours = folder / ".doc1.ocr.jsonl.k2j4h5g6.tmp"  # a writer of doc1 killed before its rename
    theirs = folder / ".doc2.ocr.jsonl.a1b2c3d4.tmp"  # a live writer of another file
    kept = [theirs, folder / "doc1.ocr.jsonl.k2j4h5g6.tmp", folder / ".doc1.ocr.jsonl.tmp", folder / "doc3.ocr.jsonl"]
    for path in [ours, *kept]:
        path.write_bytes(b"x")
    long_name = "x" * 80 + ".ocr.jsonl"  # temp names keep the first 50 characters
    long_leftover = folder / f".{long_name[:50]}.zzzzzzzz.tmp"
    long_leftover.write_bytes(b"x")

    targets = [folder / "doc1.ocr.jsonl", folder / long_name, tmp_path / "04" / "cd" / "doc4.ocr.jsonl"]
    made = atomic.prepare(atomic.temp_names(target) for target in targets)

    assert not ours.exists() and not long_leftover.exists()
    assert all(path.exists() for path in kept)
    assert (tmp_path / "04" / "cd").is_dir() and made == [tmp_path / "04"]
    assert atomic.write_bytes(folder / "doc1.ocr.jsonl", b"record\n", prepared=True)
    assert (folder / "doc1.ocr.jsonl").read_bytes() == b"record\n"


def test_many_writes_leave_identical_files_alone_and_only_the_targets(tmp_path: Path) -> None:
    folder = tmp_path / "05" / "ab"
    folder.mkdir(parents=True)
    same = folder / "same.json"
    same.write_bytes(b"kept\n")
    os.utime(same, (1_000_000, 1_000_000))
    files = [(folder / f"doc{n}.json", f"record {n}\n".encode()) for n in range(300)] + [(same, b"kept\n")]

    descriptors = open_descriptors()
    with ThreadPoolExecutor(4) as flushers:
        written = atomic.write_many(files, flushers, group=64)

    assert open_descriptors() == descriptors
    assert sorted(written) == sorted(path for path, _ in files[:300])
    assert all(path.read_bytes() == data for path, data in files)
    assert same.stat().st_mtime == 1_000_000  # a rerun of finished work changes no byte or mtime
    assert sorted(p.name for p in folder.iterdir()) == sorted(path.name for path, _ in files)


def test_many_writes_that_fail_leave_no_temp_file_and_rename_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "05" / "ab"
    folder.mkdir(parents=True)
    old = folder / "doc0.json"
    old.write_bytes(b"old\n")
    files = [(old, b"new\n"), (folder / "doc1.json", b"one\n"), (tmp_path / "missing" / "doc2.json", b"two\n")]

    descriptors = open_descriptors()
    with ThreadPoolExecutor(2) as flushers, pytest.raises(FileNotFoundError):
        atomic.begin_writes(files, flushers)  # the third target's folder is not there

    assert open_descriptors() == descriptors
    assert old.read_bytes() == b"old\n"
    assert sorted(p.name for p in folder.iterdir()) == ["doc0.json"]


def test_many_writes_killed_before_a_rename_leave_old_or_new_whole(tmp_path: Path) -> None:
    folder = tmp_path / "05"
    folder.mkdir()
    for n in range(3):
        (folder / f"doc{n}.json").write_bytes(b"old\n")
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    script = textwrap.dedent(f"""
        from concurrent.futures import ThreadPoolExecutor
        from pathlib import Path
        from pipeline import atomic
        folder = Path({str(folder)!r})
        with ThreadPoolExecutor(2) as flushers:
            atomic.write_many([(folder / f"doc{{n}}.json", b"new\\n") for n in range(3)], flushers)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), faults.FAULT_DIR: str(faults_dir),
           faults.PAUSE_AT: "atomic.rename.before */doc1.json:1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        wait_for(lambda: (faults_dir / faults.PAUSED).exists() or child.poll() is not None, "the second rename")
        assert (faults_dir / faults.PAUSED).exists(), f"the writer ended ({child.returncode}) before the rename"
    finally:
        child.kill()
        child.wait()
    assert [(folder / f"doc{n}.json").read_bytes() for n in range(3)] == [b"new\n", b"old\n", b"old\n"]
    assert len([p for p in folder.iterdir() if p.name.endswith(".tmp")]) == 2  # flushed, never renamed

    atomic.prepare(atomic.temp_names(folder / f"doc{n}.json") for n in range(3))  # the rerun clears them
    with ThreadPoolExecutor(2) as flushers:
        atomic.write_many([(folder / f"doc{n}.json", b"new\n") for n in range(3)], flushers)
    assert sorted(p.name for p in folder.iterdir()) == ["doc0.json", "doc1.json", "doc2.json"]
    assert all((folder / f"doc{n}.json").read_bytes() == b"new\n" for n in range(3))
