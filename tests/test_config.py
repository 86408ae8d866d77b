"""Luigi settings the package supplies, and values of luigi.cfg it cannot read."""
from __future__ import annotations

from luigi.configuration import LuigiConfigParser

from pipeline import config


def parser(text: str) -> LuigiConfigParser:
    result = LuigiConfigParser()
    result.read_string(text)
    return result


def test_exit_codes_and_keep_alive_are_supplied_where_the_site_sets_none() -> None:
    site = parser("[pipeline]\nbase_dir = /srv/ocr\n")
    config.add_luigi_defaults(site)
    assert site.getint("retcode", "task_failed") == 30
    assert site.getint("retcode", "already_running") == 10
    assert site.getint("retcode", "scheduling_error") == 35
    assert site.getboolean("worker", "keep_alive") is True
    assert site.get("pipeline", "base_dir") == "/srv/ocr"


def test_the_sites_own_values_win_also_under_their_older_names() -> None:
    site = parser("[retcode]\ntask_failed = 3\n[core]\nworker-keep-alive = false\n")
    added = config.add_luigi_defaults(site)
    assert site.getint("retcode", "task_failed") == 3
    assert site.getint("retcode", "missing_data") == 20
    assert not site.has_option("worker", "keep_alive") and "[worker] keep_alive" not in added
    site = parser("[worker]\nkeep_alive = false\n")
    config.add_luigi_defaults(site)
    assert site.getboolean("worker", "keep_alive") is False


def test_values_that_cannot_be_read_are_named_with_what_is_accepted() -> None:
    site = parser("[ocr]\nengine = tesserac\nexecutor = kubernetes\npages_per_chunk = many\n"
                  "[s3]\nengine = gpu\n[pipeline]\nbase_dir = /srv/ocr\ncreate_base_dir = maybe\n")
    problems = config.invalid_values(site)
    assert "[ocr] engine = 'tesserac' is not valid: use one of command, olmocr, tesseract, text" in problems
    assert "[ocr] executor = 'kubernetes' is not valid: use one of local, slurm" in problems
    assert any(p.startswith("[ocr] pages_per_chunk = 'many' is not valid") for p in problems)
    assert any(p.startswith("[pipeline] create_base_dir = 'maybe' is not valid") for p in problems)
    assert any(p.startswith("[s3] engine = 'gpu' is not valid") for p in problems)
    assert len(problems) == 5


def test_the_shipped_luigi_cfg_is_valid() -> None:
    from .conftest import ROOT

    site = LuigiConfigParser()
    site.read(ROOT / "luigi.cfg")
    assert config.invalid_values(site) == []


def test_older_scheduler_key_names_take_the_current_name_luigi_reads_without_a_warning() -> None:
    site = parser("[core]\ndefault-scheduler-host = sched.example\ndefault_scheduler_port = 9000\n"
                  "default-scheduler-url = http://sched.example:9000/\nautoload_range = false\n")
    assert sorted(config.rename_scheduler_keys(site)) == [
        "default-scheduler-host", "default-scheduler-url", "default_scheduler_port"]
    assert dict(site.items("core")) == {"autoload_range": "false", "scheduler_host": "sched.example",
                                        "scheduler_port": "9000", "scheduler_url": "http://sched.example:9000/"}
    assert config.rename_scheduler_keys(site) == []  # a second import changes nothing


def test_an_older_scheduler_key_beside_the_current_one_stays_for_luigi_to_warn_about() -> None:
    site = parser("[core]\nscheduler_host = sched.example\ndefault-scheduler-host = other.example\n")
    assert config.rename_scheduler_keys(site) == []
    assert dict(site.items("core")) == {"scheduler_host": "sched.example", "default-scheduler-host": "other.example"}
    assert config.rename_scheduler_keys(parser("[pipeline]\nbase_dir = /srv/ocr\n")) == []
