"""Running one cloud shard on this node: every document without a .done marker, N at a time.

Each document is downloaded, run through its engine, its outputs uploaded, and only then its
.done marker written (or a .failed one with the attempt count): a run killed at any point redoes
the documents in flight and never skips one whose outputs are not all uploaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from pipeline.cloud import Progress, no_progress, s3
from pipeline.cloud.claims import ClaimLost, Claims, Held, LeaseKeeper, Node
from pipeline.cloud.markers import (
    doc_key,
    marker_bytes,
    marker_uri,
    node_stats_uri,
    output_uri,
    scan_markers,
    scan_status,
    shard_marker_uri,
)
from pipeline.cloud.shard_plan import read_shards, uri_problem
from pipeline.cloud.stealing import next_document
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
    lease_seconds: float = 600.0
    claim_attempts: int = 3
    steal: bool = False
    shard_prefix: str = ""
    node: Node = field(default_factory=Node.here)

    @classmethod
    def from_config(cls, shard: int, cfg: S3Config, ocr: OCRConfig, steal: bool = False) -> ShardSettings:
        """[s3] wins over [ocr]: its engine (when set), its command and its per-document timeout;
        ``steal`` (RunShard --steal) or [s3] steal turns stealing on."""
        require(cfg, "status_prefix", "output_prefix", "work_dir")
        if steal or cfg.steal:
            require(cfg, "shard_prefix")
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
            lease_seconds=cfg.claim_lease_seconds,
            claim_attempts=cfg.max_claim_attempts,
            steal=steal or cfg.steal,
            shard_prefix=cfg.shard_prefix,
            node=Node.here(cfg.node_name),
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
    # not worked on here: claimed by a live node, done meanwhile, or its claim was lost mid-way
    skipped: str = ""


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


def document_engine(settings: ShardSettings, uri: str, folder: Path, stop: threading.Event | None = None) -> Engine:
    """The engine one document runs through: the [s3] command (once per document, ended once ``stop``
    is set), or a built-in one."""
    if settings.engine == "command":
        return DocumentCommandEngine(settings.command, {
            "uri": uri,
            "workdir": str(folder),
            "output": output_uri(settings.output_prefix, uri),
            "shard": str(settings.shard),
        }, timeout=settings.timeout, stop=stop)
    return get_engine(settings.engine, settings.engine_settings)


def _run_engine(settings: ShardSettings, uri: str, pdf_path: Path, folder: Path, outdir: Path,
                stop: threading.Event | None) -> None:
    paths = document_engine(settings, uri, folder, stop).run([pdf_path], outdir)
    if settings.engine == "command":
        return  # a command's outputs are its own
    # A built-in engine's records name the document by its URI, and so do their file names: the
    # temp copy's path is this process's, and a redo after a kill must write the same objects.
    if not _set_source_file(paths, uri):
        raise DocumentFailed(f"the {settings.engine} engine wrote no record for it (unreadable PDF?)")
    stem = f"output_{hashlib.sha1(uri.encode('utf-8', 'surrogateescape')).hexdigest()}"
    for n, path in enumerate(sorted(paths)):
        path.rename(path.with_name(f"{stem}{f'_{n}' if n else ''}.jsonl"))


def run_document(
    storage: s3.Storage, settings: ShardSettings, uri: str, previous_attempts: int = 0, held: Held | None = None,
) -> Outcome:
    """Download, run, upload the outputs, then write .done (or .failed); the local copy is removed.

    The .done marker is written last, once (If-None-Match: *), so a run killed at any point redoes
    the document and never skips one whose outputs are not all uploaded. With ``held`` (the
    document's claim, renewed meanwhile) the claim is checked before every upload and renewed once
    more right before a marker; a lost claim ends the document without any marker.
    """
    started = time.monotonic()
    attempt = previous_attempts + 1
    name = hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    folder = s3.inside(shard_work_dir(settings), name)
    claims = Claims(storage, settings.status_prefix, settings.node, settings.lease_seconds)

    def check() -> None:
        if held is not None:
            held.check(settings.lease_seconds)

    def confirm() -> None:
        if held is not None:
            claims.renew(held)

    try:
        key = s3.split(uri)[1] if s3.is_s3(uri) else uri
        pdf_path = s3.inside(folder, "input", s3.local_name(key))
        outdir = s3.inside(folder, "output")
        outdir.mkdir(parents=True)
        storage.download(uri, pdf_path)
        _run_engine(settings, uri, pdf_path, folder, outdir, held.lost if held else None)
        base = output_uri(settings.output_prefix, uri)
        outputs = []
        for path in sorted(p for p in outdir.rglob("*") if p.is_file()):
            check()
            target = s3.join(base, *path.relative_to(outdir).parts)
            storage.upload(path, target)
            outputs.append(target)
        seconds = round(time.monotonic() - started, 3)
        confirm()
        # Earlier claims that ended without an outcome (their nodes died) stay on record.
        lost = {"lost_claims": held.body["history"]} if held is not None and held.body.get("history") else {}
        written = storage.create(marker_uri(settings.status_prefix, uri, "done"), marker_bytes(
            uri=uri, shard=settings.shard, node=settings.node.name, attempts=attempt, outputs=outputs,
            seconds=seconds, **lost))
        if not written:
            return Outcome(uri, True, attempts=attempt, seconds=seconds, skipped="done by another node")
        if previous_attempts:
            storage.delete(marker_uri(settings.status_prefix, uri, "failed"))
        return Outcome(uri, True, attempts=attempt, seconds=seconds, outputs=outputs)
    except ClaimLost as exc:
        return Outcome(uri, False, str(exc), attempt, round(time.monotonic() - started, 3), skipped="claim lost")
    except Exception as exc:  # one document's failure of any kind must not stop the shard
        if isinstance(exc, s3.S3Error) and exc.unavailable:
            raise  # S3 itself failed, not the document: no attempt is counted against it
        error = str(exc) or type(exc).__name__
        try:
            confirm()
        except ClaimLost as lost:
            return Outcome(uri, False, str(lost), attempt, round(time.monotonic() - started, 3), skipped="claim lost")
        storage.write_bytes(marker_uri(settings.status_prefix, uri, "failed"), marker_bytes(
            uri=uri, shard=settings.shard, node=settings.node.name, attempts=attempt, error=error))
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
    """This process's folder: several RunShard processes of one node may share a shard (claims)."""
    return s3.inside(settings.work_dir, f"shard_{settings.shard}", f"pid-{os.getpid()}")


def clear_work_dirs(settings: ShardSettings) -> None:
    """Remove what killed runs left in the shard's work folder (their documents are redone or done
    already): this process's folder and those of processes no longer running."""
    for folder in s3.inside(settings.work_dir, f"shard_{settings.shard}").glob("*"):
        pid = folder.name.removeprefix("pid-")
        if folder.is_dir() and not folder.is_symlink() and (not pid.isdigit() or not psutil.pid_exists(int(pid))
                                                             or int(pid) == os.getpid()):
            shutil.rmtree(folder, ignore_errors=True)


RESCAN_SECONDS = 60.0


class WorkQueue:
    """Hands this node's workers the next document to claim: the shard's own documents in order,
    then (stealing) those of the shard with the most pages left; waits while documents in scope are
    claimed by live nodes, and hands out those whose claims went stale. None: no work in scope."""

    def __init__(self, storage: s3.Storage, settings: ShardSettings, own: list[str],
                 shards: dict[int, list[str]], pages: dict[str, int]) -> None:
        self.storage, self.settings, self.own, self.shards, self.pages = storage, settings, own, shards, pages
        self.keys = {uri: doc_key(uri) for uris in [own, *shards.values()] for uri in uris}
        self.shard_by_uri = {uri: k for k, uris in shards.items() for uri in uris}
        self.claims = Claims(storage, settings.status_prefix, settings.node, settings.lease_seconds)
        self.local: set[str] = set()  # tried, running or given up here
        self.reclaimable: set[str] = set()  # claimed, but that claim is stale (or ended with its process)
        self.done: set[str] = set()
        self.claimed: set[str] = set()
        # How often claims held elsewhere are looked at again while there is nothing else to take.
        self.poll = max(0.2, min(settings.lease_seconds / 4, 2.0))
        self.scanned = -float("inf")
        self.cond = threading.Condition()

    def __contains__(self, uri: object) -> bool:
        """Whether ``uri`` is not to be claimed now (the stealing choice's ``taken``)."""
        if uri in self.local:
            return True
        key = self.keys.get(uri) if isinstance(uri, str) else None
        return key in self.done or (key in self.claimed and uri not in self.reclaimable)

    def shard_of(self, uri: str) -> int:
        return self.shard_by_uri.get(uri, self.settings.shard)

    def next(self) -> str | None:
        """The next document to claim; None once nothing in scope is left to take or to wait for.

        One listing of the markers at the start and then at most every RESCAN_SECONDS; in between a
        claim attempt (412, or a .done found) or a read of the claims waited for tells what changed.
        """
        with self.cond:
            if time.monotonic() - self.scanned >= RESCAN_SECONDS:
                first = self.scanned == -float("inf")
                listing = scan_status(self.storage, self.settings.status_prefix)
                self.done, self.claimed = listing.done, listing.claimed
                self.reclaimable.clear()
                self.scanned = time.monotonic()
                if first:  # a restarted node resumes its own shard where its killed processes were, in order
                    self._look_again([u for u in self.own
                                      if self.keys[u] in self.claimed and self.keys[u] not in self.done])
            while True:
                uri = next_document(self.own, self.shards, self.pages, self, self.settings.steal)
                if uri is not None:
                    self.local.add(uri)
                    return uri
                waiting = [u for uris in self.shards.values() for u in uris
                           if u not in self.local and self.keys[u] in self.claimed and self.keys[u] not in self.done]
                if not waiting:
                    return None
                self._look_again(waiting)
                if not self.reclaimable:
                    self.cond.wait(self.poll)

    def _look_again(self, uris: list[str]) -> None:
        """Read the claims of ``uris``: those released, stale or held by an ended process may be taken."""
        for uri in uris:
            found = self.claims.read(uri)  # None: released with its outcome, seen once claimed
            if found is None or found.stale() or self.settings.node.ended(found.body):
                self.reclaimable.add(uri)

    def claimed_elsewhere(self, uri: str) -> None:
        """``uri`` turned out to be held by a live claim: wait for it like any other."""
        with self.cond:
            self.local.discard(uri)
            self.reclaimable.discard(uri)
            self.claimed.add(self.keys.get(uri, doc_key(uri)))


def claim_and_run(storage: s3.Storage, settings: ShardSettings, uri: str, shard: int) -> Outcome:
    """Claim ``uri`` (or take over its stale claim), then run it unless it is done meanwhile or has
    used up its attempts; the claim is renewed while it runs and released after its marker."""
    claims = Claims(storage, settings.status_prefix, settings.node, settings.lease_seconds)
    held = claims.create(uri, shard)
    if held is None:
        found = claims.read(uri)
        if found is None:
            held = claims.create(uri, shard)  # released between the two requests: try once more
        elif found.stale() or settings.node.ended(found.body):
            held = claims.take_over(found, shard)
            if held is not None and len(held.body["history"]) >= settings.claim_attempts:
                return _give_up(storage, settings, claims, held)
        if held is None:
            return Outcome(uri, False, skipped="claimed by a live node")
    outcome: Outcome | None = None
    try:
        with LeaseKeeper(claims, held):  # from the claim's first moment: S3 may be slow to answer the checks
            if storage.exists(marker_uri(settings.status_prefix, uri, "done")):
                return Outcome(uri, True, skipped="done by another node")
            body = storage.read_optional(marker_uri(settings.status_prefix, uri, "failed"))
            previous = int(json.loads(body).get("attempts", 1)) if body else 0
            if previous >= settings.attempts:
                return Outcome(uri, False, "failed for good", previous, skipped="failed for good")
            outcome = run_document(storage, settings, uri, previous, held)
        return outcome
    finally:
        # A lease that ran out while the marker was being written still ends with the marker: the
        # claim is released then too (If-Match, so one taken over meanwhile stays its taker's). A
        # claim lost without a marker stays, so its taker records the lost attempt.
        if not held.lost.is_set() or (outcome is not None and outcome.skipped != "claim lost"):
            claims.release(held)


def _give_up(storage: s3.Storage, settings: ShardSettings, claims: Claims, held: Held) -> Outcome:
    """Mark a document whose claims all ended without an outcome .failed, with their history."""
    history = held.body["history"]
    error = (f"claimed {len(history)} times without an outcome (each node died or lost its lease while "
             f"working on it; it may be what stops them); last: {history[-1].get('outcome', '')}")
    storage.write_bytes(marker_uri(settings.status_prefix, held.uri, "failed"), marker_bytes(
        uri=held.uri, shard=settings.shard, node=settings.node.name, attempts=max(settings.attempts, len(history)),
        error=error, history=history))
    claims.release(held)
    return Outcome(held.uri, False, error, max(settings.attempts, len(history)))


def run_documents(
    storage: s3.Storage,
    settings: ShardSettings,
    queue: WorkQueue,
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """``settings.parallel`` workers claim and run documents from ``queue`` until it has none left.

    What killed runs left in the shard's work folder is cleared first. S3 being unavailable ends
    the run (its claims lapse and are taken over).
    """
    clear_work_dirs(settings)
    outcomes: list[Outcome] = []
    failure: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        while not failure:
            uri = queue.next()
            if uri is None:
                return
            try:
                outcome = claim_and_run(storage, settings, uri, queue.shard_of(uri))
            except BaseException as exc:  # S3 unavailable or a bug: every worker stops
                failure.append(exc)
                return
            if outcome.skipped in ("claimed by a live node", "claim lost"):
                queue.claimed_elsewhere(uri)  # another node has it now: wait for its outcome
            if outcome.skipped == "claimed by a live node":
                continue
            with lock:
                outcomes.append(outcome)
                on_done(outcome)

    threads = [threading.Thread(target=worker, name=f"document-{i}") for i in range(max(1, settings.parallel))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failure:
        raise failure[0]
    return outcomes


def run_shard(
    storage: s3.Storage,
    settings: ShardSettings,
    uris: list[str],
    progress: Progress = no_progress,
    warn: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run the shard's documents not yet done, then write the shard's .done marker; returns its body.

    Each document is claimed first, so any number of nodes may run the same shard. Stealing
    (``settings.steal``) goes on with the other shards' documents until none is left anywhere, and
    writes the marker of every shard found finished. Raises RuntimeError, naming what to rerun,
    while documents may still be retried (fewer than ``settings.attempts`` attempts) or when outputs
    uploaded by this run are not in storage.
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
    valid = [uri for uri in uris if not uri_problem(uri)]
    shards: dict[int, list[str]] = {shard: valid}
    pages: dict[str, int] = {}
    if settings.steal:
        shards, pages = read_shards(storage, settings.shard_prefix)
        shards = {k: [u for u in v if not uri_problem(u)] for k, v in shards.items()}
        shards[shard] = valid
    elif settings.shard_prefix:  # for the pages per hour ShardStatus shows
        try:
            pages = read_shards(storage, settings.shard_prefix)[1]
        except (s3.S3Error, OSError, ValueError, KeyError) as exc:
            warn(f"RunShard {shard}: no page counts ({exc}); ShardStatus will count this node's documents only")
    own = [uri for uri, _ in plan.todo]
    queue = WorkQueue(storage, settings, own, shards, pages)
    queue.local.update(plan.gave_up)
    stats = NodeStats(storage, settings, pages)
    counts = {"ok": 0, "failed": 0, "stolen": 0}
    mine = set(valid)

    def on_done(outcome: Outcome) -> None:
        if outcome.skipped:
            if outcome.skipped == "claim lost":
                warn(f"RunShard {shard}: {outcome.error}; its work here was stopped without markers")
            return
        counts["failed" if not outcome.ok else "ok" if outcome.uri in mine else "stolen"] += 1
        stats.add(outcome)
        if not outcome.ok:
            warn(f"RunShard {shard}: {outcome.uri} failed (attempt {outcome.attempts}): {outcome.error[:300]}")
        finished = len(plan.done) + counts["ok"]
        stolen = f", {counts['stolen']:,} taken from other shards" if settings.steal else ""
        progress(100 * finished / max(1, len(uris)),
                 f"shard {shard}: {finished:,}/{len(uris):,} done{stolen}, {counts['failed']:,} failed this run")

    try:
        outcomes = run_documents(storage, settings, queue, on_done)
    finally:
        stats.write(final=True)
    ran = {o.uri: o.outputs for o in outcomes if o.ok and not o.skipped}
    lost = drop_unconfirmed(storage, settings, list(ran), ran)
    if lost:
        uri, missing = next(iter(lost.items()))
        raise RuntimeError(
            f"shard {shard}: the uploaded outputs of {len(lost)} documents are not in storage "
            f"(first: {uri}: {missing[0]}); their .done markers were removed; rerun RunShard "
            f"--shard {shard} to run them again")
    done, failed = scan_markers(storage, settings.status_prefix)
    summaries = {k: shard_summary(storage, settings, k, v, done, failed) for k, v in shards.items()}
    unfinished = []  # (shard, what to say) of the shards in scope that cannot get their marker yet
    for k, summary in sorted(summaries.items(), key=lambda item: (item[0] != shard, item[0])):
        retry = summary.pop("retry")
        if retry:
            uri, error = retry[0]
            unfinished.append((k, f"{len(retry)} documents failed (first: {uri}: {error[:200]}); their .failed "
                                  f"markers are under {settings.status_prefix}; rerun RunShard --shard {k} to "
                                  f"retry them (at most {settings.attempts} attempts each)"))
        elif summary["remaining"]:
            unfinished.append((k, f"{summary['remaining']} documents have no outcome yet (their claims went to "
                                  f"other nodes that have not finished them); rerun RunShard --shard {k}"))
        else:
            del summary["remaining"]
            summary["rejected"] = plan.rejected if k == shard else []
            if k == shard:
                summary["documents"] = len(uris)
            storage.create(shard_marker_uri(settings.status_prefix, k),
                           (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    if unfinished:
        k, message = unfinished[0]
        more = f" ({len(unfinished) - 1} more shards unfinished)" if len(unfinished) > 1 else ""
        raise RuntimeError(f"shard {k}: {message}{more}")
    own_summary = {**summaries[shard]}
    own_summary.pop("remaining", None)
    progress(100, f"shard {shard}: finished, {len(own_summary['failed'])} documents failed for good", force=True)
    return own_summary


def shard_summary(
    storage: s3.Storage, settings: ShardSettings, shard: int, uris: list[str], done: set[str], failed: set[str]
) -> dict[str, Any]:
    """A shard's marker body from the listed markers: done, failed for good, and ``retry``
    [(uri, error)] of the failed documents with attempts left, ``remaining`` those with no outcome yet."""
    gave_up, retry, remaining = [], [], 0
    for uri in uris:
        key = doc_key(uri)
        if key in done:
            continue
        if key not in failed:
            remaining += 1
            continue
        body = json.loads(storage.read_optional(marker_uri(settings.status_prefix, uri, "failed")) or b"{}")
        if int(body.get("attempts", 1)) >= settings.attempts:
            gave_up.append(uri)
        else:
            retry.append((uri, str(body.get("error", ""))))
    return {"shard": shard, "documents": len(uris), "done": len(uris) - len(gave_up) - len(retry) - remaining,
            "failed": gave_up, "retry": retry, "remaining": remaining}


class NodeStats:
    """This run's counts (documents, pages, failed, seconds) in the name of one object under
    ``_nodes/`` of the status prefix (see markers.node_stats_uri), renamed after each document (at
    most every few seconds) for ShardStatus."""

    def __init__(self, storage: s3.Storage, settings: ShardSettings, pages: dict[str, int]) -> None:
        self.storage, self.settings, self.pages = storage, settings, pages
        self.started = time.monotonic()
        self.run = f"{int(time.time())}-{settings.node.pid}"
        self.counts: dict[str, Any] = {"documents": 0, "pages": 0, "failed": 0, "seconds": 0, "state": "running"}
        self.uri = ""
        self.written = -float("inf")

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.counts["documents"] += 1
            self.counts["pages"] += self.pages.get(outcome.uri, 0)
        else:
            self.counts["failed"] += 1
        if time.monotonic() - self.written >= 5:
            self.write()

    def write(self, final: bool = False) -> None:
        self.counts.update(seconds=round(time.monotonic() - self.started), state="finished" if final else "running")
        self.written = time.monotonic()
        uri = node_stats_uri(self.settings.status_prefix, self.settings.node.name, self.run, self.counts)
        with contextlib.suppress(s3.S3Error):  # counts for people: never a reason to stop the run
            self.storage.write_bytes(uri, marker_bytes(**self.counts, node=self.settings.node.name,
                                                       shard=self.settings.shard))
            if self.uri and self.uri != uri:
                self.storage.delete(self.uri)
            self.uri = uri
