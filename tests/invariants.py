"""What a user relies on after any fault, checked on a base_dir (for the kill, disk and corruption tests).

Two checks:

``check_safe(base)`` holds at every instant, even with the pipeline stopped or killed mid-write:
    - no PDF was deleted before its outputs were durable: a document the pipeline holds (its
      01 .meta.json exists, or a batch.json lists it) either still has a PDF somewhere (01,
      02, its batch folder, quarantine) or has both 05 files whole;
    - every file under its final name is whole: each .json parses, each line of .jsonl and
      .ndjson files parses (temp files are ignored here: a killed writer may leave them).

``check_converged(base, reference)`` is the end state after a rerun, against an undisturbed run:
    - every document is finalized exactly once with the same ``text`` bytes as the reference, or
      quarantined with the reference's reason, never both, and nothing else appears;
    - a document is in one batch only, its metadata names that batch, and at most one
      ``finalized`` event was logged for it;
    - no PDF or .meta.json is left in 01/02/03, every batch has finalized.json;
    - no temp file (atomic.py's ``.<name>.XXX.tmp``, a download's ``.part``) or other hidden
      file, and no stray marker: each chunk done marker belongs to a planned or retry chunk
      and its result files exist.

Each returns a list of problems (empty when all is well), so a test can show them all at once;
``assert_safe`` and ``assert_converged`` raise with that list.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.layout import DOWNLOADED, MANIFESTS, PENDING_LEGACY, PROCESSED, QUARANTINE, BatchPaths, Layout

# The batch creators' lease (03_ocr_processing/.create.lease), and the lock file older versions made.
ALLOWED_HIDDEN = {".create.lease", ".create.lock"}


@dataclass
class Reference:
    """The outcome of an undisturbed run: identifier -> 05 text, identifier -> quarantine reason."""

    texts: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)

    @property
    def identifiers(self) -> set[str]:
        return set(self.texts) | set(self.quarantined)


def _json(path: Path):
    return json.loads(path.read_bytes().decode("utf-8"))


def finalized_ids(base: Path) -> set[str]:
    """Identifiers with a 05_processed/<ab>/<id>/ folder."""
    root = base / PROCESSED
    return {p.name for p in root.glob("*/*") if p.is_dir()} if root.is_dir() else set()


def quarantined_ids(base: Path) -> set[str]:
    root = base / QUARANTINE
    return {p.name[: -len(".reason.json")] for p in root.rglob("*.reason.json")} if root.is_dir() else set()


def reference(base: Path, fanout_width: int = 2) -> Reference:
    """Read the outcome of an undisturbed run on ``base``."""
    layout = Layout(base, fanout_width)
    ref = Reference()
    for identifier in finalized_ids(base):
        ref.texts[identifier] = _json(layout.processed_ocr(identifier))["text"]
    for identifier in quarantined_ids(base):
        ref.quarantined[identifier] = _json(layout.quarantine_reason(identifier))["reason"]
    return ref


def _batches(base: Path, fanout_width: int) -> dict[str, BatchPaths]:
    layout = Layout(base, fanout_width)
    return {n: BatchPaths(layout.batch_dir(n)) for n in layout.batch_numbers()}


def _whole_output(layout: Layout, identifier: str) -> bool:
    try:
        meta = _json(layout.processed_metadata(identifier))
        record = _json(layout.processed_ocr(identifier))
    except (FileNotFoundError, ValueError):
        return False
    return meta.get("identifier") == identifier and isinstance(record.get("text"), str)


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".")


def held_identifiers(base: Path, fanout_width: int = 2) -> set[str]:
    """Documents the pipeline has taken charge of: a 01 .meta.json, or listed in a batch.json."""
    held = {p.name[: -len(".meta.json")] for p in (base / DOWNLOADED).rglob("*.meta.json") if not _is_temp(p)}
    for paths in _batches(base, fanout_width).values():
        if paths.batch_record.exists():
            held.update(_json(paths.batch_record)["documents"])
    return held


def _pdf_copies(base: Path, layout: Layout, batches: dict[str, BatchPaths], identifier: str) -> list[Path]:
    candidates = [layout.downloaded_pdf(identifier), layout.quarantine_pdf(identifier),
                  base / PENDING_LEGACY / f"{identifier}.pdf"]
    candidates += [paths.pdf(identifier) for paths in batches.values()]
    return [p for p in candidates if p.exists()]


def unparsable_files(base: Path) -> list[str]:
    """Files under their final names that do not parse (half-written JSON would show up here)."""
    problems = []
    for path in sorted(base.rglob("*")):
        if not path.is_file() or _is_temp(path):
            continue
        try:
            if path.name.endswith(".json"):
                _json(path)
            elif path.name.endswith((".jsonl", ".ndjson")):
                for number, line in enumerate(path.read_bytes().splitlines(), 1):
                    if line.strip():
                        try:
                            json.loads(line)
                        except ValueError:
                            problems.append(f"{path.relative_to(base)}:{number}: a line that is not JSON")
                            break
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{path.relative_to(base)}: not whole JSON ({exc})")
    return problems


def check_safe(base: Path, fanout_width: int = 2) -> list[str]:
    """Problems that must never exist, at any instant."""
    layout = Layout(base, fanout_width)
    batches = _batches(base, fanout_width)
    problems = unparsable_files(base)
    for identifier in sorted(held_identifiers(base, fanout_width)):
        if not _pdf_copies(base, layout, batches, identifier) and not _whole_output(layout, identifier):
            problems.append(f"{identifier}: PDF deleted but 05 output not whole")
    return problems


def check_converged(base: Path, ref: Reference, fanout_width: int = 2) -> list[str]:
    """Problems in the end state after a rerun, compared with the undisturbed run ``ref``."""
    layout = Layout(base, fanout_width)
    batches = _batches(base, fanout_width)
    problems = check_safe(base, fanout_width)

    finalized, quarantined = finalized_ids(base), quarantined_ids(base)
    for identifier in sorted(finalized - set(ref.texts)):
        problems.append(f"{identifier}: finalized, the undisturbed run did not finalize it")
    for identifier in sorted(quarantined - set(ref.quarantined)):
        problems.append(f"{identifier}: quarantined, the undisturbed run did not quarantine it")
    for identifier, text in sorted(ref.texts.items()):
        if not _whole_output(layout, identifier):
            problems.append(f"{identifier}: lost (no whole 05 output)")
        elif _json(layout.processed_ocr(identifier))["text"] != text:
            problems.append(f"{identifier}: 05 text differs from the undisturbed run")
    for identifier, reason in sorted(ref.quarantined.items()):
        path = layout.quarantine_reason(identifier)
        if not path.exists() or not layout.quarantine_pdf(identifier).exists():
            problems.append(f"{identifier}: lost (expected in quarantine for {reason})")
        elif _json(path).get("reason") != reason or not _json(path).get("message"):
            problems.append(f"{identifier}: quarantined for {_json(path).get('reason')!r}, expected {reason!r}")

    owner: dict[str, str] = {}
    for number, paths in sorted(batches.items()):
        if not paths.finalized.exists():
            problems.append(f"batch {number}: no finalized.json")
        if paths.batch_record.exists():
            for identifier in _json(paths.batch_record)["documents"]:
                if identifier in owner:
                    problems.append(f"{identifier}: in batch {owner[identifier]} and in batch {number}")
                owner[identifier] = number
        problems += _stray_markers(paths)
        problems += [f"{p.relative_to(base)}: PDF left in the batch folder" for p in paths.dir.glob("*.pdf")]
    for identifier in sorted(finalized & set(owner)):
        if _whole_output(layout, identifier):
            named = _json(layout.processed_metadata(identifier)).get("batch")
            if named != owner[identifier]:
                problems.append(f"{identifier}: metadata names batch {named}, "
                                f"batch.json of {owner[identifier]} lists it")
    events = base / MANIFESTS / "events.ndjson"
    if events.exists():
        counts: dict[str, int] = {}
        for line in events.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "finalized":
                counts[record["identifier"]] = counts.get(record["identifier"], 0) + 1
        problems += [f"{i}: finalized {n} times (events.ndjson)" for i, n in sorted(counts.items()) if n > 1]

    for stage in (DOWNLOADED, PENDING_LEGACY):
        problems += [f"{p.relative_to(base)}: left behind" for p in (base / stage).rglob("*")
                     if p.is_file() and p.name.endswith((".pdf", ".meta.json"))]
    problems += [f"{p.relative_to(base)}: temp or hidden file left behind" for p in base.rglob(".*")
                 if p.is_file() and p.name not in ALLOWED_HIDDEN]
    return problems


def _stray_markers(paths: BatchPaths) -> list[str]:
    """Done markers of chunks no plan has, or whose result files are missing."""
    planned: set[int] = set()
    for plan in (paths.chunk_plan, paths.retry_plan):
        if plan.exists():
            planned.update(c["index"] for c in _json(plan)["chunks"])
    problems = []
    done = paths.workspace / "done"
    for marker in sorted(done.glob("chunk_*.done")) if done.is_dir() else ():
        index = int(marker.stem.split("_")[1])
        if index not in planned:
            problems.append(f"{marker}: done marker of a chunk no plan has")
            continue
        for name in _json(marker).get("results", []):
            if not (paths.results / name).exists():
                problems.append(f"{marker}: its result file {name} is missing")
    return problems


def assert_safe(base: Path, fanout_width: int = 2) -> None:
    problems = check_safe(base, fanout_width)
    assert not problems, "unsafe state:\n  " + "\n  ".join(problems)


def assert_converged(base: Path, ref: Reference, fanout_width: int = 2) -> None:
    problems = check_converged(base, ref, fanout_width)
    assert not problems, "did not converge to the undisturbed result:\n  " + "\n  ".join(problems)


# --- cloud shards (RunShard on S3) ----------------------------------------------------------------
#
# The same promises for a shard: a document's .done marker is trusted only with every output it
# lists uploaded; after a rerun each document of the shard is done with the undisturbed run's text
# or failed with a reason, the shard marker says so, no output is left that no marker lists, no
# file is left in the node's work folder, and the source PDFs are all still there.

def s3_objects(client, uri: str) -> dict[str, dict]:
    """key -> listing entry of every object under an s3:// prefix."""
    from pipeline.cloud import s3

    bucket, prefix = s3.split(uri)
    found: dict[str, dict] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        found |= {item["Key"]: item for item in page.get("Contents", [])}
    return found


