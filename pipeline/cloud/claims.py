"""Claims on documents of a cloud shard run: ``<status>/<bucket>/<key>.claim`` beside the markers.

A node works on a document only while it holds that document's claim. Every change is one
conditional write, so two nodes can never both believe they hold it:

- create: ``If-None-Match: *`` (the second creator gets 412 PreconditionFailed);
- renew, take over, release: ``If-Match`` on the ETag last seen (a node whose claim was taken over
  learns it at its next renewal, and stops that document without writing markers);
- a claim whose holder did not renew it within its lease (the node died or stalled) is *stale*
  and may be taken over; the taker records the lost attempt in the claim's history.

A claim is stale by the S3 server's own clock (the age between the object's Last-Modified and the
answer's Date), so node clocks do not matter. A write retried after a dropped answer may find its
own first try in place; each body carries a random token, so the writer reads it back and knows.
On a local status folder the same rules hold under an exclusive lock of the folder's lock file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.cloud import s3
from pipeline.cloud.markers import marker_uri
from pipeline.events import now_iso

# A server stamps Last-Modified and Date to the second: a claim is stale only this much past its lease.
CLOCK_MARGIN_SECONDS = 2.0
_CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


@dataclass(frozen=True)
class Node:
    """Who holds a claim: the node's name ([s3] node_name, else the host name) and this process."""

    name: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    pid_namespace: str = field(default_factory=_pid_namespace)

    @classmethod
    def here(cls, name: str = "") -> Node:
        return cls(name or socket.gethostname())

    def fields(self) -> dict[str, Any]:
        return {"node": self.name, "host": self.host, "pid": self.pid, "pid_namespace": self.pid_namespace}

    def ended(self, body: dict[str, Any]) -> bool:
        """True when ``body`` is a claim of this node by a process of this host that no longer runs
        (a killed run of this node): it needs no lease to expire before this node takes it back."""
        if (body.get("node"), body.get("host"), body.get("pid_namespace")) != (
                self.name, self.host, self.pid_namespace) or body.get("pid") == self.pid:
            return False
        try:
            os.kill(int(body["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return False


@dataclass
class Found:
    """A claim as read: its body, ETag and age in seconds by the server's clock."""

    uri: str
    etag: str
    body: dict[str, Any]
    age: float

    @property
    def lease(self) -> float:
        try:
            return float(self.body.get("lease_seconds", 0))
        except (TypeError, ValueError):
            return 0.0

    def stale(self) -> bool:
        return self.age > self.lease + CLOCK_MARGIN_SECONDS

    @property
    def lost_attempts(self) -> list[dict[str, Any]]:
        history = self.body.get("history")
        return history if isinstance(history, list) else []


@dataclass
class Held:
    """A claim this process holds; ``lost`` is set once it may no longer work on the document."""

    uri: str
    claim_uri: str
    etag: str
    body: dict[str, Any]
    renewed: float  # time.monotonic() when the last successful write was sent
    lost: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)  # the keeper's and the worker's renewals

    @property
    def attempt(self) -> int:
        return int(self.body.get("attempt", 1))

    def check(self, lease_seconds: float) -> None:
        """Raise ClaimLost unless the claim is still ours and within its lease."""
        if not self.lost.is_set() and time.monotonic() - self.renewed >= lease_seconds:
            self.reason = f"claim of {self.uri} lost: not renewed within its lease of {lease_seconds:.0f} s"
            self.lost.set()
        if self.lost.is_set():
            raise ClaimLost(self.reason)


class ClaimLost(Exception):
    """The claim was taken over or not renewed within its lease: the document's work must stop."""


class Claims:
    """Create, renew, take over and release claims under ``status_prefix`` for ``node``."""

    def __init__(self, storage: s3.Storage, status_prefix: str, node: Node, lease_seconds: float) -> None:
        if lease_seconds <= 0:
            raise ValueError("[s3] claim_lease_seconds must be positive")
        self.storage, self.status_prefix, self.node = storage, status_prefix, node
        self.lease_seconds = float(lease_seconds)

    def claim_uri(self, uri: str) -> str:
        return marker_uri(self.status_prefix, uri, "claim")

    def _body(self, uri: str, shard: int, attempt: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        now = now_iso()
        return {"uri": uri, "shard": shard, **self.node.fields(), "token": uuid.uuid4().hex,
                "claimed": now, "renewed": now, "renewals": 0, "lease_seconds": self.lease_seconds,
                "attempt": attempt, "history": history}

    def create(self, uri: str, shard: int, attempt: int = 1) -> Held | None:
        """The new claim, or None when the document is already claimed."""
        body = self._body(uri, shard, attempt, [])
        return self._write(uri, body, if_none_match=True)

    def take_over(self, found: Found, shard: int) -> Held | None:
        """Replace a stale claim, or one whose process ended (If-Match on its ETag), its holder's
        attempt added to the history; None when someone changed it first."""
        previous = found.body
        lost = {k: previous.get(k) for k in ("node", "host", "pid", "claimed", "renewed", "attempt")}
        lost["outcome"] = (f"lease of {found.lease:.0f} s expired (claim {found.age:.0f} s old)" if found.stale()
                           else "its process ended without an outcome")
        body = self._body(found.uri, shard, int(previous.get("attempt", 1)) + 1, [*found.lost_attempts, lost])
        return self._write(found.uri, body, if_match=found.etag)

    def renew(self, held: Held) -> None:
        """Rewrite the claim with If-Match on its ETag; raises ClaimLost when it was taken over or the
        lease ran out before this renewal could be sent (s3.S3Error when S3 is unavailable)."""
        with held.lock:
            held.check(self.lease_seconds)
            sent = time.monotonic()
            body = {**held.body, "renewed": now_iso(), "renewals": int(held.body.get("renewals", 0)) + 1}
            written = self._write(held.uri, body, if_match=held.etag, sent=sent)
            if written is None:
                held.reason = f"claim of {held.uri} lost: taken over by another node"
                held.lost.set()
                raise ClaimLost(held.reason)
            held.etag, held.body, held.renewed = written.etag, written.body, written.renewed

    def release(self, held: Held) -> None:
        """Delete the claim if it is still ours (its outcome is in a marker, or it was given up)."""
        if s3.is_s3(held.claim_uri):
            from botocore.exceptions import BotoCoreError, ClientError

            bucket, key = s3.split(held.claim_uri)
            try:
                self.storage.client.delete_object(Bucket=bucket, Key=key, IfMatch=held.etag)
            except ClientError as exc:
                if s3.error_code(exc) not in (*_CONFLICT_CODES, "NoSuchKey", "404"):
                    raise s3.describe_error(exc, "DELETE", held.claim_uri) from exc
            except BotoCoreError as exc:
                raise s3.describe_error(exc, "DELETE", held.claim_uri) from exc
            return
        with self._local_lock():
            if _local_etag(Path(held.claim_uri)) == held.etag:
                Path(held.claim_uri).unlink()

    def read(self, uri: str) -> Found | None:
        """The document's claim, or None when it has none."""
        claim_uri = self.claim_uri(uri)
        if not s3.is_s3(claim_uri):
            path = Path(claim_uri)
            with self._local_lock():
                try:
                    data, modified = path.read_bytes(), path.stat().st_mtime
                except FileNotFoundError:
                    return None
            return Found(uri, _local_etag(path, data), _parse(data), max(0.0, time.time() - modified))
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = s3.split(claim_uri)
        try:
            answer = self.storage.client.get_object(Bucket=bucket, Key=key)
            with answer["Body"] as stream:
                data = stream.read()
        except ClientError as exc:
            if s3.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise s3.describe_error(exc, "GET", claim_uri) from exc
        except BotoCoreError as exc:
            raise s3.describe_error(exc, "GET", claim_uri) from exc
        date = answer["ResponseMetadata"]["HTTPHeaders"].get("date")
        server_now = parsedate_to_datetime(date).timestamp() if date else time.time()
        age = max(0.0, server_now - answer["LastModified"].timestamp())
        return Found(uri, answer["ETag"], _parse(data), age)

    def _write(self, uri: str, body: dict[str, Any], *, if_none_match: bool = False, if_match: str = "",
               sent: float | None = None) -> Held | None:
        """One conditional write of ``body``; the new Held, or None when the condition failed.

        A retried request may meet its own first try (stored, but the answer was lost): the claim
        is read back and its token tells.
        """
        claim_uri = self.claim_uri(uri)
        data = (json.dumps(body, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        if not s3.is_s3(claim_uri):
            return self._write_local(uri, claim_uri, body, data, if_none_match, if_match,
                                     time.monotonic() if sent is None else sent)
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.storage.client  # built at its first use, before the lease's clock starts
        sent = time.monotonic() if sent is None else sent
        bucket, key = s3.split(claim_uri)
        condition = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match}
        try:
            answer = client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except BotoCoreError as exc:  # no answer after botocore's retries: S3 is unavailable
            raise s3.describe_error(exc, "PUT", claim_uri) from exc
        except ClientError as exc:
            if s3.error_code(exc) not in (*_CONFLICT_CODES, "NoSuchKey", "404"):
                raise s3.describe_error(exc, "PUT", claim_uri) from exc
            found = self.read(uri)
            if found is None or found.body.get("token") != body["token"] or \
                    found.body.get("renewals") != body["renewals"]:
                return None
            return Held(uri, claim_uri, found.etag, body, sent)
        return Held(uri, claim_uri, answer["ETag"], body, sent)

    def _write_local(self, uri: str, claim_uri: str, body: dict[str, Any], data: bytes, if_none_match: bool,
                     if_match: str, sent: float) -> Held | None:
        path = Path(claim_uri)
        with self._local_lock():
            current = _local_etag(path) if path.exists() else None
            if (if_none_match and current is not None) or (not if_none_match and current != if_match):
                return None
            atomic.write_bytes(path, data)
        return Held(uri, claim_uri, _local_etag(path, data), body, sent)

    @contextlib.contextmanager
    def _local_lock(self) -> Iterator[None]:
        lock = Path(self.status_prefix, ".claims.lock")
        atomic.makedirs(lock.parent)
        with open(lock, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _local_etag(path: Path, data: bytes | None = None) -> str:
    import hashlib

    try:
        return hashlib.md5(path.read_bytes() if data is None else data).hexdigest()
    except FileNotFoundError:
        return ""


def _parse(data: bytes) -> dict[str, Any]:
    """A claim's body; a torn or foreign one reads as an empty claim (stale after the default lease)."""
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class LeaseKeeper:
    """Renews a held claim every lease / 3 in a thread while its document is processed.

    A renewal that S3 does not answer is tried again every second; once the lease ran out without
    one, or the claim was taken over, ``held.lost`` is set (and ``on_lost`` called, e.g. to end the
    document's command), so the document's work stops and no marker is written for it.
    """

    def __init__(self, claims: Claims, held: Held, on_lost: Any = None) -> None:
        self.claims, self.held, self.on_lost = claims, held, on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{os.path.basename(held.uri)[:20]}",
                                        daemon=True)

    def __enter__(self) -> Held:
        self._thread.start()
        return self.held

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = self.claims.lease_seconds / 3
        wait = interval
        while not self._stop.wait(wait):
            try:
                self.claims.renew(self.held)
                wait = interval
            except ClaimLost:
                if self.on_lost is not None:
                    self.on_lost()
                return
            except s3.S3Error:
                wait = min(1.0, interval)  # S3 unavailable: try again soon, within the lease

    def confirm(self) -> None:
        """Renew now (raises ClaimLost): called right before the .done marker is written."""
        self.claims.renew(self.held)
