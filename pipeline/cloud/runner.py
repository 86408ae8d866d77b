"""Running one cloud shard on this node: every document without a .done marker, N at a time.

Each document is downloaded, run through its engine, its outputs uploaded, and only then its
.done marker written (or a .failed one with the attempt count): a run killed at any point redoes
the documents in flight and never skips one whose outputs are not all uploaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cloud import Progress, no_progress, s3
from pipeline.cloud.markers import doc_key, marker_bytes, marker_uri, output_uri, scan_markers, shard_marker_uri
from pipeline.cloud.shard_plan import uri_problem
from pipeline.engines import ENGINES, Engine, EngineSettings, get_engine
from pipeline.engines.command import DocumentCommandEngine

if TYPE_CHECKING:
    from pipeline.config import OCRConfig, S3Config


def require(cfg: S3Config, *names: str) -> None:
    """ValueError naming the [s3] keys among ``names`` that are not set."""
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise ValueError(f"set {', '.join(missing)} in luigi.cfg [s3]")


@dataclass
class ShardSettings:
    """What a shard run needs, resolved from [s3] and [ocr]."""

    shard: int
    status_prefix: str
    output_prefix: str
    work_dir: Path
    engine: str
    command: str = ""
    engine_settings: EngineSettings = field(default_factory=EngineSettings)
    parallel: int = 2
    attempts: int = 3
    timeout: float = 0.0

    @classmethod
    def from_config(cls, shard: int, cfg: S3Config, ocr: OCRConfig) -> ShardSettings:
        """[s3] wins over [ocr]: its engine (when set), its command and its per-document timeout."""
        require(cfg, "status_prefix", "output_prefix", "work_dir")
        engine = cfg.engine or ocr.engine
        if engine not in ENGINES:
            raise ValueError(f"[s3] engine {engine!r} is unknown; use one of {', '.join(ENGINES)}")
        if engine == "command":
            require(cfg, "command")
        return cls(
            shard=shard,
            status_prefix=cfg.status_prefix,
            output_prefix=cfg.output_prefix,
            work_dir=Path(cfg.work_dir).resolve(),
            engine=engine,
            command=cfg.command,
            engine_settings=EngineSettings.from_config(ocr),
            parallel=cfg.parallel_documents,
            attempts=cfg.document_attempts,
            timeout=cfg.document_timeout,
        )


class DocumentFailed(Exception):
    pass


@dataclass
class Outcome:
    uri: str
    ok: bool
    error: str = ""
    attempts: int = 1
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)


def _set_source_file(paths: list[Path], uri: str) -> int:
    """Point each record's Source-File at the URI instead of the node's temp copy; returns records."""
    records = 0
    for path in paths:
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                record.setdefault("metadata", {})["Source-File"] = uri
                lines.append(json.dumps(record, ensure_ascii=False))
        records += len(lines)
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return records


def document_engine(settings: ShardSettings, uri: str, folder: Path) -> Engine:
    """The engine one document runs through: the [s3] command (once per document), or a built-in one."""
    if settings.engine == "command":
        return DocumentCommandEngine(settings.command, {
            "uri": uri,
            "workdir": str(folder),
            "output": output_uri(settings.output_prefix, uri),
            "shard": str(settings.shard),
        }, timeout=settings.timeout)
    return get_engine(settings.engine, settings.engine_settings)


def _run_engine(settings: ShardSettings, uri: str, pdf_path: Path, folder: Path, outdir: Path) -> None:
    paths = document_engine(settings, uri, folder).run([pdf_path], outdir)
    # A command's outputs are its own; a built-in engine's records name the document by its URI.
    if settings.engine != "command" and not _set_source_file(paths, uri):
        raise DocumentFailed(f"the {settings.engine} engine wrote no record for it (unreadable PDF?)")


def run_document(storage: s3.Storage, settings: ShardSettings, uri: str, previous_attempts: int = 0) -> Outcome:
    """Download, run, upload the outputs, then write .done (or .failed); the local copy is removed.

    The .done marker is written last, so a run killed at any point redoes the document and never
    skips one whose outputs are not all uploaded.
    """
    started = time.monotonic()
    attempt = previous_attempts + 1
    name = hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    folder = s3.inside(shard_work_dir(settings), name)
    try:
        key = s3.split(uri)[1] if s3.is_s3(uri) else uri
        pdf_path = s3.inside(folder, "input", s3.local_name(key))
        outdir = s3.inside(folder, "output")
        outdir.mkdir(parents=True)
        storage.download(uri, pdf_path)
        _run_engine(settings, uri, pdf_path, folder, outdir)
        base = output_uri(settings.output_prefix, uri)
        outputs = []
        for path in sorted(p for p in outdir.rglob("*") if p.is_file()):
            target = s3.join(base, *path.relative_to(outdir).parts)
            storage.upload(path, target)
            outputs.append(target)
        seconds = round(time.monotonic() - started, 3)
        storage.write_bytes(marker_uri(settings.status_prefix, uri, "done"), marker_bytes(
            uri=uri, shard=settings.shard, attempts=attempt, outputs=outputs, seconds=seconds))
        if previous_attempts:
            storage.delete(marker_uri(settings.status_prefix, uri, "failed"))
        return Outcome(uri, True, attempts=attempt, seconds=seconds, outputs=outputs)
    except Exception as exc:  # one document's failure of any kind must not stop the shard
        if isinstance(exc, s3.S3Error) and exc.unavailable:
            raise  # S3 itself failed, not the document: no attempt is counted against it
        error = str(exc) or type(exc).__name__
        storage.write_bytes(marker_uri(settings.status_prefix, uri, "failed"), marker_bytes(
            uri=uri, shard=settings.shard, attempts=attempt, error=error))
        return Outcome(uri, False, error, attempt, round(time.monotonic() - started, 3))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class ShardPlan:
    todo: list[tuple[str, int]]  # (uri, attempts so far)
    done: list[str]
    gave_up: list[str]  # failed document_attempts times already
    redo: list[str] = field(default_factory=list)  # had a .done marker whose outputs are missing
    rejected: list[dict[str, str]] = field(default_factory=list)  # lines that name no document: {line, reason}


def plan_shard(storage: s3.Storage, settings: ShardSettings, uris: list[str]) -> ShardPlan:
    """Sort the shard's documents by their markers (one LIST, one GET per marker, one LIST of outputs).

    A .done marker counts only when every output it lists exists: one whose outputs are gone (a
    lost upload) is deleted and its document redone.
    """
    plan = ShardPlan([], [], [])
    plan.rejected = [{"line": uri, "reason": f"{uri!r} {uri_problem(uri)}"} for uri in uris if uri_problem(uri)]
    uris = [uri for uri in uris if not uri_problem(uri)]  # never used as a key or a path
    done, failed = scan_markers(storage, settings.status_prefix)
    missing = drop_unconfirmed(storage, settings, [uri for uri in uris if doc_key(uri) in done])
    for uri in uris:
        key = doc_key(uri)
        if key in done and uri not in missing:
            plan.done.append(uri)
            continue
        if uri in missing:
            plan.redo.append(uri)
        attempts = 0
        if key in failed:
            body = storage.read_optional(marker_uri(settings.status_prefix, uri, "failed"))
            attempts = int(json.loads(body).get("attempts", 1)) if body else 0
        if attempts >= settings.attempts:
            plan.gave_up.append(uri)
        else:
            plan.todo.append((uri, attempts))
    return plan


def drop_unconfirmed(
    storage: s3.Storage, settings: ShardSettings, uris: list[str], outputs: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """{uri: missing outputs} of the documents whose outputs are not all there; their .done markers
    are deleted, so that no document counts as done without its outputs.

    Each document's outputs are ``outputs[uri]`` (this run's uploads) or read from its .done marker;
    they are looked up in one listing of the folder the documents' outputs share.
    """
    if not uris:
        return {}
    known = outputs or {}
    shared = os.path.commonprefix([output_uri(settings.output_prefix, uri) for uri in uris])
    listed = {item.uri for item in storage.list(shared[: shared.rfind("/") + 1])} if s3.is_s3(shared) else set()

    def missing(uri: str) -> list[str]:
        if uri in known:
            listed_outputs = known[uri]
        else:
            body = storage.read_optional(marker_uri(settings.status_prefix, uri, "done"))
            try:
                listed_outputs = json.loads(body or b"")["outputs"]
            except (ValueError, KeyError, TypeError):
                return ["(the .done marker does not list its outputs)"]
        gone = [o for o in listed_outputs if o not in listed and not (not s3.is_s3(o) and os.path.isfile(o))]
        if gone:
            storage.delete(marker_uri(settings.status_prefix, uri, "done"))
        return gone

    with ThreadPoolExecutor(16, thread_name_prefix="verify") as pool:
        return {uri: gone for uri, gone in zip(uris, pool.map(missing, uris), strict=True) if gone}


def shard_work_dir(settings: ShardSettings) -> Path:
    return s3.inside(settings.work_dir, f"shard_{settings.shard}")


def run_documents(
    storage: s3.Storage,
    settings: ShardSettings,
    todo: list[tuple[str, int]],
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Run ``settings.parallel`` documents at a time, in shard order (largest first).

    Whatever the shard's work folder holds first is left from a killed run (its documents are
    redone or already done), so it is cleared.
    """
    shutil.rmtree(shard_work_dir(settings), ignore_errors=True)
    with ThreadPoolExecutor(max(1, settings.parallel), thread_name_prefix="document") as pool:
        futures = [pool.submit(run_document, storage, settings, uri, attempts) for uri, attempts in todo]
        outcomes = []
        try:
            for future in futures:
                outcomes.append(future.result())
                on_done(outcomes[-1])
        except s3.S3Error:  # S3 is down: the documents not started would fail the same way
            pool.shutdown(cancel_futures=True)
            raise
    return outcomes


