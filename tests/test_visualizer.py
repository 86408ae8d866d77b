"""A running OCRBatch as luigid's visualizer shows it, in headless Chromium: its progress % in the
Workers tab and its status message in the pop-up of its message button."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect

from pipeline import collection, samples

from .conftest import luigi_executable, running_luigid
from .s3server import free_port
from .test_luigid import wait_for

# OCR that logs each chunk it starts and holds every chunk after the first until the test opens the
# gate (creates the file): OCRBatch is then running with a progress above 0%, which the visualizer
# shows as a bar (at 0% it shows none).
ENGINE = """\
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from pipeline.olmocr_format import build_record
chunk_list, output, log, gate = sys.argv[1], sys.argv[2], Path({log!r}), Path({gate!r})
pdfs = [line for line in Path(chunk_list).read_text().splitlines() if line]
first = not log.exists()
with open(log, "a") as handle:
    handle.write(json.dumps(pdfs) + "\\n")
while not first and not gate.exists():
    time.sleep(0.05)
Path(output).write_text("".join(json.dumps(build_record(p, ["text of " + Path(p).stem], version="t")) + "\\n"
                                for p in pdfs))
"""


class Browser:
    """Headless Chromium driven over the DevTools protocol (tornado's websocket client, which Luigi brings)."""

    def __init__(self, profile: Path) -> None:
        binary = shutil.which("chromium")
        assert binary, "chromium is not installed: run ./dev.sh setup (or apt-get install chromium)"
        port = free_port()
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
             f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        targets: list[dict[str, Any]] = []

        def page_target() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    targets[:] = [t for t in json.load(response) if t.get("type") == "page"]
            except OSError:
                return False
            return bool(targets)

        wait_for(page_target, "chromium's DevTools endpoint", timeout=60)
        self.loop = IOLoop()
        self.socket = self.loop.run_sync(lambda: websocket_connect(targets[0]["webSocketDebuggerUrl"]), timeout=30)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        sent = self.next_id

        async def exchange() -> dict[str, Any]:
            await self.socket.write_message(json.dumps({"id": sent, "method": method, "params": params}))
            while True:
                message = await self.socket.read_message()
                assert message is not None, "chromium closed the DevTools connection"
                reply = json.loads(message)
                if reply.get("id") == sent:
                    assert "error" not in reply, reply
                    return reply["result"]

        return self.loop.run_sync(exchange, timeout=60)

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.socket.close()
        self.loop.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def test_a_running_ocr_batch_shows_progress_and_its_message(make_site, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for n in range(4):
        (incoming / f"doc{n}.pdf").write_bytes(samples.text_pdf([f"page {n}"] * 4))
    log, gate, script = tmp_path / "engine.log", tmp_path / "gate", tmp_path / "engine.py"
    script.write_text(ENGINE.format(root=str(Path(__file__).resolve().parent.parent), log=str(log), gate=str(gate)))
    site = make_site(source=incoming, engine="command", ocr__pages_per_chunk=8, ocr__parallel_chunks=1,
                     ocr__command=f"{sys.executable} {script} {{chunk_list}} {{output}}")
    site.luigi("Download", "--run-id", "d")
    site.luigi("CreateBatch", "--batch", "3")
    luigid_folder = tmp_path / "luigid"
    luigid_folder.mkdir()
    with running_luigid(luigid_folder) as port:
        run = subprocess.Popen([luigi_executable(), "--module", "pipeline", "OCRBatch", "--batch", "3",
                                "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)],
                               env=site.env(), cwd=site.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        browser: Browser | None = None
        try:
            browser = Browser(tmp_path / "chromium-profile")
            # The engine holds the second chunk until the gate opens: OCRBatch is running, one chunk done.
            wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2 or run.poll() is not None,
                     "the second chunk")
            assert run.poll() is None, run.communicate()[0][-3000:]
            browser.call("Page.enable")
            browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/static/visualiser/index.html#tab=workers")
            bar = "document.querySelector('.worker-table .taskProgressBar')"

            def progress_shown() -> bool:
                # The visualizer asks luigid again on a reload; the worker's progress reaches luigid as it runs.
                text = browser.evaluate(f"{bar} ? {bar}.textContent : ''")
                if not text:
                    browser.call("Page.reload")
                    time.sleep(1)
                return bool(text)

            try:
                wait_for(progress_shown, "the visualizer's progress bar of OCRBatch", timeout=60)
            except AssertionError:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/worker_list", timeout=10) as response:
                    workers = response.read().decode()
                page = browser.evaluate("document.body.innerText")
                raise AssertionError(f"luigid's workers: {workers[:3000]}\nthe page: {page[:3000]}") from None
            percent = browser.evaluate(f"{bar}.textContent").strip()
            assert percent == "50%", percent  # one chunk of two done
            row = browser.evaluate(f"{bar}.closest('tr').textContent")
            assert "OCRBatch" in row and "batch=0003" in row, row
            assert f"collection={collection.recorded(site.base)}" in row, row  # which collection it works on
            browser.evaluate("$('.worker-table td .statusMessage').first().click()")
            message = "$('#statusMessageModal pre').is(':visible') ? $('#statusMessageModal pre').text() : ''"
            wait_for(lambda: bool(browser.evaluate(message)), "the status message pop-up", timeout=60)
            shown = browser.evaluate(message)
            assert re.search(r"1/2 \(50%\) chunks", shown), shown
            shot = tmp_path / "visualizer.png"
            shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
            print(f"screenshot of the visualizer: {shot}")
        finally:
            gate.touch()
            if browser is not None:
                browser.close()
            output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output[-3000:]
