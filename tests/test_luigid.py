"""Two sites asking a real luigid for the same batch at once: every stage runs once."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import samples

from .conftest import luigi_executable, running_luigid

# OCR that logs each chunk it starts, then holds it until the test opens the gate (creates the file).
ENGINE = """\
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from pipeline.olmocr_format import build_record
chunk_list, output, log, gate = sys.argv[1], sys.argv[2], {log!r}, Path({gate!r})
pdfs = [line for line in Path(chunk_list).read_text().splitlines() if line]
with open(log, "a") as handle:
    handle.write(json.dumps(pdfs) + "\\n")
while not gate.exists():
    time.sleep(0.05)
Path(output).write_text("".join(json.dumps(build_record(p, ["text of " + Path(p).stem], version="t")) + "\\n"
                                for p in pdfs))
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)


def scheduler_workers(port: int) -> list[dict]:
    """The workers luigid knows, each with its counts of pending and running tasks."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/worker_list", timeout=10) as response:
        return json.load(response)["response"]


def start_while_the_first_runs_ocr(first: subprocess.Popen, log: Path, start_second: Callable[[], subprocess.Popen],
                                   port: int) -> subprocess.Popen:
    """Start the second site once the first site's OCR holds a chunk, and return when luigid has the
    second site's tasks: it now waits for the work the first one runs."""
    wait_for(lambda: log.exists() and log.read_text() != "" or first.poll() is not None, "the first chunk")
    assert first.poll() is None, first.communicate()[0][-3000:]
    second = start_second()

    def both_wait() -> bool:
        assert second.poll() is None, second.communicate()[0][-3000:]
        workers = scheduler_workers(port)
        return len(workers) == 2 and all(w["num_pending"] + w["num_running"] > 0 for w in workers)

    try:
        wait_for(both_wait, "luigid to have both sites' tasks")
    except BaseException:
        second.kill()
        second.wait()
        raise
    return second


@pytest.fixture
def luigid(tmp_path: Path):
    with running_luigid(tmp_path) as port:
        yield port


def test_two_sites_asking_for_one_batch_run_each_stage_once(make_site, tmp_path, luigid):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for n in range(6):
        (incoming / f"doc{n}.pdf").write_bytes(samples.text_pdf([f"page {n}"] * 4))
    log = tmp_path / "engine.log"
    script = tmp_path / "engine.py"
    gate = tmp_path / "gate"
    script.write_text(ENGINE.format(root=str(Path(__file__).resolve().parent.parent), log=str(log), gate=str(gate)))
    site = make_site(source=incoming, engine="command", ocr__pages_per_chunk=8, worker__keep_alive="true",
                     worker__wait_interval=0.2, ocr__command=f"{sys.executable} {script} {{chunk_list}} {{output}}")
    site.luigi("Download", "--run-id", "d")
    site.luigi("CreateBatch", "--batch", "5")
    scheduler = ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid)]

    def finalize(batch: str) -> subprocess.Popen:
        return subprocess.Popen([luigi_executable(), "--module", "pipeline", "Finalize", "--batch", batch, *scheduler],
                                env=site.env(), cwd=site.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    first = finalize("5")
    try:
        second = start_while_the_first_runs_ocr(first, log, lambda: finalize("0005"), luigid)
    finally:
        gate.touch()
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    # The later site waits while the other runs the work, then exits with [retcode] already_running.
    assert (first.returncode, second.returncode) in {(0, 10), (10, 0)}, "\n".join(o[-3000:] for o in outputs)
    assert "being run by other worker" in outputs[1] or "being run by other worker" in outputs[0]

    runs = [json.loads(line) for line in log.read_text().splitlines()]
    planned = json.loads((site.layout.batch_dir("5") / "chunks.json").read_text())["chunks"]
    assert len(runs) == len(planned) == 3  # each chunk OCRed once, by one of the two sites
    assert sorted(Path(p).stem for run in runs for p in run) == [f"doc{n}" for n in range(6)]
    events = [json.loads(line)["event"] for line in site.layout.events.read_text().splitlines()]
    assert events.count("batch_created") == 1 and events.count("batch_finalized") == 1
    for n in range(6):
        assert json.loads(site.layout.processed_ocr(f"doc{n}").read_text())["text"] == f"text of doc{n}"
