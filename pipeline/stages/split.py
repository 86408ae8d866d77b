"""Split a batch's olmOCR results into one 04_ocr_completed/<ab>/<id>.ocr.jsonl per identifier.

Every record is made valid text on the way (olmocr_format.make_valid), also those adopted from
older runs; one that cannot be is left out and reported, so its document alone goes without result.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import atomic, events, olmocr_format
from pipeline.layout import BatchPaths, Layout
from pipeline.stages import ocr as ocr_pass

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, SlurmConfig
    from pipeline.executors.base import Progress


@dataclass
class SplitPlan:
    winners: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)  # id -> (record, "file:line")
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # id -> every place seen, winner last
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    replaced: dict[str, int] = field(default_factory=dict)  # id -> characters replaced to make it valid
    invalid: dict[str, str] = field(default_factory=dict)  # id -> why its record could not be made valid


def plan_split(results_dir: Path, identifiers: set[str]) -> SplitPlan:
    """Pick one record per identifier of the batch: the later file wins, and within it the later line.

    Files are ordered by (mtime, name), so the choice is the same on every run over the same tree.
    """
    plan = SplitPlan()
    if not results_dir.is_dir():
        return plan
    for path in olmocr_format.result_files(results_dir):
        plan.files += 1
        for line in olmocr_format.iter_records(path):
            where = f"{path.name}:{line.line_number}"
            if line.record is None:
                plan.malformed.append({"at": where, "error": line.error})
                continue
            source = olmocr_format.source_file_of(line.record) or ""  # iter_records: never empty
            identifier = olmocr_format.identifier_from_source(source)
            if identifier not in identifiers:
                plan.unmatched.append({"at": where, "source_file": source})
                continue
            if identifier in plan.winners:
                seen = plan.duplicates.setdefault(identifier, [plan.winners[identifier][1]])
                seen.append(where)
            plan.winners[identifier] = (line.record, where)
    return plan


def report(plan: SplitPlan, identifiers: set[str], written: int) -> dict[str, Any]:
    return {
        "result_files": plan.files,
        "documents": len(identifiers),
        "split": len(plan.winners) - len(plan.invalid),
        "written": written,
        "without_result": sorted(identifiers - (set(plan.winners) - set(plan.invalid))),
        "duplicates": {k: {"kept": v[-1], "dropped": v[:-1]} for k, v in sorted(plan.duplicates.items())},
        "unmatched_records": plan.unmatched,
        "malformed_lines": plan.malformed,
        "replaced_characters": dict(sorted(plan.replaced.items())),
        "invalid_records": dict(sorted(plan.invalid.items())),
    }


def write_split(plan: SplitPlan, destination: Callable[[str], Path], workers: int = 1) -> int:
    """Write each winner, made valid, to ``destination(identifier)``; files already holding it are left
    untouched. Fills ``plan.replaced`` and ``plan.invalid``; call it before ``report``.

    ``workers`` threads flush the files (``atomic.write_many``), and the folders that gained files
    are synced together before returning: every file is durable when this returns."""
    targets = {identifier: destination(identifier) for identifier in plan.winners}
    made = atomic.prepare(atomic.temp_names(target) for target in targets.values())
    files = []
    for identifier in sorted(plan.winners):
        record, where = plan.winners[identifier]
        try:
            valid, replaced = olmocr_format.make_valid(record)
            data = olmocr_format.record_line(valid)
        except olmocr_format.InvalidRecord as exc:
            plan.invalid[identifier] = f"{where}: {exc}"
            continue
        if replaced:
            plan.replaced[identifier] = replaced
        files.append((targets[identifier], data))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as flushers:
        written = atomic.write_many(files, flushers)
    atomic.fsync_dirs([*made, *(path.parent for path in written)])
    return len(written)


def split_documents(layout: Layout, paths: BatchPaths, identifiers: set[str],
                    plan: SplitPlan | None = None, workers: int = 1) -> dict[str, Any]:
    """Write the 04 record of each of ``identifiers`` found in the batch's results (``plan``: the
    choice already made; ``workers``: files written at once); returns the split report."""
    if plan is None:
        plan = plan_split(paths.results, identifiers)
    return report(plan, identifiers, write_split(plan, layout.completed_jsonl, workers))


def split_results(layout: Layout, paths: BatchPaths, ocr: OCRConfig, slurm: SlurmConfig,
                  progress: Progress, status: Callable[[str], None], workers: int = 1) -> dict[str, Any]:
    """SplitResults: the batch's 04 records and split_report.json. Done chunks whose results were cut
    short or are gone run again first (with ``ocr`` and ``slurm`` settings); returns the report."""
    identifiers = set(atomic.read_json(paths.batch_record)["documents"])
    plan = plan_split(paths.results, identifiers)
    if ocr_pass.redo_untrusted(layout, paths, set(plan.winners), ocr, slurm, progress, status):
        plan = plan_split(paths.results, identifiers)
    result = split_documents(layout, paths, identifiers, plan, workers)
    events.log_event(layout.events, "split", batch=paths.number, documents=result["split"],
                     unmatched=len(plan.unmatched), malformed=len(plan.malformed), duplicates=len(plan.duplicates))
    atomic.write_json(paths.split_report, result)
    progress(1, 1, f"split {result['split']} documents; {len(plan.unmatched)} unmatched records, "
                   f"{len(plan.malformed)} malformed lines, {len(plan.duplicates)} duplicates")
    return result
