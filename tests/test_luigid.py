"""Two sites asking a real luigid for the same batch at once: every stage runs once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import collection, samples
from tasks import ProcessAll, download

from .conftest import Site, luigi_executable, running_luigid, write_config
from .s3server import RETCODES

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
    # The later site waits while the other runs the work, finds the batch finalized and exits 0 too,
    # its last line saying so.
    assert (first.returncode, second.returncode) == (0, 0), "\n".join(o[-3000:] for o in outputs)
    last_lines = {o.rstrip().splitlines()[-1] for o in outputs}
    assert any(re.fullmatch(r"Finalize\(batch=0005, partial=False\) is done; other sites ran [1-9]\d* of its tasks",
                            line) for line in last_lines), last_lines

    runs = [json.loads(line) for line in log.read_text().splitlines()]
    planned = json.loads((site.layout.batch_dir("5") / "chunks.json").read_text())["chunks"]
    assert len(runs) == len(planned) == 3  # each chunk OCRed once, by one of the two sites
    assert sorted(Path(p).stem for run in runs for p in run) == [f"doc{n}" for n in range(6)]
    events = [json.loads(line)["event"] for line in site.layout.events.read_text().splitlines()]
    assert events.count("batch_created") == 1 and events.count("batch_finalized") == 1
    for n in range(6):
        assert json.loads(site.layout.processed_ocr(f"doc{n}").read_text())["text"] == f"text of doc{n}"


def gated_site(root: Path, documents: list[str], gate: Path, **pipeline: object) -> tuple[Site, Path]:
    """A site whose base_dir is ``root``/data, with ``documents`` waiting in its download source and
    the gated OCR engine above (it logs each chunk it starts to the returned file)."""
    incoming = root / "incoming"
    incoming.mkdir(parents=True)
    for n, name in enumerate(documents):
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"page {n}"] * 4))
    log, script = root / "engine.log", root / "engine.py"
    script.write_text(ENGINE.format(root=str(Path(__file__).resolve().parent.parent), log=str(log), gate=str(gate)))
    config = root / "luigi.cfg"
    write_config(config, {
        "core": {"autoload_range": "false"}, "retcode": RETCODES, "worker": {"wait_interval": 0.2, "wait_jitter": 0.2},
        "pipeline": {"base_dir": root / "data", "workers": 2, **pipeline}, "download": {"source": incoming},
        "ocr": {"executor": "local", "engine": "command", "pages_per_chunk": 8, "parallel_chunks": 2,
                "command": f"{sys.executable} {script} {{chunk_list}} {{output}}"},
        "backpressure": {"min_free_gb": 0.1},
    })
    return Site(root, config), log


def process_all(site: Site, port: int, *args: str) -> subprocess.Popen:
    """ProcessAll through the luigid on ``port``, the same command line on every site."""
    return subprocess.Popen([luigi_executable(), "--module", "pipeline", "ProcessAll", "--run-id", "hourly",
                             "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), *args],
                            env=site.env(), cwd=site.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(processes: list[subprocess.Popen], gate: Path) -> list[str]:
    """Open the gate, wait for every process and return their outputs (killing any left on a failure)."""
    gate.touch()
    try:
        return [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def luigid_tasks(port: int) -> list[dict]:
    """Every task luigid knows that is done, with its id."""
    query = urllib.parse.urlencode({"data": json.dumps({"status": "DONE"})})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?{query}", timeout=10) as response:
        return [{"id": task_id, **task} for task_id, task in json.load(response)["response"].items()]


def summary_block(output: str) -> str:
    """The run summary ProcessAll prints (documents finalized ... results / open batches)."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("documents finalized:"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("results:"))
    if end + 1 < len(lines) and lines[end + 1].startswith("open batches:"):
        end += 1
    return "\n".join(lines[start:end + 1])


