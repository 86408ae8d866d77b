"""pipeline.ops.report_html: _manifests/report.html over a base_dir the real pipeline filled, written by
the real ``luigi --module pipeline Report`` and ProcessAll, and looked at in headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pipeline import events, samples
from pipeline.executors import records
from pipeline.layout import MANIFESTS, PROCESSED, QUARANTINE
from pipeline.ops import report_html

from .conftest import Site, write_config
from .s3server import RETCODES

PLOTS_WITH_DATA = ("finalized", "pages-per-hour", "run-time", "backlog", "disk", "quarantine")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Debian's chromium, headless (dev.sh installs it)."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run ./dev.sh setup (or apt-get install chromium)"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", *args], capture_output=True,
                          text=True, timeout=180, check=True)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to its console (errors, uncaught exceptions, resources that failed to load)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def screenshot(page: Path, out: Path) -> list[str]:
    """Screenshot ``page`` into ``out``; returns its console messages."""
    result = chromium("--enable-logging=stderr", "--v=0", f"--screenshot={out}", "--window-size=1280,2000",
                      page.as_uri())
    assert out.exists(), result.stderr[-3000:]
    return console_messages(result.stderr)


def not_blank(png: bytes) -> tuple[int, float]:
    """(colours, fraction of pixels that are not white) of a PNG."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 24) or []
    white = sum(count for count, colour in colours if colour == (255, 255, 255))
    return len(colours), 1 - white / (image.width * image.height)


class Page(HTMLParser):
    """The elements of the rendered DOM that the test reads: data-* cells, figures, images, links."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict[str, str], str]] = []
        self.figures: dict[str, dict] = {}
        self.sources: list[str] = []
        self.tags: set[str] = set()
        self._open: list[tuple[dict[str, str], list[str]]] = []
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.sources += [v for k, v in attributes.items() if k in ("src", "href")]
        if tag == "figure":
            self._figure = attributes["id"].removeprefix("plot-")
            self.figures[self._figure] = {"images": [], "text": ""}
        elif tag == "img" and self._figure:
            self.figures[self._figure]["images"].append(attributes["src"])
        if "data-value" in attributes:
            self._open.append((attributes, []))

    def handle_data(self, data: str) -> None:
        for _, text in self._open:
            text.append(data)
        if self._figure:
            self.figures[self._figure]["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag in ("td", "span") and self._open:
            attributes, text = self._open.pop()
            self.cells.append((attributes, "".join(text).strip()))

    def cell(self, **data: str) -> tuple[str, str]:
        """(data-value, shown text) of the one cell with these data-* attributes."""
        found = [(a["data-value"], text) for a, text in self.cells
                 if all(a.get(f"data-{k}") == v for k, v in data.items())]
        assert len(found) == 1, f"{len(found)} cells with {data}"
        return found[0]


def add_pdfs(folder: Path, prefix: str, count: int) -> None:
    for n in range(count):
        (folder / f"{prefix}{n}.pdf").write_bytes(samples.text_pdf([f"{prefix} {n} page {p}" for p in range(n + 1)]))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A collection through two ProcessAll runs, then more downloads: one open planned batch and
    documents waiting; report.html removed and written again by the Report task."""
    root = tmp_path_factory.mktemp("report")
    incoming = root / "incoming"
    made = samples.make_collection(incoming)
    config = root / "luigi.cfg"
    write_config(config, {
        "core": {"autoload_range": "false"}, "retcode": RETCODES,
        "pipeline": {"base_dir": root / "data", "workers": 4, "batch_size": 4},
        "download": {"source": incoming},
        "ocr": {"executor": "local", "engine": "text", "pages_per_chunk": 6, "parallel_chunks": 2, "engine_workers": 1},
        "backpressure": {"min_free_gb": 0.1},
    })
    built = Site(root, config)
    built.luigi("ProcessAll", "--run-id", "first")
    after_first = built.layout.manifests.joinpath(report_html.REPORT_NAME).exists()
    add_pdfs(incoming, "second", 2)
    built.luigi("ProcessAll", "--run-id", "second")
    add_pdfs(incoming, "late", 6)
    built.luigi("Download", "--run-id", "late")
    number = f"{int(built.layout.batch_numbers()[-1]) + 1:04d}"
    built.luigi("CreateBatch", "--batch", number)
    built.luigi("PlanChunks", "--batch", number)
    report = built.layout.manifests / report_html.REPORT_NAME
    report.unlink()
    built.luigi("Report")
    sound = sum(1 for kind, _ in made.values() if kind != "broken")
    return {"site": built, "report": report, "after_first": after_first, "sound": sound, "open": number}


