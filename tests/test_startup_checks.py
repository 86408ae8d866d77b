"""The start-up checks, in-process: each problem is one line naming the thing and the fix."""
from __future__ import annotations

import socket
from pathlib import Path

from pipeline import startup_checks
from pipeline.layout import Layout


def test_a_luigi_config_path_that_names_no_file_is_a_problem(tmp_path: Path) -> None:
    config = tmp_path / "site.cfg"
    assert startup_checks.config_file_problem(None) is None
    problem = startup_checks.config_file_problem(str(config))
    assert problem and str(config) in problem and "LUIGI_CONFIG_PATH" in problem
    config.write_text("[pipeline]\n")
    assert startup_checks.config_file_problem(str(config)) is None


def test_a_missing_base_dir_is_created_only_when_asked(tmp_path: Path) -> None:
    base = tmp_path / "volume" / "data"
    problem = startup_checks.base_dir_problem(base, create=False)
    assert problem and str(base) in problem and "create_base_dir = true" in problem
    assert not base.parent.exists()
    assert startup_checks.base_dir_problem(base, create=True) is None
    assert base.is_dir()
    assert startup_checks.base_dir_problem(base, create=False) is None


def test_a_base_dir_that_is_a_file_is_a_problem(tmp_path: Path) -> None:
    base = tmp_path / "data"
    base.write_text("not a folder")
    for create in (False, True):
        problem = startup_checks.base_dir_problem(base, create=create)
        assert problem and "is not a folder" in problem
    assert base.read_text() == "not a folder"


def test_a_local_download_source_must_exist(tmp_path: Path) -> None:
    folder, listing = tmp_path / "incoming", tmp_path / "urls.txt"
    folder.mkdir()
    listing.write_text("https://example.org/a.pdf\n")
    assert startup_checks.download_source_problem(str(folder)) is None
    assert startup_checks.download_source_problem(str(listing)) is None
    assert startup_checks.download_source_problem("s3://bucket/raw/") is None  # checked when listed
    problem = startup_checks.download_source_problem(str(tmp_path / "incomming"))
    assert problem and str(tmp_path / "incomming") in problem and "[download] source" in problem


def test_a_batch_that_was_never_opened_names_the_command_that_opens_it(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data", 2)
    problem = startup_checks.missing_batch_problem(layout, "0007")
    assert problem == (f"batch 0007 does not exist under {layout.processing}; run "
                       "`luigi --module pipeline CreateBatch --batch 7` or ProcessAll to open one")
    layout.batch_dir(7).mkdir(parents=True)  # a batch folder, also one made by the older scripts
    assert startup_checks.missing_batch_problem(layout, "7") is None


def test_scheduler_address_comes_from_the_url_when_one_is_set() -> None:
    assert startup_checks.scheduler_address("", "sched.example", 8082) == ("sched.example", 8082)
    assert startup_checks.scheduler_address("http://10.0.0.5:9000/", "localhost", 8082) == ("10.0.0.5", 9000)
    assert startup_checks.scheduler_address("https://luigi.example/", "localhost", 8082) == ("luigi.example", 443)
    assert startup_checks.scheduler_address("http+unix://%2Frun%2Fluigi.sock", "localhost", 8082) is None


def test_a_scheduler_that_does_not_listen_is_a_problem() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert startup_checks.scheduler_problem("127.0.0.1", port) is None
    problem = startup_checks.scheduler_problem("127.0.0.1", port, timeout=2)
    assert problem and f"127.0.0.1:{port}" in problem and "--local-scheduler" in problem
