"""Fail fast through the real luigi command line: a non-zero exit soon, the reason as the last line.

Every run has a subprocess timeout far below Luigi's 15-minute retry: a run that hangs fails the test.
"""
from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.layout import Layout

from .conftest import ROOT, Site, luigi_executable, running_luigid, snapshot, write_config
from .s3server import free_port, run_luigi
from .test_luigid import ENGINE, start_while_the_first_runs_ocr

HANG = 120  # seconds; a run that waits for Luigi's retry (900 s) is stopped here and fails
SETTINGS_ERROR = 2
MISSING_DATA = 20
TASK_FAILED = 30


def incoming(tmp_path: Path, names: tuple[str, ...] = ("alpha", "beta")) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.pdf").write_bytes(samples.text_pdf([f"Text of {name}"]))
    return folder


def site_with(kind: str, tmp_path: Path, source: Path) -> Site:
    """``shipped``: the repository's luigi.cfg with base_dir and source set; ``minimal``: only those."""
    root = tmp_path / "site"
    (root / "data").mkdir(parents=True)
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # type: ignore[assignment,method-assign]
    if kind == "shipped":
        config.read(ROOT / "luigi.cfg")
    values = {"pipeline": {"base_dir": root / "data"}, "download": {"source": source}, "ocr": {"engine": "text"}}
    for section, keys in values.items():
        if not config.has_section(section):
            config.add_section(section)
        for key, value in keys.items():
            config.set(section, key, str(value))
    with open(root / "luigi.cfg", "w") as handle:
        config.write(handle)
    return Site(root, root / "luigi.cfg")


def last_line(result: subprocess.CompletedProcess) -> str:
    return [line for line in result.stdout.splitlines() if line.strip()][-1]


def assert_stopped(result: subprocess.CompletedProcess, code: int, *parts: str) -> str:
    line = last_line(result)
    assert result.returncode == code, result.stdout[-4000:]
    assert line.startswith("ERROR: "), result.stdout[-4000:]
    for part in parts:
        assert part in line, (part, line)
    return line


@pytest.mark.parametrize("kind, workers", [("shipped", "1"), ("minimal", "2")])
def test_a_failed_task_ends_the_run_at_once_and_the_next_run_retries(tmp_path, kind, workers):
    site = site_with(kind, tmp_path, incoming(tmp_path))
    blocker = site.base / "05_processed"
    blocker.write_text("a file where the stage folder should be")

    failed = site.luigi("ProcessAll", "--run-id", "one", "--workers", workers, check=False, merged=True,
                        timeout=HANG)

    line = assert_stopped(failed, TASK_FAILED, "Finalize(batch=0001", "failed", "Not a directory",
                          str(blocker), "run the same command again")
    assert "Luigi Execution Summary" in failed.stdout.split(line)[0]  # the reason comes after the summary
    batch = site.layout.batch_dir(1)
    assert sorted(p.name for p in batch.glob("*.pdf")) == ["alpha.pdf", "beta.pdf"]  # nothing deleted

    blocker.unlink()
    site.luigi("ProcessAll", "--run-id", "two", "--workers", workers, timeout=HANG)
    for name in ("alpha", "beta"):
        assert f"Text of {name}" in json.loads(site.layout.processed_ocr(name).read_text())["text"]


@pytest.mark.parametrize("kind", ["shipped", "minimal"])
def test_batch_tasks_do_not_open_a_batch_and_moving_nothing_say_how_to(tmp_path, kind):
    site = site_with(kind, tmp_path, incoming(tmp_path))
    site.luigi("Download", "--run-id", "one", timeout=HANG)
    before = snapshot(site.base)
    expected = (f"ERROR: batch 0007 does not exist under {site.base / '03_ocr_processing'}; run "
                "`luigi --module pipeline CreateBatch --batch 7` or ProcessAll to open one")
    for task in (["Finalize"], ["Finalize", "--partial"], ["SplitResults"], ["OCRBatch"], ["PlanChunks"]):
        result = site.luigi(*task, "--batch", "7", check=False, merged=True, timeout=HANG)
        assert result.returncode == SETTINGS_ERROR, result.stdout[-4000:]
        assert last_line(result) == expected, result.stdout[-4000:]
        assert snapshot(site.base) == before, task
    # The waiting documents go to the next batch, not to a batch 0007 made by mistake.
    site.luigi("ProcessAll", "--run-id", "two", timeout=HANG)
    assert site.layout.batch_numbers() == ["0001"]


SETTINGS_CASES = {
    "unknown engine": (dict(engine="tesserac"), [], "[ocr] engine = 'tesserac' is not valid: use one of"),
    "unknown executor": (dict(ocr__executor="kubernetes"), [], "[ocr] executor = 'kubernetes' is not valid"),
    "missing base_dir": (dict(pipeline__base_dir="{root}/unmounted/data"), [],
                         "[pipeline] base_dir {root}/unmounted/data does not exist"),
    "missing download source": (dict(source="{root}/incomming"), [],
                                "download source {root}/incomming does not exist"),
    "unreachable luigid": ({}, ["--scheduler-host", "127.0.0.1", "--scheduler-port", "{port}"],
                           "cannot reach the central scheduler luigid at 127.0.0.1:{port}"),
}