def test_process_all_writes_the_report_and_one_snapshot_per_run(site) -> None:
    built: Site = site["site"]
    assert site["after_first"]
    history = report_html.read_history(built.layout)
    assert len(history) == 2  # two ProcessAll runs; Download, CreateBatch and Report add none
    assert [h["stages"][PROCESSED]["documents"] for h in history] == [site["sound"], site["sound"] + 2]
    assert history[0]["backlog"] == {"documents": 0, "pages": 0}
    broken = len(samples.BROKEN_NAMES)
    assert sum(history[-1]["quarantine_reasons"].values()) == history[-1]["stages"][QUARANTINE]["documents"] == broken
    assert [r["event"] for r in events.read(built.layout.manifests / report_html.HISTORY_NAME)] == [
        report_html.SNAPSHOT_EVENT] * 2


def test_report_in_headless_chromium(site, tmp_path: Path) -> None:
    built: Site = site["site"]
    report: Path = site["report"]
    assert report.exists(), "the Report task did not write report.html"

    shot = tmp_path / "report.png"
    messages = screenshot(report, shot)
    print(f"screenshot of the report: {shot}")
    assert messages == [], "the page wrote to its console:\n" + "\n".join(messages)
    colours, inked = not_blank(shot.read_bytes())
    assert colours > 10 and inked > 0.05, f"the screenshot looks blank: {colours} colours, {inked:.1%} not white"

    page = Page()
    page.feed(chromium("--dump-dom", report.as_uri()).stdout)
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert not page.tags & {"script", "link", "iframe"}
    assert page.sources and all(s.startswith("data:image/png;base64,") for s in page.sources), page.sources
    for name in PLOTS_WITH_DATA:
        [source] = page.figures[name]["images"]
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1], validate=True)))
        image.load()
        assert image.width > 300 and image.height > 200, name
        assert not_blank(base64.b64decode(source.split(",", 1)[1]))[0] > 10, f"plot {name} is blank"
    # The local executor has no queue: the plot says so in words.
    assert page.figures["queue-wait"]["images"] == []
    assert "No queue wait recorded" in page.figures["queue-wait"]["text"]

    # The Status table shows the numbers of `python -m pipeline status --json`, taken just after.
    result = subprocess.run([sys.executable, "-m", "pipeline", "status", "--json"], env=built.env(), cwd=built.root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    # _manifests is left out: report.html itself was written after the page's numbers were taken.
    for stage, row in status["stages"].items():
        if stage == MANIFESTS:
            continue
        for field in ("documents", "pages", "files"):
            value, shown = page.cell(stage=stage, field=field)
            assert int(value) == row[field] and int(shown.replace(",", "")) == row[field], (stage, field, shown)
        value, shown = page.cell(stage=stage, field="bytes")
        number, unit = shown.split()
        assert int(value) == row["bytes"] and float(number) * UNITS[unit] == pytest.approx(row["bytes"], rel=0.01)
        for reason, count in row.get("reasons", {}).items():
            assert page.cell(reason=reason) == (str(count), f"{count:,}")
    assert status["stages"][QUARANTINE]["reasons"], "the sample collection has broken files"
    [batch] = status["batches"]
    assert batch["batch"] == site["open"] and batch["chunks"]["total"] > 1
    for field in ("documents", "pages", "pdfs"):
        assert page.cell(batch=batch["batch"], field=field)[0] == str(batch[field])
    for field, count in batch["chunks"].items():
        if field != "pages_to_do":
            assert page.cell(batch=batch["batch"], field=f"chunks.{field}")[0] == str(count)
    assert status["backlog"]["documents"] == 6  # the late downloads: four in the open batch, two waiting
    for field in ("documents", "pages"):
        assert page.cell(backlog=field) == (str(status["backlog"][field]), f"{status['backlog'][field]:,}")
    for field in ("total_bytes", "total_inodes"):
        assert page.cell(disk=field)[0] == str(status["disk"][field])
    assert re.search(rf'data-last-progress="{re.escape(status["last_progress"])}"', report.read_text())


def test_console_check_sees_a_broken_page(tmp_path: Path) -> None:
    """The console check above can fail: an error logged and an uncaught exception are both seen."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>console.error("logged error"); undefined_function();</script></body></html>')
    messages = screenshot(page, tmp_path / "broken.png")
    assert any("logged error" in m for m in messages) and any("Uncaught" in m for m in messages), messages


def test_empty_base_dir_says_so_in_every_plot(make_site) -> None:
    """A site where nothing ran yet: the page is written and every plot says why it has nothing."""
    built = make_site()
    built.luigi("Report")
    page = Page()
    page.feed((built.layout.manifests / report_html.REPORT_NAME).read_text())
    assert {name: f["images"] for name, f in page.figures.items()} == {
        name: [] for name, _, _ in report_html.PLOTS}
    assert all(f["text"].strip() for f in page.figures.values())


def test_slurm_records_draw_walltime_and_queue_wait(make_site) -> None:
    """SLURM job records (as the executor writes them) give the run-time plot its requested walltimes and
    the queue-wait plot its points; a week of chunks shows pages/hour as daily means."""
    built = make_site()
    runs = []
    for day in range(5):
        for chunk in range(3):
            job = f"{100 + day}"
            submitted = f"2026-11-{10 + day:02d}T08:00:00+00:00"
            runs += [records.submission_record("0001", chunk, 40, job, 600, 1, submitted),
                     records.end_record("0001", chunk, 40, job, "COMPLETED" if chunk else "TIMEOUT", "0:0", 300 + chunk,
                                        f"2026-11-{10 + day:02d}T08:{5 * chunk + 5:02d}:00+00:00",
                                        f"2026-11-{10 + day:02d}T09:{5 * chunk + 5:02d}:00+00:00")]
    events.append(built.layout.metrics, runs)
    built.luigi("Report")
    page = Page()
    page.feed((built.layout.manifests / report_html.REPORT_NAME).read_text())
    for name in ("pages-per-hour", "run-time", "queue-wait"):
        [source] = page.figures[name]["images"]
        assert not_blank(base64.b64decode(source.split(",", 1)[1]))[0] > 10, name
    titles = re.findall(r'<img alt="([^"]*)"', (built.layout.manifests / report_html.REPORT_NAME).read_text())
    assert "Chunk run time against its requested walltime" in titles
    assert "Pages OCRed per hour (daily mean), by chunk end" in titles
    assert "Queue wait per SLURM job" in titles


def test_a_report_draws_again_only_the_figures_whose_data_changed(make_site, monkeypatch) -> None:
    """Drawing is most of a report's time: a rewrite with nothing new draws nothing, new job records
    redraw the three plots made of them, and a reused figure is the one a fresh drawing gives."""
    from pipeline.ops.status import Thresholds

    lay = make_site().layout
    drawn: list[str] = []
    draw = report_html._png
    monkeypatch.setattr(report_html, "_png", lambda figure: drawn.append(figure.axes[0].get_title()) or draw(figure))

    def refresh(record_snapshot: bool = False) -> list[str]:
        drawn.clear()
        report_html.refresh(lay, thresholds=Thresholds(), slurm=None, record_snapshot=record_snapshot)
        return sorted(drawn)

    assert refresh(record_snapshot=True) == ["Backlog (waiting and in open batches), at each ProcessAll",
                                             "Disk used per stage, at each ProcessAll"]
    assert refresh() == []
    events.append(lay.metrics, [
        records.submission_record("0001", 0, 40, "7", 600, 1, "2026-11-10T08:00:00+00:00"),
        records.end_record("0001", 0, 40, "7", "COMPLETED", "0:0", 300, "2026-11-10T08:05:00+00:00",
                           "2026-11-10T08:10:00+00:00")])
    assert refresh() == ["Chunk run time against its requested walltime", "Pages OCRed per hour, by chunk end",
                         "Queue wait per SLURM job"]
    fresh, _ = report_html.render(lay, report_html.status_view.collect(lay, thresholds=Thresholds(), slurm=None))
    plots = re.compile(r'<div class="plots">.*</div>', re.S)
    [drawn_now] = plots.findall(fresh)
    assert plots.findall(report_html.report_path(lay).read_text()) == [drawn_now]
