"""base_dir on a small tmpfs: a full disk during download, split and finalize gives one clear error,
deletes nothing, and a rerun after space is freed ends where an undisturbed run ends. Backpressure
stops downloads before the disk fills."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import snapshot
from .end_state import leftovers, make_inputs, only, undisturbed
from .invariants import Reference, assert_converged, assert_safe

PAD = 200_000  # bytes added to each input PDF, so a few fill a small disk


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> Reference:
    """An undisturbed run of sixteen documents (the padding changes no text, so it is left out)."""
    root = tmp_path_factory.mktemp("disk_full_reference")
    make_inputs(root / "incoming", 16)
    return undisturbed(root / "site", root / "incoming")


@pytest.fixture
def small_disk():
    """small_disk(folder, megabytes): mount a tmpfs of that size on ``folder``; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(folder: Path, megabytes: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; run this test as root to check a full disk")
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                                capture_output=True, text=True, check=False)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); a full disk is not checked")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(base: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on base's volume."""
    filler = base / "filler.bin"
    size = shutil.disk_usage(base).free - leave
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(0, size))
    return filler


def assert_clear_disk_full(result: subprocess.CompletedProcess, stage_folder: str) -> None:
    assert result.returncode != 0
    output = result.stdout + result.stderr
    line = next((line for line in output.splitlines() if "disk full writing" in line), "")
    assert line, output[-3000:]
    assert stage_folder in line and "bytes free" in line and "free space there" in line and "rerun" in line


def test_disk_full_during_download_stops_clearly_and_a_rerun_converges(make_site, tmp_path, small_disk, expected):
    source = tmp_path / "incoming"
    names = make_inputs(source, 6, pad_bytes=PAD)
    # One download at a time: the disk fills while a PDF is copied, the same way on every run.
    site = make_site(source=source, backpressure__min_free_gb=0, pipeline__workers=1,
                     core__lock_pid_dir=tmp_path / "locks")
    small_disk(site.base, 4)
    filler = fill(site.base, 3 * PAD)

    result = site.luigi("ProcessAll", "--run-id", "full", check=False)

    assert_clear_disk_full(result, "01_downloaded")
    assert_safe(site.base)
    assert leftovers(site.base) == []
    assert not (site.base / "05_processed").exists()
    events = [json.loads(line) for line in site.layout.events.read_text().splitlines()]
    assert any(e["event"] == "download_failed" and "disk full" in e["message"] for e in events)

    filler.unlink()
    site.luigi("ProcessAll", "--run-id", "after")
    assert_converged(site.base, only(expected, names))
    before = snapshot(site.base)
    site.luigi("ProcessAll", "--run-id", "after")
    assert snapshot(site.base) == before


@pytest.mark.parametrize("leave", [8192, pytest.param(0, marks=pytest.mark.slow),
                                   pytest.param(20480, marks=pytest.mark.slow)])
@pytest.mark.parametrize("stage, done_before, folder", [
    ("split", "OCRBatch", "04_ocr_completed"),
    ("finalize", "SplitResults", "05_processed"),
])
def test_disk_full_during_split_or_finalize_deletes_nothing_and_a_rerun_converges(
        make_site, tmp_path, small_disk, expected, stage, done_before, folder, leave):
    source = tmp_path / "incoming"
    names = make_inputs(source, 6)
    site = make_site(source=source, backpressure__min_free_gb=0, core__lock_pid_dir=tmp_path / "locks")
    small_disk(site.base, 4)
    site.luigi("Download", "--run-id", "d")
    site.luigi("CreateBatch", "--batch", "1")
    site.luigi(done_before, "--batch", "1")
    batch = site.layout.batch_dir("1")
    pdfs_before = sorted(p.name for p in batch.glob("*.pdf"))
    assert len(pdfs_before) == len(names)
    filler = fill(site.base, leave)  # 4 KiB pages: none to a few files written, then ENOSPC

    result = site.luigi("Finalize", "--batch", "1", check=False)

    assert_clear_disk_full(result, folder)
    assert sorted(p.name for p in batch.glob("*.pdf")) == pdfs_before  # nothing deleted
    assert_safe(site.base)
    assert leftovers(site.base) == []
    assert not (batch / "finalized.json").exists()

    filler.unlink()
    site.luigi("Finalize", "--batch", "1")
    assert_converged(site.base, only(expected, names))
    before = snapshot(site.base)
    site.luigi("Finalize", "--batch", "1")
    assert snapshot(site.base) == before


def test_backpressure_stops_downloads_before_the_disk_fills(make_site, tmp_path, small_disk, expected):
    source = tmp_path / "incoming"
    names = make_inputs(source, 16, pad_bytes=PAD)  # 3.2 MB: more than the disk holds
    # Four downloads run at once: the threshold leaves room for all four to land.
    site = make_site(source=source, backpressure__min_free_gb=0.0012, pipeline__workers=4,
                     core__lock_pid_dir=tmp_path / "locks")
    small_disk(site.base, 3)

    passes = []
    for number in range(4):  # each pass finalizes what it downloaded, which frees the space again
        result = site.luigi("ProcessAll", "--run-id", f"pass{number}")  # fails on any error, ENOSPC too
        assert "disk full" not in result.stdout + result.stderr
        passes.append(json.loads(next((site.layout.manifests / "downloads").glob(f"*_pass{number}.json"))
                                 .read_text()))
        if finalized_all(site, names):
            break
    assert passes[0]["paused"].startswith("less than 0.0012 GB free") and 0 < passes[0]["fetched"] < 16, passes
    assert sum(p["fetched"] for p in passes) == 16 and all(p["failed"] == 0 for p in passes)
    assert_converged(site.base, only(expected, names))


def finalized_all(site, names: list[str]) -> bool:
    return all(site.layout.processed_ocr(i).is_file() for i in names)
