"""Without luigid, through the real luigi command: two hosts sharing one base_dir (two processes with
--no-lock, as two hosts' Luigi locks never see each other) run every stage of every batch once, and
two collections on one host with the same command line both run."""
from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from pipeline import samples

from .conftest import RETCODES, Site, luigi_executable, write_config

DOCUMENTS = 6
TIMEOUT = 600


def incoming(folder: Path, prefix: str) -> Path:
    folder.mkdir(parents=True)
    for n in range(DOCUMENTS):
        (folder / f"{prefix}{n}.pdf").write_bytes(samples.text_pdf([f"Page one of {prefix}{n}", "Page two"]))
    return folder


def site(root: Path, source: Path, locks: Path) -> Site:
    root.mkdir(parents=True)
    write_config(root / "luigi.cfg", {
        "core": {"autoload_range": "false", "lock_pid_dir": locks},
        "retcode": RETCODES,
        "pipeline": {"base_dir": root / "data", "batch_size": 2, "workers": 2},
        "download": {"source": source},
        "ocr": {"executor": "local", "engine": "text", "pages_per_chunk": 2, "parallel_chunks": 1,
                "engine_workers": 1},
        "backpressure": {"min_free_gb": 0.1, "max_open_batches": 10},
    })
    return Site(root, root / "luigi.cfg")


def start(site: Site, *args: str) -> subprocess.Popen:
    command = [luigi_executable(), "--module", "pipeline", "ProcessAll", *args, "--local-scheduler"]
    return subprocess.Popen(command, env=site.env(), cwd=site.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=TIMEOUT)
    return process.returncode, output


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_hosts_on_one_base_dir_run_each_stage_of_each_batch_once(tmp_path: Path) -> None:
    shared = site(tmp_path / "site", incoming(tmp_path / "incoming", "doc"), tmp_path / "locks")
    hosts = [start(shared, "--no-lock", "--run-id", name) for name in ("host-a", "host-b")]
    results = [finish(p) for p in hosts]
    for code, output in results:
        assert code == 0, output[-6000:]

    layout = shared.layout
    batches = layout.batch_numbers()
    assert len(batches) == DOCUMENTS // 2  # batch_size 2: both hosts made them, no batch made twice
    events = records(layout.events)
    created = Counter(e["batch"] for e in events if e["event"] == "batch_created")
    split = Counter(e["batch"] for e in events if e["event"] == "split")
    finalized_batches = Counter(e["batch"] for e in events if e["event"] == "batch_finalized")
    finalized = Counter(e["identifier"] for e in events if e["event"] == "finalized")
    assert created == split == finalized_batches == Counter(batches)
    assert finalized == Counter(f"doc{n}" for n in range(DOCUMENTS))
    downloaded = Counter(e["identifier"] for e in events if e["event"] == "downloaded")
    assert downloaded == finalized  # one download pass at a time: none fetched twice

    plans = {b: json.loads((layout.batch_dir(b) / "chunks.json").read_text())["chunks"] for b in batches}
    planned = Counter((b, c["index"]) for b, chunks in plans.items() for c in chunks)
    runs = Counter((r["batch"], r["chunk"]) for r in records(layout.metrics) if r.get("executor") == "local")
    assert runs == planned  # every chunk ran, and once
    for n in range(DOCUMENTS):
        assert f"Page one of doc{n}" in json.loads(layout.processed_ocr(f"doc{n}").read_text())["text"]
    assert not list(layout.base.rglob("*.lease")) and not list(layout.base.rglob("*.aside"))


def test_two_collections_with_the_same_command_line_on_one_host_both_run(tmp_path: Path) -> None:
    locks = tmp_path / "locks"  # one Luigi lock folder for both, as on one host
    first = site(tmp_path / "one" / "site", incoming(tmp_path / "one" / "incoming", "one"), locks)
    second = site(tmp_path / "two" / "site", incoming(tmp_path / "two" / "incoming", "two"), locks)
    runs = [start(s, "--run-id", "hourly") for s in (first, second)]  # the same command line
    results = [finish(p) for p in runs]
    for code, output in results:
        assert code == 0, output[-6000:]
    for collection, prefix in ((first, "one"), (second, "two")):
        for n in range(DOCUMENTS):
            assert collection.layout.processed_ocr(f"{prefix}{n}").exists()

