"""A real S3-compatible server for tests: moto's server mode on a free port of 127.0.0.1.

Fixtures (import them into a test module or register this module in conftest.py):
    moto_endpoint  session-wide endpoint URL of a running ``moto.server``
    s3_env         environment (fake credentials, no metadata lookups) for boto3 and subprocesses
    s3_client      a boto3 client for the endpoint
    bucket         a fresh, empty bucket name per test
Also ``FlakyProxy``: an HTTP proxy in front of the server that records requests, slows them down
or answers 5xx to chosen ones; and ``run_luigi``: the real ``luigi`` command line on a test config.
"""
from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_BUCKETS = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto_server(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m moto.server`` and wait until it answers; returns (process, endpoint URL)."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **FAKE_CREDENTIALS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return process, endpoint
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("moto server did not start (is moto[server] installed?)") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    process, endpoint = start_moto_server()
    try:
        yield endpoint
    finally:
        stop(process)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return dict(FAKE_CREDENTIALS)


@pytest.fixture
def s3_client(moto_endpoint: str, s3_env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"test-bucket-{os.getpid()}-{next(_BUCKETS)}"
    s3_client.create_bucket(Bucket=name)
    return name


def noise_pdf(pages: int, side: int = 1200, seed: int = 0) -> bytes:
    """A large image-only PDF (JPEG noise compresses badly): about 0.8 * side**2 bytes a page."""
    import io
    import random

    from PIL import Image

    rng = random.Random(seed)
    images = [Image.frombytes("L", (side, side), rng.randbytes(side * side)) for _ in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=150, quality=90)
    return buffer.getvalue()


def bad_startxref(data: bytes) -> bytes:
    """A PDF whose startxref points nowhere: the fast path fails, a full parse still recovers it."""
    at = data.rindex(b"startxref")
    return data[:at] + b"startxref\n7\n%%EOF\n"


# --- the real luigi command line -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
RETCODES = {"already_running": 10, "missing_data": 20, "not_run": 25, "task_failed": 30,
            "scheduling_error": 35, "unhandled_exception": 40}


def luigi_module() -> str:
    """``pipeline`` once it imports the shard tasks (its __init__ does), else their own module."""
    import pipeline

    return "pipeline" if hasattr(pipeline, "CountPages") else "tasks.shards"


def write_luigi_cfg(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    lines = []
    merged: dict[str, dict[str, object]] = {"retcode": dict(RETCODES), **sections}
    for section, values in merged.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def luigi_command(cfg: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, **FAKE_CREDENTIALS, "LUIGI_CONFIG_PATH": str(cfg),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    luigi = Path(sys.executable).with_name("luigi")
    return [str(luigi), "--module", luigi_module(), *args, "--local-scheduler"], env


def run_luigi(cfg: Path, *args: str, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``luigi --module pipeline <args> --local-scheduler``; stdout holds stdout and stderr."""
    argv, base_env = luigi_command(cfg, *args)
    return subprocess.run(argv, env={**base_env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, cwd=cfg.parent)