def _s3_get(client, uri: str) -> bytes | None:
    from pipeline.cloud import s3

    bucket, key = s3.split(uri)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def shard_reference(client, status_prefix: str, uris: list[str]) -> Reference:
    """The outcome of an undisturbed RunShard: source key -> text, source key -> 'failed'."""
    from pipeline.cloud import markers, s3

    ref = Reference()
    for uri in uris:
        key = s3.split(uri)[1]
        done = _s3_get(client, markers.marker_uri(status_prefix, uri, "done"))
        if done is None:
            ref.quarantined[key] = "failed"
            continue
        ref.texts[key] = "".join(json.loads(line)["text"] for o in json.loads(done)["outputs"]
                                 for line in (_s3_get(client, o) or b"").splitlines() if line.strip())
    return ref


def check_shard_safe(client, status_prefix: str, uris: list[str]) -> list[str]:
    """At any instant: every .done marker whole with its outputs uploaded; every source still there."""
    from pipeline.cloud import s3

    problems = []
    for key in sorted(s3_objects(client, status_prefix)):
        uri = f"s3://{s3.split(status_prefix)[0]}/{key}"
        try:
            marker = json.loads(_s3_get(client, uri) or b"")
        except ValueError:
            problems.append(f"{uri}: marker is not whole JSON")
            continue
        for output in marker.get("outputs", []) if key.endswith(".done") and "/_shards/" not in key else ():
            if _s3_get(client, output) is None:
                problems.append(f"{uri}: lists {output}, which was not uploaded")
    for uri in uris:
        if _s3_get(client, uri) is None:
            problems.append(f"{uri}: source PDF is gone")
    return problems


