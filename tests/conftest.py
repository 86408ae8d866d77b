"""Shared fixtures: a base_dir with its own luigi.cfg, and the real `luigi` command line."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.layout import Layout

from .s3server import RETCODES

pytest_plugins = ["tests.s3server"]

ROOT = Path(__file__).resolve().parent.parent
# Tests marked slow run everywhere in a reduced size; FULL_CAMPAIGN=1 gives them their full size.
FULL_CAMPAIGN = os.environ.get("FULL_CAMPAIGN") == "1"


def luigi_executable() -> str:
    beside = Path(sys.executable).with_name("luigi")
    return str(beside) if beside.exists() else shutil.which("luigi") or "luigi"


@contextmanager
def running_luigid(folder: Path, **scheduler: object) -> Iterator[int]:
    """A real luigid on 127.0.0.1 (state and logs in ``folder``, ``scheduler`` its [scheduler] settings).

    Yields its port."""
    from .s3server import free_port  # a plugin module (pytest_plugins): imported by pytest first

    port = free_port()
    config = folder / "luigid.cfg"
    write_config(config, {"scheduler": scheduler})
    binary = Path(luigi_executable()).with_name("luigid")
    process = subprocess.Popen(
        [str(binary) if binary.exists() else shutil.which("luigid") or "luigid", "--address", "127.0.0.1",
         "--port", str(port), "--state-path", str(folder / "luigid.pickle"), "--logdir", str(folder)],
        env={**os.environ, "LUIGI_CONFIG_PATH": str(config)}, cwd=folder,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "luigid did not start listening within 30 s"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Site:
    """One base_dir with its luigi.cfg; ``luigi(...)`` runs the real command line against it."""

    root: Path
    config: Path

    def __post_init__(self) -> None:
        # A site's base_dir exists: the pipeline never creates it unless [pipeline] create_base_dir says so.
        self.base.mkdir(parents=True, exist_ok=True)

    @property
    def base(self) -> Path:
        return self.root / "data"

    @property
    def layout(self) -> Layout:
        return Layout(self.base, 2)

    def env(self) -> dict[str, str]:
        python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
        return {**os.environ, "LUIGI_CONFIG_PATH": str(self.config), "PYTHONPATH": python_path}

    def luigi(self, *args: str, check: bool = True, timeout: float = 600,
              merged: bool = False) -> subprocess.CompletedProcess:
        """Run luigi; ``merged`` puts stderr into stdout, in the order a terminal or a cron mail shows them."""
        command = [luigi_executable(), "--module", "pipeline", *args]
        if not any(a.startswith(("--scheduler-host", "--scheduler-url")) for a in args):
            command.append("--local-scheduler")
        result = subprocess.run(command, env=self.env(), cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merged else subprocess.PIPE, text=True, timeout=timeout)
        output = result.stdout + (result.stderr or "")
        if check and (result.returncode or ":( because" in output):
            raise AssertionError(f"luigi {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{(result.stderr or '')[-8000:]}")
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        command = [luigi_executable(), "--module", "pipeline", *args, "--local-scheduler"]
        return subprocess.Popen(command, env=self.env(), cwd=self.root, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


@pytest.fixture
def make_site(tmp_path: Path):
    """make_site(source=..., engine=..., **{"section.key": value}) -> Site with that luigi.cfg."""

    def make(source: Path | str = "", engine: str = "text", **overrides: object) -> Site:
        root = tmp_path / "site"
        root.mkdir(exist_ok=True)
        sections: dict[str, dict[str, object]] = {
            "core": {"autoload_range": "false"},
            "retcode": RETCODES,
            "pipeline": {"base_dir": root / "data", "workers": 4},
            "download": {"source": source},
            "ocr": {"executor": "local", "engine": engine, "pages_per_chunk": 20, "parallel_chunks": 2,
                    "engine_workers": 1},
            "backpressure": {"min_free_gb": 0.1},
        }
        for key, value in overrides.items():
            section, name = key.split("__", 1)
            sections.setdefault(section, {})[name] = value
        config = root / "luigi.cfg"
        write_config(config, sections)
        return Site(root, config)

    return make


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime (ns), to prove a rerun changed nothing."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


CLUSTER_GROUP = "slurm"  # the xdist group of the dev-cluster tests


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist's ``-n N --dist loadgroup``, the tests of the one dev SLURM cluster run on
    one worker, one after another: some restart its daemons or drain its node under the others."""
    for item in items:
        if item.get_closest_marker("slurm") or "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(CLUSTER_GROUP))


@pytest.fixture(autouse=True)
def dev_cluster_tests_grouped(request: pytest.FixtureRequest) -> None:
    """Fails a dev-cluster test that pytest-xdist left out of its group (xdist names a grouped test
    ``<id>@<group>``): it would run beside the others and see the daemons they stop."""
    node = request.node
    if getattr(request.config.option, "loadgroup", False) and node.get_closest_marker("xdist_group") \
            and not node.nodeid.endswith(f"@{CLUSTER_GROUP}"):
        pytest.fail(f"pytest-xdist did not group {node.nodeid} with the other dev-cluster tests (pytest "
                    f"{pytest.__version__}): install the test extras of setup.cfg, or run with -n 0")


def open_descriptors() -> int:
    """File descriptors open in this process (a long pass must not leak them)."""
    return len(os.listdir("/proc/self/fd"))
