"""luigid restarted while two sites work on one batch: no stage runs twice, a rerun finishes the rest.

A real luigid (with a state file) schedules `Finalize` for two `luigi` processes on one base_dir;
while the first runs OCRBatch (its OCR held at a gate the test opens) and the second waits for it,
luigid is stopped (SIGTERM: it saves its state; SIGKILL: a crash, the state is lost) and started
again on the same port.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import samples

from .conftest import luigi_executable, snapshot
from .invariants import assert_converged, reference
from .s3server import free_port
from .test_luigid import start_while_the_first_runs_ocr

DOCUMENTS = [f"doc{n}" for n in range(6)]

# OCR that logs each chunk it starts, then (with a gate) holds it until the test creates that file.
ENGINE = """\
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from pipeline.olmocr_format import build_record
chunk_list, output, log, gate = sys.argv[1], sys.argv[2], {log!r}, {gate!r}
pdfs = [line for line in Path(chunk_list).read_text().splitlines() if line]
with open(log, "a") as handle:
    handle.write(json.dumps([Path(p).stem for p in pdfs]) + "\\n")
while gate and not Path(gate).exists():
    time.sleep(0.05)
Path(output).write_text("".join(json.dumps(build_record(p, ["text of " + Path(p).stem], version="t")) + "\\n"
                                for p in pdfs))
"""

# Exit codes the luigi command gives (the sites' [retcode]): done, work left to another site,
# work the scheduler lost track of (a rerun does it).
DONE, ALREADY_RUNNING, NOT_RUN = 0, 10, 25


class Luigid:
    """A luigid on a fixed port that can be stopped and started again with the same state file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        binary = Path(luigi_executable()).with_name("luigid")
        self.binary = str(binary) if binary.exists() else shutil.which("luigid") or "luigid"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--address", "127.0.0.1", "--port", str(self.port),
             "--state-path", str(self.folder / "luigid.pickle"), "--logdir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail("luigid did not start listening within 30 s")

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(timeout=30)

    @property
    def args(self) -> list[str]:
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]


@pytest.fixture
def luigid(tmp_path: Path):
    folder = tmp_path / "luigid"
    folder.mkdir()
    server = Luigid(folder)
    server.start()
    yield server
    server.stop()


def fault_site(make_site, tmp_path: Path, gate: Path):
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    for name in DOCUMENTS:
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"page of {name}"] * 4))
    log = tmp_path / "engine.log"
    script = tmp_path / "engine.py"
    script.write_text(ENGINE.format(root=str(Path(__file__).resolve().parent.parent), log=str(log), gate=str(gate)))
    site = make_site(source=incoming, engine="command", ocr__pages_per_chunk=8, ocr__parallel_chunks=1,
                     ocr__command=f"{sys.executable} {script} {{chunk_list}} {{output}}", worker__keep_alive="true",
                     worker__wait_interval=0.2, **{"core__rpc-retry-wait": 1, "core__rpc-retry-attempts": 10})
    site.luigi("Download", "--run-id", f"luigid-{tmp_path.name}")
    site.luigi("CreateBatch", "--batch", "81")
    return site, log


def chunk_runs(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory):
    """The outcome of the same documents through one site with Luigi's local scheduler."""
    from .conftest import Site, write_config

    root = tmp_path_factory.mktemp("undisturbed")
    incoming = root / "incoming"
    incoming.mkdir()
    for name in DOCUMENTS:
        (incoming / f"{name}.pdf").write_bytes(samples.text_pdf([f"page of {name}"] * 4))
    script = root / "engine.py"
    script.write_text(ENGINE.format(root=str(Path(__file__).resolve().parent.parent), log=str(root / "engine.log"),
                                    gate=""))
    write_config(root / "luigi.cfg", {
        "core": {"autoload_range": "false"}, "pipeline": {"base_dir": root / "data"},
        "download": {"source": incoming}, "backpressure": {"min_free_gb": 0.1},
        "ocr": {"executor": "local", "engine": "command", "pages_per_chunk": 8,
                "command": f"{sys.executable} {script} {{chunk_list}} {{output}}"},
    })
    site = Site(root, root / "luigi.cfg")
    site.luigi("ProcessAll", "--run-id", f"undisturbed-{root.name}")
    return reference(site.base)


def events(site) -> list[dict]:
    return [json.loads(line) for line in site.layout.events.read_text().splitlines()]


@pytest.mark.parametrize("how", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGKILL],
                         ids=["restart", "crash"])
def test_luigid_restarted_mid_run_with_two_workers(make_site, tmp_path: Path, luigid: Luigid, undisturbed,
                                                   how: signal.Signals) -> None:
    gate = tmp_path / "gate"
    site, log = fault_site(make_site, tmp_path, gate)

    def finalize(batch: str) -> subprocess.Popen:  # two command lines: Luigi's own lock is per command line
        return subprocess.Popen([luigi_executable(), "--module", "pipeline", "Finalize", "--batch", batch,
                                 *luigid.args], env=site.env(), cwd=site.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    workers = [finalize("81")]
    try:
        try:
            workers.append(start_while_the_first_runs_ocr(workers[0], log, lambda: finalize("0081"), luigid.port))
            luigid.stop(how)
            time.sleep(1.0)  # down for a moment, as a restart is
            luigid.start()
        finally:
            gate.touch()  # the first chunk ends only now, after the restart
        outputs = [w.communicate(timeout=180)[0] for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    codes = [w.returncode for w in workers]
    report = "\n".join(o[-3000:] for o in outputs)
    # Each site finished, left the work to the other, or exits with not_run for work the
    # restarted scheduler no longer knew; never a failure.
    assert set(codes) <= {DONE, ALREADY_RUNNING, NOT_RUN}, (codes, report)

    # No chunk ran twice, whichever site ran it.
    runs = chunk_runs(log)
    assert sorted(d for run in runs for d in run) == sorted(set(d for run in runs for d in run)), runs

    # A rerun (of either site) completes the rest without OCRing anything again.
    site.luigi("Finalize", "--batch", "81", *luigid.args)
    assert sorted(d for run in chunk_runs(log) for d in run) == DOCUMENTS
    kinds = [e["event"] for e in events(site)]
    assert kinds.count("batch_created") == 1 and kinds.count("batch_finalized") == 1
    assert kinds.count("chunk_planned") == 3 and kinds.count("split") == 1
    assert_converged(site.base, undisturbed)
    before = snapshot(site.base)
    site.luigi("Finalize", "--batch", "0081", *luigid.args)
    assert snapshot(site.base) == before
