"""cloud/preflight: a node's checks before RunShard, against a real moto server and the real
tools of this machine; each failing check says what to fix."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.cloud import preflight, s3
from pipeline.config import OCRConfig, S3Config


def storage_at(endpoint: str) -> s3.Storage:
    return s3.Storage(s3.S3Settings(endpoint_url=endpoint, max_attempts=2))


def test_free_space_is_checked_on_the_nearest_existing_folder(tmp_path):
    ok = preflight.free_space_check("work volume free", tmp_path / "not" / "yet", 0)
    assert ok.ok and f"GB free on {tmp_path}" in ok.detail
    short = preflight.free_space_check("work volume free", tmp_path, 10 ** 9)
    assert not short.ok and "lower the [s3] threshold" in short.fix


def test_temp_files_must_land_on_the_work_volume(tmp_path, monkeypatch):
    work = Path(tempfile.gettempdir()) / f"work-{tmp_path.name}"
    assert preflight.tempdir_check(work).ok
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other_volume:
        monkeypatch.setattr(tempfile, "tempdir", other_volume)  # what TMPDIR=/dev/shm/... gives a process
        check = preflight.tempdir_check(work)
    assert not check.ok and check.fix.startswith(f"export TMPDIR={work.resolve() / 'tmp'}")


def test_access_is_read_and_write_where_the_run_writes(moto_endpoint, s3_client, bucket):
    prefixes = {"shard_prefix": f"s3://{bucket}/shards", "status_prefix": f"s3://{bucket}/status",
                "output_prefix": "s3://no-such-bucket-here/outputs", "other": ""}
    checks = preflight.access_checks(storage_at(moto_endpoint), prefixes, writable={"status_prefix", "output_prefix"})
    by_name = {c.name: c for c in checks}
    assert by_name["shard_prefix access"].ok and by_name["shard_prefix access"].detail.endswith("read ok")
    assert by_name["status_prefix access"].ok and by_name["status_prefix access"].detail.endswith("read and write ok")
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)  # the probe object is gone again
    failed = by_name["output_prefix access"]
    assert not failed.ok and "NoSuchBucket" in failed.detail and "s3:PutObject" in failed.fix
    assert not by_name["other set"].ok and by_name["other set"].fix == "set [s3] other in luigi.cfg"


def test_engine_checks_find_the_program_or_say_how_to_get_it():
    found = preflight.engine_check("command", f"{sys.executable} -c pass {{input}} {{outdir}}", "python")
    assert found.ok and found.detail == f"{sys.executable} -> {shutil.which(sys.executable)}"
    missing = preflight.engine_check("command", "no-such-program {input}", "python")
    assert not missing.ok and missing.fix == "install no-such-program or give its full path in [s3] command"
    typo = preflight.engine_check("command", "ocr {inptu}", "python")
    assert not typo.ok and "unknown placeholder {inptu}" in typo.detail and typo.fix == "fix [s3] command"
    assert preflight.engine_check("tesseract", "", "python").ok  # tesseract and pdftoppm are installed here
    assert preflight.engine_check("text", "", "python").ok
    olmocr = preflight.engine_check("olmocr", "", sys.executable)  # this interpreter has no olmocr
    assert not olmocr.ok and "pip install olmocr" in olmocr.fix
    unknown = preflight.engine_check("gpu-ocr", "", "python")
    assert not unknown.ok and unknown.fix == "set [s3] engine to olmocr, tesseract, text or command"


def test_node_checks_of_a_gpu_engine_include_the_gpu_and_name_every_fix(moto_endpoint, bucket, tmp_path):
    cfg = S3Config(endpoint_url=moto_endpoint, shard_prefix=f"s3://{bucket}/shards",
                   status_prefix=f"s3://{bucket}/status", output_prefix=f"s3://{bucket}/outputs",
                   work_dir=str(tmp_path / "work"), min_root_free_gb=0, min_work_free_gb=10 ** 9, engine="olmocr")
    checks = preflight.node_checks(storage_at(moto_endpoint), cfg, OCRConfig(olmocr_python=sys.executable))
    assert [c.name for c in checks] == [
        "root volume free", "work volume free", "temp dir on work volume", "shard_prefix access",
        "status_prefix access", "output_prefix access", "engine olmocr", "GPU visible"]
    failed = [c.name for c in checks if not c.ok]
    assert failed == ["work volume free", "engine olmocr", "GPU visible"]  # no GPU on this machine
    summary = preflight.failure_summary(checks)
    assert summary.startswith("Preflight: 3 checks failed: work volume free: free space on the volume of ")
    assert "engine olmocr: pip install olmocr" in summary and "GPU visible: the engine needs a GPU" in summary
    report = preflight.format_checks(checks)
    assert "[ok] status_prefix access" in report and "[FAIL] GPU visible" in report and "\n       fix: " in report
    assert preflight.failure_summary([c for c in checks if c.ok]) == ""