def test_two_collections_with_the_same_batches_on_one_luigid_run_side_by_side(tmp_path: Path, luigid: int) -> None:
    gate = tmp_path / "gate"
    documents = [f"doc{n}" for n in range(4)]
    # Both base_dirs are called "data"; each collection takes the name its first run records.
    sites = [gated_site(tmp_path / name, documents, gate) for name in ("north", "south")]
    runs: list[subprocess.Popen] = []
    try:
        for site, log in sites:  # each collection's OCR starts while the other's is held: neither waits
            runs.append(process_all(site, luigid))
            wait_for(lambda log=log: log.exists() and log.read_text() != "" or runs[-1].poll() is not None,
                     f"the first chunk of {site.root.name}")
            assert runs[-1].poll() is None, runs[-1].communicate()[0][-3000:]
    finally:
        outputs = finish(runs, gate)
    assert [r.returncode for r in runs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    names = [collection.recorded(site.base) for site, _ in sites]
    assert None not in names and names[0] != names[1], names
    for (site, log), output in zip(sites, outputs, strict=True):
        assert "documents finalized: 4" in output, output[-3000:]
        assert sorted(Path(p).stem for line in log.read_text().splitlines() for p in json.loads(line)) == documents
        for name in documents:
            assert json.loads(site.layout.processed_ocr(name).read_text())["text"] == f"text of {name}"
    tasks = luigid_tasks(luigid)
    for family in ("ProcessAll", "CreateBatch", "Finalize"):
        found = [t for t in tasks if t["name"] == family]
        assert sorted(t["params"]["collection"] for t in found) == sorted(names), found
        assert len({t["id"] for t in found}) == 2
        for task in found:  # the id and what the visualizer shows both name the collection
            assert task["params"]["collection"][:16] in task["id"]
            assert f"collection={task['params']['collection']}" in task["display_name"]
    finalizes = [t for t in tasks if t["name"] == "Finalize"]
    assert {t["params"]["batch"] for t in finalizes} == {"0001"}  # the same batch number in both


def test_two_sites_on_one_collection_both_exit_0_and_print_the_same_summary(tmp_path: Path, luigid: int) -> None:
    gate = tmp_path / "gate"
    documents = [f"doc{n}" for n in range(6)]
    site, log = gated_site(tmp_path / "shared", documents, gate)
    # Two hosts: the same command line on one base_dir (--no-lock: Luigi's own lock is per host).
    first = process_all(site, luigid, "--no-lock")
    runs = [first]
    try:
        runs.append(start_while_the_first_runs_ocr(first, log, lambda: process_all(site, luigid, "--no-lock"), luigid))
    finally:
        outputs = finish(runs, gate)
    assert [r.returncode for r in runs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    # Every stage ran once, whichever site ran it.
    chunk_runs = [json.loads(line) for line in log.read_text().splitlines()]
    planned = json.loads((site.layout.batch_dir("1") / "chunks.json").read_text())["chunks"]
    assert len(chunk_runs) == len(planned) == 3
    assert sorted(Path(p).stem for run in chunk_runs for p in run) == documents
    kinds = [json.loads(line)["event"] for line in site.layout.events.read_text().splitlines()]
    assert kinds.count("batch_created") == 1 and kinds.count("batch_finalized") == 1, kinds
    assert kinds.count("chunk_planned") == 3 and kinds.count("split") == 1, kinds
    assert len(list((site.layout.manifests / "runs").glob("process_all_*.json"))) == 1

    # Both print the same summary: the one of the run, whoever ran it.
    blocks = [summary_block(output) for output in outputs]
    assert blocks[0] == blocks[1], blocks
    assert blocks[0].splitlines()[:2] == ["documents finalized: 6", "pages:               24"], blocks[0]


def test_a_process_all_pass_is_named_in_its_task_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without --run-id, the pass is the minute it started in, and that is in the task's parameters:
    # a site whose cron started a minute later asks luigid for another pass, never for the same task
    # with its output under another name.
    monkeypatch.setattr(download, "this_minute", lambda: "2026-11-26T1200")
    first = ProcessAll()
    monkeypatch.setattr(download, "this_minute", lambda: "2026-11-26T1201")
    later = ProcessAll()
    assert first.task_id != later.task_id
    for task in (first, later):
        again = ProcessAll.from_str_params(task.to_str_params())  # as a worker loads a task luigid names
        assert again.output().path == task.output().path
        assert task.output().path.endswith(f"process_all_{task.param_kwargs['run_id']}.json")
