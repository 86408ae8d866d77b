"""Download from a local folder and from a URL list served by a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from pypdf import PdfReader

from pipeline import atomic, lease, samples
from pipeline.layout import Layout
from pipeline.stages import download

from .conftest import open_descriptors
from .stage_inputs import Recorder


class PdfServer:
    """A real HTTP server in a thread: serves ``files`` by URL path, records every request.

    ``auth`` maps a path to the (user, password) it requires, as HTTP Basic authentication.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.auth: dict[str, tuple[str, str]] = {}
        self.requests: list[dict[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parts.path)
                server.requests.append({"path": path, "query": parts.query,
                                        "authorization": self.headers.get("Authorization")})
                if path in server.auth:
                    user, password = server.auth[path]
                    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="archive"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.root}/{urllib.parse.quote(name)}"

    def paths_requested(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = PdfServer()
    yield s
    s.close()


def doc(name: str, pages: int) -> bytes:
    return samples.text_pdf([f"{name} page {n + 1} of {pages}" for n in range(pages)])


def events(site) -> list[dict]:
    path = site.base / "_manifests" / "events.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def downloaded(site, identifier: str) -> tuple[Path, Path]:
    """Where the layout contract puts a download, computed here from the contract, not the code."""
    ab = hashlib.sha1(identifier.encode()).hexdigest()[:2]
    folder = site.base / "01_downloaded" / ab
    return folder / f"{identifier}.pdf", folder / f"{identifier}.meta.json"


def download_summary(site, run_id: str) -> dict:
    found = list((site.base / "_manifests" / "downloads").glob(f"*_{run_id}.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def assert_downloaded(site, identifier: str, original: bytes, source: str) -> None:
    pdf, meta_path = downloaded(site, identifier)
    assert pdf.is_file() and not pdf.is_symlink()
    assert pdf.read_bytes() == original
    meta = json.loads(meta_path.read_text())
    assert meta["source"] == source
    assert meta["size"] == len(original)
    assert meta["sha256"] == hashlib.sha256(original).hexdigest()
    assert meta["pages"] == len(PdfReader(io.BytesIO(original)).pages)


def write_url_list(path: Path, urls: list[str]) -> Path:
    path.write_text("# collection of the archive\n\n" + "".join(f"{u}\n" for u in urls))
    return path


def test_download_from_a_local_folder(tmp_path, make_site):
    source = tmp_path / "incoming"
    (source / "sub folder").mkdir(parents=True)
    originals = {"alpha": doc("alpha", 1), "beta two": doc("beta", 2), "gamma": doc("gamma", 3)}
    (source / "alpha.pdf").write_bytes(originals["alpha"])
    (source / "beta two.pdf").write_bytes(originals["beta two"])
    (source / "sub folder" / "gamma.pdf").write_bytes(originals["gamma"])
    (source / "notes.txt").write_text("not a PDF name, not taken")
    site = make_site(source=source)

    site.luigi("Download", "--run-id", "first")

    for identifier, data in originals.items():
        original_path = next(source.rglob(f"{identifier}.pdf"))
        assert_downloaded(site, identifier, data, str(original_path.resolve()))
        assert original_path.read_bytes() == data  # the source is left alone
    pdfs = sorted(p.name for p in (site.base / "01_downloaded").rglob("*") if p.is_file())
    assert pdfs == sorted([f"{i}.pdf" for i in originals] + [f"{i}.meta.json" for i in originals])
    assert sorted(e["identifier"] for e in events(site) if e["event"] == "downloaded") == sorted(originals)
    assert download_summary(site, "first")["fetched"] == 3

    before = {p: p.stat().st_mtime_ns for p in (site.base / "01_downloaded").rglob("*")}
    site.luigi("Download", "--run-id", "second")
    summary = download_summary(site, "second")
    assert (summary["fetched"], summary["skipped"]) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in (site.base / "01_downloaded").rglob("*")} == before
    assert len([e for e in events(site) if e["event"] == "downloaded"]) == 3


def test_download_from_a_url_list_then_nothing_is_fetched_again(tmp_path, make_site, server):
    originals = {"one": doc("one", 1), "two": doc("two", 4), "three": doc("three", 2)}
    for name, data in originals.items():
        server.files[f"/{name}.pdf"] = data
    listing = write_url_list(tmp_path / "urls.txt", [server.url(f"{n}.pdf") for n in originals])
    site = make_site(source=listing)

    site.luigi("Download", "--run-id", "first")
    for name, data in originals.items():
        assert_downloaded(site, name, data, server.url(f"{name}.pdf"))
    assert sorted(server.paths_requested()) == sorted(f"/{n}.pdf" for n in originals)

    server.requests.clear()
    site.luigi("Download", "--run-id", "second")
    assert server.requests == []
    assert download_summary(site, "second")["skipped"] == 3


def test_finalized_and_quarantined_documents_are_not_fetched_again(tmp_path, make_site, server):
    server.files["/kept.pdf"] = doc("kept", 2)
    server.files["/error page.pdf"] = b"<html><body>Service unavailable</body></html>\n"
    listing = write_url_list(tmp_path / "urls.txt", [server.url("kept.pdf"), server.url("error page.pdf")])
    site = make_site(source=listing)

    site.luigi("ProcessAll", "--run-id", "pass1")
    ab = hashlib.sha1(b"kept").hexdigest()[:2]
    assert (site.base / "05_processed" / ab / "kept" / "kept.ocr.json").is_file()
    ab = hashlib.sha1(b"error page").hexdigest()[:2]
    assert (site.base / "_quarantine" / ab / "error page.reason.json").is_file()
    assert not list((site.base / "01_downloaded").rglob("*.pdf"))

    server.requests.clear()
    site.luigi("Download", "--run-id", "pass2")
    assert server.requests == []
    summary = download_summary(site, "pass2")
    assert (summary["fetched"], summary["skipped"]) == (0, 2)
    assert not list((site.base / "01_downloaded").rglob("*.pdf"))


def test_a_url_that_fails_is_reported_and_the_others_arrive(tmp_path, make_site, server):
    server.files["/first.pdf"] = doc("first", 1)
    server.files["/last.pdf"] = doc("last", 2)
    listing = write_url_list(tmp_path / "urls.txt",
                             [server.url("first.pdf"), server.url("missing.pdf"), server.url("last.pdf")])
    site = make_site(source=listing)

    site.luigi("Download", "--run-id", "first")

    assert_downloaded(site, "first", server.files["/first.pdf"], server.url("first.pdf"))
    assert_downloaded(site, "last", server.files["/last.pdf"], server.url("last.pdf"))
    failed = [e for e in events(site) if e["event"] == "download_failed"]
    assert [(e["identifier"], e["source"]) for e in failed] == [("missing", server.url("missing.pdf"))]
    assert "404" in failed[0]["message"]
    assert download_summary(site, "first")["failed"] == 1
    leftovers = [p for p in site.base.rglob("*") if p.is_file() and "missing" in p.name]
    assert leftovers == []  # no partial file, no meta, no quarantine for a fetch that failed
    assert not [p for p in site.base.rglob("*.part")]

    server.files["/missing.pdf"] = doc("missing", 1)  # the source recovers: the next pass gets it
    site.luigi("Download", "--run-id", "second")
    assert_downloaded(site, "missing", server.files["/missing.pdf"], server.url("missing.pdf"))
    assert download_summary(site, "second")["fetched"] == 1


def test_credentials_and_tokens_in_urls_never_reach_any_file(tmp_path, make_site, server):
    password, token = "pw-S3cr3tHunter2", "tok-9f8e7d6c5b4a"
    server.files["/private.pdf"] = doc("private", 2)
    server.auth["/private.pdf"] = ("alice", password)
    secret_url = f"http://alice:{password}@127.0.0.1:{server.httpd.server_address[1]}/private.pdf?token={token}&x=1"
    gone_url = f"http://alice:{password}@127.0.0.1:{server.httpd.server_address[1]}/gone.pdf?token={token}"
    # A space makes http.client refuse the URL with a message that quotes it, token and all.
    spaced_url = f"{server.root}/spaced.pdf?token={token} copy"
    server.files["/spaced.pdf"] = doc("spaced", 1)
    listing = write_url_list(tmp_path / "urls.txt", [secret_url, gone_url, spaced_url])
    site = make_site(source=listing)

    result = site.luigi("ProcessAll", "--run-id", "secret")

    # The document was really fetched with its credentials and token ...
    fetched = [r for r in server.requests if r["path"] == "/private.pdf"]
    assert fetched and fetched[-1]["query"] == f"token={token}&x=1"
    ab = hashlib.sha1(b"private").hexdigest()[:2]
    metadata = json.loads((site.base / "05_processed" / ab / "private" / "private.metadata.json").read_text())
    assert metadata["download"]["source"] == server.url("private.pdf")
    assert metadata["download"]["sha256"] == hashlib.sha256(server.files["/private.pdf"]).hexdigest()
    failed = sorted(e["source"] for e in events(site) if e["event"] == "download_failed")
    assert failed == [server.url("gone.pdf"), server.url("spaced.pdf")]
    # ... and no secret is in any file under base_dir, nor in what the command printed.
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    secrets = [password, token, basic]
    for path in [p for p in site.base.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} leaked into {path}"
    for secret in secrets:
        assert secret not in result.stdout + result.stderr


def test_backpressure_stops_download_at_max_waiting_documents(tmp_path, make_site, server):
    for n in range(6):
        server.files[f"/doc{n}.pdf"] = doc(f"doc{n}", 1)
    listing = write_url_list(tmp_path / "urls.txt", [server.url(f"doc{n}.pdf") for n in range(6)])
    site = make_site(source=listing, backpressure__max_waiting_documents=3)

    site.luigi("Download", "--run-id", "first")

    assert len(list((site.base / "01_downloaded").rglob("*.pdf"))) == 3
    assert len(list((site.base / "01_downloaded").rglob("*.meta.json"))) == 3
    assert len(server.requests) == 3
    pressure = [e for e in events(site) if e["event"] == "backpressure"]
    assert len(pressure) == 1 and "max_waiting_documents" in pressure[0]["message"]
    assert download_summary(site, "first")["paused"]

    server.requests.clear()  # still 3 waiting: the next pass fetches nothing and says why
    site.luigi("Download", "--run-id", "second")
    assert server.requests == []
    assert len([e for e in events(site) if e["event"] == "backpressure"]) == 2


# --- in-process: the download pass of pipeline.stages.download ----------------------------------

def test_a_download_pass_counts_waiting_documents_and_writes_its_summary_without_secrets(tmp_path, server):
    layout = Layout(tmp_path / "data", 2)
    for n in range(4):
        server.files[f"/doc{n}.pdf"] = doc(f"doc{n}", 1)
    token = "tok-0a1b2c3d"
    listing = write_url_list(tmp_path / "urls.txt", [f"{server.url(f'doc{n}.pdf')}?token={token}" for n in range(4)])
    record = tmp_path / "data" / "_manifests" / "downloads" / "pass.json"
    progress, status = Recorder(), []

    summary = download.download_pass(layout, str(listing), record, timeout=10, workers=1, max_waiting=3,
                                     min_free_gb=0, progress=progress, status=status.append)

    assert (summary.fetched, summary.skipped, summary.failed) == (3, 0, 0)
    assert "max_waiting_documents" in summary.paused
    written = json.loads(record.read_text())
    assert written["source"] == str(listing) and written["fetched"] == 3 and written["paused"] == summary.paused
    assert status == [f"listing {listing}"]
    assert progress.calls[-1] == (1, 1, "download: 3 fetched, 0 already present, 0 quarantined, 0 rejected names, "
                                        f"0 failed; paused: {summary.paused}")
    assert token not in record.read_text()

    # Three documents wait for a batch: the next pass with the same limit fetches nothing.
    again = download.download_pass(layout, str(listing), tmp_path / "again.json", timeout=10, workers=1,
                                   max_waiting=3, min_free_gb=0, progress=Recorder(), status=status.append)
    assert again.fetched == 0 and again.paused


def test_a_download_pass_waits_while_another_process_downloads_into_the_same_base_dir(tmp_path, server):
    """Hosts sharing a base_dir without luigid: a second pass neither fetches the same documents again nor
    tidies away the first one's temp files; it waits, says so, then finds them present."""
    layout = Layout(tmp_path / "data", 2)
    for n in range(3):
        server.files[f"/doc{n}.pdf"] = doc(f"doc{n}", 1)
    urls = write_url_list(tmp_path / "urls.txt", [server.url(f"doc{n}.pdf") for n in range(3)])
    (layout.manifests).mkdir(parents=True)
    other = lease.try_acquire(layout.manifests / download.DOWNLOAD_LEASE, 60)  # the other host's pass
    assert other is not None
    status: list[str] = []
    done: list[download.DownloadSummary] = []
    waiting = threading.Thread(target=lambda: done.append(download.download_pass(
        layout, str(urls), tmp_path / "pass.json", timeout=10, workers=2, max_waiting=100, min_free_gb=0,
        progress=Recorder(), status=status.append, lease_seconds=60)))
    waiting.start()
    deadline = time.monotonic() + 30
    while not status and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status and status[0].startswith(f"waiting: another process downloads into {layout.base}")
    time.sleep(0.5)
    assert server.requests == [] and not (tmp_path / "pass.json").exists()
    other.release()
    waiting.join(30)
    assert not waiting.is_alive() and done[0].fetched == 3
    assert not (layout.manifests / download.DOWNLOAD_LEASE).exists()


def test_a_download_pass_without_source_says_which_setting_to_fill_in(tmp_path):
    with pytest.raises(ValueError, match=r"\[download\] source"):
        download.download_pass(Layout(tmp_path / "data", 2), "", tmp_path / "pass.json", timeout=10, workers=1,
                               max_waiting=10, min_free_gb=0, progress=Recorder(), status=lambda m: None)


def test_a_source_folder_lists_its_pdf_files_in_path_order_following_file_links_only(tmp_path: Path) -> None:
    source = tmp_path / "source"
    elsewhere = tmp_path / "elsewhere"
    for path in (source / "b.pdf", source / "a" / "z.PDF", source / "a b" / "c.pdf", source / "notes.txt",
                 elsewhere / "real.pdf", elsewhere / "inner" / "hidden_by_link.pdf"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%PDF-1.4")
    os.symlink(elsewhere / "real.pdf", source / "linked.pdf")
    os.symlink(elsewhere / "inner", source / "linked_folder")  # not entered, as rglob does not
    os.symlink(tmp_path / "missing.pdf", source / "broken.pdf")

    items = [i for i in download.iter_folder(source) if isinstance(i, download.SourceItem)]
    assert [(i.identifier, i.uri) for i in items] == [
        ("z", str(source / "a" / "z.PDF")), ("c", str(source / "a b" / "c.pdf")), ("b", str(source / "b.pdf")),
        ("linked", str(elsewhere / "real.pdf"))]


def test_present_knows_downloaded_and_finalized_documents_and_one_a_finalize_is_working_on(
        tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    source = tmp_path / "source"
    source.mkdir()
    (source / "doc.pdf").write_bytes(samples.text_pdf(["one"]))
    assert "doc" not in download.Present(layout)
    download.download_all(layout, download.iter_folder(source), workers=1, max_waiting=10, waiting_now=0,
                          min_free_gb=0)
    atomic.write_json(layout.processed_metadata("done"), {"identifier": "done"})
    # A finalize killed before it wrote anything: the document is still in its batch (an adopted one
    # has no .meta.json in 01), so fetching it again would process it twice.
    atomic.makedirs(layout.processed_dir("half"))
    present = download.Present(layout)
    assert "doc" in present and "done" in present and "half" in present
    assert "other" not in present and "doc.meta.json" not in present
    flat = Layout(tmp_path / "flat", 0)  # fan-out off: the stage folders hold the documents themselves
    atomic.write_json(flat.processed_metadata("done"), {"identifier": "done"})
    atomic.write_json(flat.downloaded_meta("doc"), {"identifier": "doc"})
    present_flat = download.Present(flat)
    assert "doc" in present_flat and "done" in present_flat and "other" not in present_flat


def test_a_pass_removes_the_temp_files_of_killed_attempts_of_its_documents_and_no_others(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    source = tmp_path / "source"
    source.mkdir()
    (source / "doc.pdf").write_bytes(samples.text_pdf(["one"]))
    folder = layout.downloaded_pdf("doc").parent
    folder.mkdir(parents=True)
    killed = [folder / ".doc.a1b2c3d4.part", folder / ".doc.meta.json.e5f6g7h8.tmp"]
    others = [folder / ".docx.a1b2c3d4.part", folder / ".other.meta.json.e5f6g7h8.tmp"]
    for path in killed + others:
        path.write_bytes(b"partial")
    summary = download.download_all(layout, download.iter_folder(source), workers=1, max_waiting=10,
                                    waiting_now=0, min_free_gb=0)
    assert summary.fetched == 1 and layout.downloaded_meta("doc").exists()
    assert not any(path.exists() for path in killed) and all(path.exists() for path in others)


def test_a_pass_over_groups_of_documents_moves_each_whole_into_01(tmp_path: Path) -> None:
    """Documents are moved into 01 in groups: every one arrives whole with its .meta.json, across
    groups, leaving no temp file or open descriptor."""
    layout = Layout(tmp_path / "data", 2)
    source = tmp_path / "source"
    source.mkdir()
    originals = {f"doc{n:03d}": samples.text_pdf([f"document {n}"]) for n in range(download.COMMIT_GROUP * 2 + 7)}
    for identifier, data in originals.items():
        (source / f"{identifier}.pdf").write_bytes(data)

    descriptors = open_descriptors()
    summary = download.download_all(layout, download.iter_folder(source), workers=4, max_waiting=10_000,
                                    waiting_now=0, min_free_gb=0)

    assert open_descriptors() == descriptors
    assert summary.fetched == len(originals)
    for identifier, data in originals.items():
        assert layout.downloaded_pdf(identifier).read_bytes() == data
        meta = json.loads(layout.downloaded_meta(identifier).read_text())
        assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["pages"] == 1
    assert list((layout.base / "01_downloaded").rglob(".*")) == []  # no temp file left
