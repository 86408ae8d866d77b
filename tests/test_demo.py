"""The demo (pipeline.demo, what `./dev.sh demo` runs): a generated collection through the real
`luigi` command, finalized or quarantined with a reason, and a second run that does nothing."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from luigi.configuration import LuigiConfigParser

from pipeline import config, demo
from pipeline.layout import Layout, identifier_of

from .conftest import ROOT, luigi_executable, snapshot


def test_the_demo_carries_its_collection_through_the_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    root = tmp_path / "demo-run"
    root.mkdir()
    (root / "stale.txt").write_text("from an earlier demo")  # the folder is replaced

    assert demo.main(["--dir", str(root), "--engine", "text", "--documents", "3", "--scanned", "1"]) == 0

    out = capfd.readouterr().out
    assert "demo: generated 8 PDFs" in out and "demo: finished" in out
    assert not (root / "stale.txt").exists()
    site = LuigiConfigParser()
    site.read([str(root / "luigi.cfg")])
    assert config.invalid_values(site) == []
    layout = Layout(root / "data", 2)
    incoming = sorted(p.name for p in (root / "incoming").iterdir())
    quarantined = {}
    for name in incoming:
        identifier = identifier_of(name)
        if layout.quarantine_reason(identifier).exists():
            quarantined[name] = json.loads(layout.quarantine_reason(identifier).read_text())["reason"]
        else:
            record = json.loads(layout.processed_ocr(identifier).read_text())
            assert record["metadata"]["Source-File"].endswith(name)
    assert sorted(quarantined) == ["empty.pdf", "locked.pdf", "not_a_pdf.pdf", "truncated.pdf"]
    assert all(quarantined.values())

    before = snapshot(layout.base)
    again = subprocess.run([luigi_executable(), "--module", "pipeline", "ProcessAll", "--local-scheduler"],
                           env={**os.environ, "LUIGI_CONFIG_PATH": str(root / "luigi.cfg")}, cwd=root,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    changed = {k for k, v in snapshot(layout.base).items() if before.get(k) != v}
    assert all(k.startswith("_manifests/") for k in changed), changed  # only the new run's own record