def check_shard_converged(client, status_prefix: str, output_prefix: str, shard: int, uris: list[str],
                          ref: Reference, work_dir: Path) -> list[str]:
    """The end state of a shard after a rerun, against the undisturbed run ``ref`` (by source key)."""
    from pipeline.cloud import markers, s3

    problems = check_shard_safe(client, status_prefix, uris)
    listed: set[str] = set()
    for uri in uris:
        key = s3.split(uri)[1]
        done = _s3_get(client, markers.marker_uri(status_prefix, uri, "done"))
        failed = _s3_get(client, markers.marker_uri(status_prefix, uri, "failed"))
        if key in ref.texts:
            if done is None:
                problems.append(f"{uri}: lost (no .done marker)")
                continue
            outputs = json.loads(done)["outputs"]
            listed.update(outputs)
            records = [json.loads(line) for o in outputs for line in (_s3_get(client, o) or b"").splitlines()
                       if line.strip()]
            if "".join(r["text"] for r in records) != ref.texts[key]:
                problems.append(f"{uri}: text differs from the undisturbed run")
            if [r["metadata"]["Source-File"] for r in records] != [uri]:
                problems.append(f"{uri}: expected one record naming it, found {len(records)}")
            if failed is not None:
                problems.append(f"{uri}: done, and a .failed marker is left")
        elif done is not None or failed is None or not json.loads(failed).get("error"):
            problems.append(f"{uri}: expected failed with a reason, as in the undisturbed run")
    bucket = s3.split(output_prefix)[0]
    problems += [f"s3://{bucket}/{k}: an output no .done marker lists" for k in s3_objects(client, output_prefix)
                 if f"s3://{bucket}/{k}" not in listed]
    summary = _s3_get(client, markers.shard_marker_uri(status_prefix, shard))
    if summary is None:
        problems.append(f"shard {shard}: no shard marker")
    else:
        record = json.loads(summary)
        expected_failed = sorted(u for u in uris if s3.split(u)[1] in ref.quarantined)
        if record["done"] != len(ref.texts) or sorted(record["failed"]) != expected_failed:
            problems.append(f"shard {shard}: marker says {record['done']} done, failed {record['failed']}")
    problems += [f"{p}: left in the work folder" for p in Path(work_dir).rglob("*") if p.is_file()]
    return problems