def run_shard(
    storage: s3.Storage,
    settings: ShardSettings,
    uris: list[str],
    progress: Progress = no_progress,
    warn: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run the shard's documents not yet done, then write the shard's .done marker; returns its body.

    Raises RuntimeError, naming what to rerun, while documents may still be retried (fewer than
    ``settings.attempts`` attempts) or when outputs uploaded by this run are not in storage.
    """
    shard = settings.shard
    plan = plan_shard(storage, settings, uris)
    for line in plan.rejected:
        warn(f"RunShard {shard}: shard file line rejected: {line['reason']}")
    if plan.redo:
        warn(f"RunShard {shard}: {len(plan.redo)} documents had a .done marker but not all its outputs "
             f"(first: {plan.redo[0]}); they are run again")
    progress(100 * len(plan.done) / max(1, len(uris)),
             f"shard {shard}: {len(uris):,} documents, {len(plan.done):,} done, "
             f"{len(plan.gave_up):,} failed for good, {len(plan.todo):,} to run", force=True)
    counts = {"ok": 0, "failed": 0}

    def on_done(outcome: Outcome) -> None:
        counts["ok" if outcome.ok else "failed"] += 1
        if not outcome.ok:
            warn(f"RunShard {shard}: {outcome.uri} failed (attempt {outcome.attempts}): {outcome.error[:300]}")
        finished = len(plan.done) + counts["ok"]
        progress(100 * finished / max(1, len(uris)),
                 f"shard {shard}: {finished:,}/{len(uris):,} done, {counts['failed']:,} failed this run")

    outcomes = run_documents(storage, settings, plan.todo, on_done)
    ran = {o.uri: o.outputs for o in outcomes if o.ok}
    lost = drop_unconfirmed(storage, settings, list(ran), ran)
    if lost:
        uri, missing = next(iter(lost.items()))
        raise RuntimeError(
            f"shard {shard}: the uploaded outputs of {len(lost)} documents are not in storage "
            f"(first: {uri}: {missing[0]}); their .done markers were removed; rerun RunShard "
            f"--shard {shard} to run them again")
    retry = [o for o in outcomes if not o.ok and o.attempts < settings.attempts]
    if retry:
        raise RuntimeError(
            f"shard {shard}: {len(retry)} documents failed (first: {retry[0].uri}: {retry[0].error[:200]}); "
            f"their .failed markers are under {settings.status_prefix}; rerun RunShard --shard {shard} "
            f"to retry them (at most {settings.attempts} attempts each)"
        )
    gave_up = plan.gave_up + [o.uri for o in outcomes if not o.ok]
    summary = {
        "shard": shard,
        "documents": len(uris),
        "done": len(uris) - len(gave_up) - len(plan.rejected),
        "failed": gave_up,
        "rejected": plan.rejected,
    }
    storage.write_bytes(shard_marker_uri(settings.status_prefix, shard),
                        (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    progress(100, f"shard {shard}: finished, {len(gave_up)} documents failed for good", force=True)
    return summary