@pytest.mark.parametrize("case", SETTINGS_CASES)
def test_wrong_settings_stop_the_run_before_anything_moves(make_site, tmp_path, case):
    overrides, extra, expected = SETTINGS_CASES[case]
    values = {"root": tmp_path / "site", "port": free_port()}  # nothing listens on that port
    overrides = {"source": incoming(tmp_path), **{k: str(v).format(**values) for k, v in overrides.items()}}
    site = make_site(**overrides)
    before = snapshot(tmp_path)

    result = site.luigi("ProcessAll", *(a.format(**values) for a in extra), check=False, merged=True,
                        timeout=HANG)

    assert_stopped(result, SETTINGS_ERROR, expected.format(**values))
    assert "Traceback" not in result.stdout
    assert snapshot(tmp_path) == before  # nothing downloaded, batched or created


def test_a_luigi_config_path_naming_no_file_stops_the_run(make_site, tmp_path):
    site = make_site(source=incoming(tmp_path))
    missing = Site(site.root, site.root / "site.cfg")
    result = missing.luigi("ProcessAll", check=False, merged=True, timeout=HANG)
    assert_stopped(result, SETTINGS_ERROR, f"LUIGI_CONFIG_PATH names {missing.config}, which does not exist")
    assert not (site.base / "01_downloaded").exists()


def test_base_dir_is_created_when_the_site_asks_for_it(make_site, tmp_path):
    base = tmp_path / "fresh" / "data"
    site = make_site(source=incoming(tmp_path), pipeline__base_dir=base, pipeline__create_base_dir="true")
    site.luigi("ProcessAll", "--run-id", "one", timeout=HANG)
    assert "Text of alpha" in json.loads(Layout(base, 2).processed_ocr("alpha").read_text())["text"]


def test_sites_sharing_a_luigid_both_end_when_the_task_they_share_fails(make_site, tmp_path):
    """A site waiting for a task the other runs (keep_alive) takes it over once when it fails, then ends too."""
    log, gate = tmp_path / "engine.log", tmp_path / "gate"
    script = tmp_path / "engine.py"
    script.write_text(ENGINE.format(root=str(ROOT), log=str(log), gate=str(gate)))  # OCR held until the gate opens
    site = make_site(source=incoming(tmp_path), engine="command", worker__wait_interval=0.2,
                     worker__wait_jitter=0.2, ocr__command=f"{sys.executable} {script} {{chunk_list}} {{output}}")
    site.luigi("Download", "--run-id", "d")
    site.luigi("CreateBatch", "--batch", "5")
    blocker = site.base / "04_ocr_completed"  # SplitResults fails while Finalize waits for it
    blocker.write_text("a file where the stage folder should be")
    luigid_dir = tmp_path / "luigid"
    luigid_dir.mkdir()
    # luigid retries a failed task after retry_delay (900 s by default), looked at when it prunes.
    with running_luigid(luigid_dir, retry_delay=1, prune_on_get_work="true") as port:

        def finalize(spelling: str) -> subprocess.Popen:  # two command lines: Luigi's pid lock is per command line
            return subprocess.Popen(
                [luigi_executable(), "--module", "pipeline", "Finalize", "--batch", spelling,
                 "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)],
                env=site.env(), cwd=site.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        sites = [finalize("5")]
        try:  # the second site asks while the first runs the OCR, and waits for it
            sites.append(start_while_the_first_runs_ocr(sites[0], log, lambda: finalize("0005"), port))
        finally:
            gate.touch()
        outputs = [p.communicate(timeout=HANG)[0] for p in sites]
    for process, output in zip(sites, outputs, strict=True):
        line = [text for text in output.splitlines() if text.strip()][-1]
        assert process.returncode == TASK_FAILED, output[-4000:]
        assert line.startswith("ERROR: SplitResults(batch=0005) failed") and str(blocker) in line, output[-4000:]
    assert len(log.read_text().splitlines()) == 1  # the OCR itself ran once, for both sites
    assert sorted(p.name for p in site.layout.batch_dir(5).glob("*.pdf")) == ["alpha.pdf", "beta.pdf"]


def test_a_shard_file_that_does_not_exist_ends_the_run_with_missing_data(tmp_path, moto_endpoint, bucket):
    """An input made elsewhere (an external task) that is missing: keep_alive must not wait for it forever."""
    config = tmp_path / "luigi.cfg"
    write_config(config, {"s3": {"endpoint_url": moto_endpoint, "shard_prefix": f"s3://{bucket}/shards",
                                 "status_prefix": f"s3://{bucket}/status", "output_prefix": f"s3://{bucket}/out",
                                 "work_dir": tmp_path / "work", "engine": "text"}})
    result = run_luigi(config, "RunShard", "--shard", "3", timeout=HANG)
    assert_stopped(result, MISSING_DATA, f"ShardFile(uri=s3://{bucket}/shards/shard_3.txt) does not exist")
    assert not (tmp_path / "work").exists()
