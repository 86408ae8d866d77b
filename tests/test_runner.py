"""cloud/runner: one shard's documents through their engine, with .done/.failed markers and the
attempt policy, on a real moto server (the text engine and small command programs)."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from pipeline import samples
from pipeline.cloud import markers, runner, s3
from pipeline.config import OCRConfig, S3Config
from pipeline.engines import EngineSettings
from tests.fault_proxy import FaultProxy
from tests.test_shards import get, keys, upload


def storage_at(endpoint: str) -> s3.Storage:
    return s3.Storage(s3.S3Settings(endpoint_url=endpoint))


def shard_settings(tmp_path: Path, bucket: str, **values) -> runner.ShardSettings:
    defaults = {"shard": 1, "status_prefix": f"s3://{bucket}/status", "output_prefix": f"s3://{bucket}/outputs",
                "work_dir": tmp_path / "work", "engine": "text", "engine_settings": EngineSettings(workers=1),
                "parallel": 2, "attempts": 2}
    return runner.ShardSettings(**{**defaults, **values})


def test_run_shard_marks_each_document_and_retries_failures_up_to_the_attempts(
        tmp_path, moto_endpoint, s3_client, bucket):
    docs = {"raw/a b.pdf": samples.text_pdf(["alpha"]), "raw/ünï.pdf": samples.text_pdf(["beta", "gamma"]),
            "raw/truncated.pdf": samples.text_pdf(["x"] * 3)[:700] + b"\n%%EOF\n"}
    upload(s3_client, bucket, docs)
    uris = [f"s3://{bucket}/{k}" for k in docs] + ["raw/relative.pdf"]
    settings, storage = shard_settings(tmp_path, bucket), storage_at(moto_endpoint)
    warnings: list[str] = []
    lines: list[str] = []

    def progress(percent: float, message: str, force: bool = False) -> None:
        lines.append(message)

    with pytest.raises(RuntimeError, match=r"shard 1: 1 documents failed \(first: .*truncated.pdf.*rerun RunShard "
                                           r"--shard 1 to retry them \(at most 2 attempts each\)"):
        runner.run_shard(storage, settings, uris, progress, warnings.append)
    assert warnings[0] == ("RunShard 1: shard file line rejected: 'raw/relative.pdf' is neither an s3:// URI "
                           "nor an absolute path")
    assert any("truncated.pdf failed (attempt 1)" in w for w in warnings)
    assert lines[0] == "shard 1: 4 documents, 0 done, 0 failed for good, 3 to run"
    for uri in uris[:2]:
        marker = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uri)}.done"))
        assert marker["attempts"] == 1 and marker["shard"] == 1
        (output,) = marker["outputs"]
        record = json.loads(get(s3_client, bucket, s3.split(output)[1]))
        assert record["metadata"]["Source-File"] == uri
    failed = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[2])}.failed"))
    assert failed["attempts"] == 1 and "no record" in failed["error"]
    assert "status/_shards/shard_1.done" not in keys(s3_client, bucket, "status/")
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]

    summary = runner.run_shard(storage, settings, uris, progress, warnings.append)
    assert summary == {"shard": 1, "documents": 4, "done": 2, "failed": [uris[2]],
                       "rejected": [{"line": "raw/relative.pdf", "reason": warnings[0].split(": ", 2)[2]}]}
    assert json.loads(get(s3_client, bucket, "status/_shards/shard_1.done")) == summary
    assert json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[2])}.failed"))["attempts"] == 2
    assert lines[-1] == "shard 1: finished, 1 documents failed for good"


def test_a_done_marker_whose_outputs_are_gone_is_dropped_and_redone(tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, {"raw/a.pdf": samples.text_pdf(["a"]), "raw/b.pdf": samples.text_pdf(["b"])})
    uris = [f"s3://{bucket}/raw/a.pdf", f"s3://{bucket}/raw/b.pdf"]
    settings, storage = shard_settings(tmp_path, bucket), storage_at(moto_endpoint)
    runner.run_shard(storage, settings, uris)
    (lost,) = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uris[0])}.done"))["outputs"]
    s3_client.delete_object(Bucket=bucket, Key=s3.split(lost)[1])

    plan = runner.plan_shard(storage, settings, uris)
    assert (plan.redo, plan.done, plan.todo) == ([uris[0]], [uris[1]], [(uris[0], 0)])
    assert f"status/{markers.doc_key(uris[0])}.done" not in keys(s3_client, bucket, "status/")


def test_the_shard_command_runs_once_per_document_with_its_placeholders(tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, {"raw/a b.pdf": samples.text_pdf(["a"]), "raw/slow.pdf": samples.text_pdf(["s"])})
    script = tmp_path / "engine.py"
    script.write_text("import pathlib, sys, time\nuri, pdf, outdir, output, shard = sys.argv[1:]\n"
                      "if 'slow' in uri:\n    time.sleep(600)\n"
                      "pathlib.Path(outdir, 'result.txt').write_text(' '.join([uri, output, shard]))\n")
    settings = shard_settings(tmp_path, bucket, engine="command", timeout=1, attempts=1, shard=3,
                              command=f"{sys.executable} {script} {{uri}} {{input}} {{outdir}} {{output}} {{shard}}")
    uri, slow = f"s3://{bucket}/raw/a b.pdf", f"s3://{bucket}/raw/slow.pdf"
    storage = storage_at(moto_endpoint)

    done = runner.run_document(storage, settings, uri)
    output = markers.output_uri(settings.output_prefix, uri)
    assert done.ok and done.outputs == [f"{output}/result.txt"]
    assert get(s3_client, bucket, s3.split(done.outputs[0])[1]).decode() == f"{uri} {output} 3"
    hung = runner.run_document(storage, settings, slow)
    assert not hung.ok and hung.error == "command timed out after 1 s"
    assert json.loads(get(s3_client, bucket, f"status/{markers.doc_key(slow)}.failed"))["error"] == hung.error
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


def test_shard_settings_take_s3_over_ocr(tmp_path):
    cfg = S3Config(status_prefix="s3://b/status", output_prefix="s3://b/out", work_dir=str(tmp_path / "w"),
                   engine="command", command="ocr-one {input} {outdir}", document_timeout=30.0, parallel_documents=3)
    ocr = OCRConfig(engine="tesseract", command="chunk-ocr {chunk_list} {output}", tesseract_lang="deu")
    settings = runner.ShardSettings.from_config(4, cfg, ocr)
    assert (settings.engine, settings.command, settings.timeout, settings.parallel) == (
        "command", "ocr-one {input} {outdir}", 30.0, 3)
    assert settings.engine_settings == EngineSettings.from_config(ocr)
    assert settings.work_dir == (tmp_path / "w").resolve()
    from_ocr = runner.ShardSettings.from_config(4, S3Config(status_prefix="s", output_prefix="o"), ocr)
    assert from_ocr.engine == "tesseract"
    with pytest.raises(ValueError, match="use one of olmocr, tesseract, text, command"):
        runner.ShardSettings.from_config(1, S3Config(status_prefix="s", output_prefix="o", engine="gpu"), ocr)
    with pytest.raises(ValueError, match=r"set command in luigi.cfg \[s3\]"):
        runner.ShardSettings.from_config(1, S3Config(status_prefix="s", output_prefix="o", engine="command"), ocr)
    with pytest.raises(ValueError, match=r"set status_prefix, output_prefix in luigi.cfg \[s3\]"):
        runner.ShardSettings.from_config(1, S3Config(), ocr)


def test_s3_failures_during_claims_renewals_and_markers_are_retried_and_no_done_lacks_its_outputs(
        tmp_path, moto_endpoint, s3_client, bucket):
    names = ["a", "b", "c", "d"]
    upload(s3_client, bucket, {f"raw/{n}.pdf": samples.text_pdf([n]) for n in names})
    uris = [f"s3://{bucket}/raw/{n}.pdf" for n in names]
    script = tmp_path / "engine.py"
    # Each document outlasts one renewal interval (lease / 3); the lease outlasts botocore's backoff
    # over two faults in a row (up to 1 + 2 s), so the faults are retried without losing a claim.
    script.write_text("import pathlib, sys, time\ntime.sleep(3.0)\npathlib.Path(sys.argv[2], 'result.txt')"
                      ".write_text(sys.argv[1])\n")
    settings = shard_settings(tmp_path, bucket, engine="command", lease_seconds=8.0, attempts=1,
                              command=f"{sys.executable} {script} {{uri}} {{outdir}}")
    seen: dict[str, int] = {}
    in_a_row: dict[str, int] = {}
    faults = {".claim": [503, "drop", None, "swallow", 500, None, "drop", None],
              ".done": [503, "swallow", None, "drop"], "result.txt": [None, None, "lose"]}

    def rule(n: int, method: str, path: str) -> int | str | None:
        name = path.split("?")[0]
        kind = next((k for k in faults if name.endswith(k)), "")
        if method != "PUT" or not kind:
            return None
        seen[kind] = seen.get(kind, 0) + 1
        plan = faults[kind]
        action = plan[(seen[kind] - 1) % len(plan)] if seen[kind] <= 2 * len(plan) else None
        # Two faults in a row on one object at most, however the workers' writes interleave: the
        # third of botocore's five attempts gets through.
        in_a_row[name] = in_a_row.get(name, 0) + 1 if action is not None and in_a_row.get(name, 0) < 2 else 0
        return action if in_a_row[name] else None

    with FaultProxy(moto_endpoint, rule) as flaky:
        storage = s3.Storage(s3.S3Settings(endpoint_url=flaky.endpoint, max_attempts=5))
        with pytest.raises(RuntimeError, match=r"outputs of 1 documents are not in storage .*their \.done markers "
                                               r"were removed; rerun RunShard --shard 1"):
            runner.run_shard(storage, settings, uris)
        assert {kind for kind in seen} == set(faults) and flaky.failed >= 8
        runner.run_shard(storage, settings, uris)
    status = keys(s3_client, bucket, "status/")
    left = {k: get(s3_client, bucket, k).decode() for k in status if k.endswith((".claim", ".failed"))}
    assert not left, left
    for uri in uris:
        marker = json.loads(get(s3_client, bucket, f"status/{markers.doc_key(uri)}.done"))
        for output in marker["outputs"]:
            assert get(s3_client, bucket, s3.split(output)[1]).decode() == uri
    assert json.loads(get(s3_client, bucket, "status/_shards/shard_1.done"))["done"] == 4


def test_a_claim_whose_lease_ran_out_while_its_done_marker_was_written_is_released(
        tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, {"raw/a.pdf": samples.text_pdf(["alpha"])})
    uri = f"s3://{bucket}/raw/a.pdf"
    writing_done = threading.Event()

    def rule(n: int, method: str, path: str) -> float | int | None:
        name = path.split("?")[0]
        if method == "PUT" and name.endswith(".done"):
            writing_done.set()
            return 8.0  # the marker's write outlasts the lease twice over, and no renewal meanwhile gets through
        return 503 if method == "PUT" and name.endswith(".claim") and writing_done.is_set() else None

    with FaultProxy(moto_endpoint, rule) as flaky:
        storage = s3.Storage(s3.S3Settings(endpoint_url=flaky.endpoint, max_attempts=1))
        outcome = runner.claim_and_run(storage, shard_settings(tmp_path, bucket, lease_seconds=3.0), uri, 1)
    assert writing_done.is_set() and outcome.ok and not outcome.skipped, outcome
    assert list(keys(s3_client, bucket, "status/")) == [f"status/{markers.doc_key(uri)}.done"]


def test_s3_down_while_the_done_marker_is_written_stops_the_run_and_blames_no_document(
        tmp_path, moto_endpoint, s3_client, bucket):
    upload(s3_client, bucket, {"raw/a.pdf": samples.text_pdf(["alpha"])})
    uri = f"s3://{bucket}/raw/a.pdf"

    def rule(n: int, method: str, path: str) -> str | None:
        return "drop" if method == "PUT" and path.split("?")[0].endswith(".done") else None

    with FaultProxy(moto_endpoint, rule) as flaky:
        storage = s3.Storage(s3.S3Settings(endpoint_url=flaky.endpoint, max_attempts=2))
        with pytest.raises(s3.S3Error, match=r"PUT s3://.*/a\.pdf\.done failed after all attempts: "
                                             r"ConnectionClosedError") as raised:
            runner.claim_and_run(storage, shard_settings(tmp_path, bucket), uri, 1)
    assert raised.value.unavailable
    assert list(keys(s3_client, bucket, "status/")) == []  # no .failed marker, and the claim released
