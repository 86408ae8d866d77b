"""The collection's name (pipeline.collection): recorded once in base_dir, the same on every path
to it, and a configured name that disagrees with the record stops the run at its start."""
from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline import collection


def test_the_first_run_records_the_name_and_a_later_run_reads_it_through_another_path(tmp_path: Path) -> None:
    base = tmp_path / "site" / "data"
    base.mkdir(parents=True)
    name = collection.resolve(base, "")
    assert collection.recorded(base) is None  # resolving writes nothing
    assert collection.record(base, name) == name
    assert json.loads(collection.record_path(base).read_text())["name"] == name

    # The same folder reached at another path (another host's mount point): its own default
    # would differ, the recorded name holds.
    moved = tmp_path / "mnt" / "ocr"
    moved.parent.mkdir()
    shutil.move(base, moved)
    assert collection.default_name(moved) != name
    assert collection.resolve(moved, "") == name
    assert collection.record(moved, collection.resolve(moved, "")) == name


def test_two_base_dirs_with_the_same_folder_name_are_two_collections(tmp_path: Path) -> None:
    first, second = tmp_path / "north" / "data", tmp_path / "south" / "data"
    names = {collection.default_name(first), collection.default_name(second)}
    assert len(names) == 2 and all(n.startswith("data_") for n in names)
    assert all(collection.name_problem(n) is None for n in names)


def test_a_cloud_collection_is_named_after_its_status_prefix_the_same_on_every_node() -> None:
    name = collection.location_name("s3://archive/maps/status/")
    assert name == collection.location_name("s3://archive/maps/status/") and name.startswith("status_")
    assert name != collection.location_name("s3://archive/letters/status/")
    assert collection.location_name("") == ""  # none configured: no name


def _record(base: Path, name: str) -> str:
    return collection.record(base, name)


def test_of_first_runs_at_once_one_name_wins_for_all(tmp_path: Path) -> None:
    base = tmp_path / "data"
    base.mkdir()
    with multiprocessing.get_context("fork").Pool(8) as pool:
        results = pool.starmap(_record, [(base, f"site{n}") for n in range(16)])
    assert len(set(results)) == 1, results
    assert json.loads(collection.record_path(base).read_text())["name"] == results[0]
    assert [p.name for p in collection.record_path(base).parent.iterdir()] == [collection.RECORD]  # no temp left


def test_a_configured_name_that_is_not_the_recorded_one_is_a_problem(tmp_path: Path) -> None:
    base = tmp_path / "data"
    base.mkdir()
    assert collection.problem(base, "maps", "maps") is None  # nothing recorded yet: the configured name goes
    collection.record(base, "maps")
    assert collection.problem(base, "maps", "maps") is None
    assert collection.problem(base, "", "maps") is None  # the recorded name is the default
    assert collection.problem(base, "letters", "letters") == (
        f"[pipeline] collection = letters but base_dir {base} is collection maps (recorded in "
        f"{collection.record_path(base)}); set collection = maps, or remove the line to use it")
    assert collection.problem(base, "", "letters") == (
        f"--collection letters is not the collection of base_dir {base} (maps); leave it out: the collection "
        "comes from [pipeline] collection, else the name recorded in base_dir")
    assert collection.problem(base, "two words", "two words") == (
        "[pipeline] collection = 'two words' is not valid: use letters, digits, '.', '_' and '-' "
        "(at most 64, starting with a letter or digit)")


def test_the_command_line_stops_on_a_configured_name_the_record_contradicts(make_site: Callable) -> None:
    site = make_site()
    site.luigi("MetricsSummary")  # the first run records the collection
    recorded = collection.recorded(site.base)
    assert recorded is not None and recorded.startswith("data_")

    site = make_site(pipeline__collection="letters")
    result = site.luigi("MetricsSummary", check=False, merged=True)
    assert result.returncode == 2, result.stdout[-3000:]
    assert result.stdout.rstrip().splitlines()[-1] == (
        f"ERROR: [pipeline] collection = letters but base_dir {site.base} is collection {recorded} (recorded in "
        f"{collection.record_path(site.base)}); set collection = {recorded}, or remove the line to use it")

    site = make_site(pipeline__collection=recorded)
    site.luigi("MetricsSummary")
    result = site.luigi("MetricsSummary", "--collection", "letters", check=False, merged=True)
    assert result.returncode == 2, result.stdout[-3000:]
    assert result.stdout.rstrip().splitlines()[-1].startswith(
        f"ERROR: --collection letters is not the collection of base_dir {site.base} ({recorded}); leave it out")
    assert collection.recorded(site.base) == recorded
