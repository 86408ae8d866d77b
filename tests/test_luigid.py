"""Two sites asking a real luigid for the same batch at once: every stage runs once."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import samples

from .conftest import luigi_executable, running_luigid

ENGINE = """\
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from pipeline.olmocr_format import build_record
chunk_list, output, log = sys.argv[1], sys.argv[2], {log!r}
pdfs = [line for line in Path(chunk_list).read_text().splitlines() if line]
with open(log, "a") as handle:
    handle.write(json.dumps(pdfs) + "\\n")
time.sleep(2)  # long enough for the second site to ask for the same work while this runs
Path(output).write_text("".join(json.dumps(build_record(p, ["text of " + Path(p).stem], version="t")) + "\\n"
                                for p in pdfs))
"""


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
    script.write_text(ENGINE.format(root=str(Path(__file__).resolve().parent.parent), log=str(log)))
    site = make_site(source=incoming, engine="command", ocr__command=f"{sys.executable} {script} {{chunk_list}} {{output}}",
                     ocr__pages_per_chunk=8, worker__keep_alive="true", worker__wait_interval=0.2)
    site.luigi("Download", "--run-id", "d")
    site.luigi("CreateBatch", "--batch", "5")
    scheduler = ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid)]
    first = subprocess.Popen([luigi_executable(), "--module", "pipeline", "Finalize", "--batch", "5", *scheduler],
                             env=site.env(), cwd=site.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    second = subprocess.Popen([luigi_executable(), "--module", "pipeline", "Finalize", "--batch", "0005", *scheduler],
                              env=site.env(), cwd=site.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
