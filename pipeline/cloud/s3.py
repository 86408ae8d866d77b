"""S3 access: one shared boto3 client per process, storage by URI, ranged reads and marker targets.

Every storage call takes an ``s3://bucket/key`` URI or a local path, so the same tasks run against
a bucket or a folder (local writes are atomic, S3 PUTs are atomic by nature).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import luigi

from pipeline import atomic, faults, pdf
from pipeline.layout import InvalidIdentifier, identifier_of

_CLIENTS: dict[tuple[int, S3Settings], Any] = {}
_CLIENTS_LOCK = threading.Lock()
# botocore's DEBUG output carries request headers (Authorization, X-Amz-Security-Token).
_WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3; credentials always come from boto3's standard chain, never from here."""

    endpoint_url: str = ""
    region: str = ""
    profile: str = ""
    max_pool_connections: int = 64
    retry_mode: str = "standard"
    max_attempts: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    @classmethod
    def from_config(cls, pool: int = 0) -> S3Settings:
        """[s3] of luigi.cfg, with a connection pool of at least ``pool`` (the caller's threads)."""
        from pipeline.config import S3Config

        cfg = S3Config()
        return cls(
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            profile=cfg.profile,
            max_pool_connections=max(cfg.max_pool_connections, pool),
            retry_mode=cfg.retry_mode,
            max_attempts=cfg.max_attempts,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
        )


def get_client(settings: S3Settings) -> Any:
    """The process's boto3 S3 client for these settings, built once and shared by all threads.

    boto3 clients are thread-safe but sessions are not, so creation is serialized; the pid in the
    key gives a forked worker its own client instead of sharing the parent's sockets.
    """
    key = (os.getpid(), settings)
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is None:
            import boto3
            from botocore.config import Config

            for name in _WIRE_LOGGERS:
                logger = logging.getLogger(name)
                if logger.getEffectiveLevel() < logging.INFO:
                    logger.setLevel(logging.INFO)
            config = Config(
                retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
                max_pool_connections=settings.max_pool_connections,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                # S3-compatible servers (MinIO, moto, Ceph) reliably serve path-style requests only.
                s3={"addressing_style": "path"} if settings.endpoint_url else None,
            )
            session = boto3.session.Session(profile_name=settings.profile or None)
            found = session.client(
                "s3",
                endpoint_url=settings.endpoint_url or None,
                region_name=settings.region or None,
                config=config,
            )
            _CLIENTS[key] = found
    return found


class S3Error(pdf.SourceReadError):
    """An S3 request that failed after botocore's retries, with what to check; ``code`` is S3's.

    ``unavailable``: the service or the network failed (5xx, throttling, connection, timeout), not
    the request: no object is to blame for it.
    """

    def __init__(self, message: str, code: str = "", unavailable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.unavailable = unavailable


def describe_error(exc: Exception, action: str, uri: str) -> S3Error:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    meta = response.get("ResponseMetadata", {})
    attempts = meta.get("RetryAttempts", 0) + 1 if meta else "all"
    what = f"{error.get('Code', '')} {error.get('Message', '')}".strip() or f"{type(exc).__name__}: {exc}"
    status = int(meta.get("HTTPStatusCode") or 0)
    return S3Error(
        f"{action} {uri} failed after {attempts} attempts: {what}; "
        "check the endpoint, the network and the credentials' permissions, then rerun",
        error_code(exc),
        unavailable=not response or status >= 500 or error_code(exc) in _UNAVAILABLE_CODES,
    )


# Throttling and server-side errors that S3 and compatible servers answer with a 4xx status.
_UNAVAILABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}


def error_code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """('bucket', 'key') of an s3:// URI."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; write s3://bucket/prefix/")
    return bucket, key


def folder(uri: str) -> str:
    """An s3:// prefix as a folder ('s3://b/raw' lists 's3://b/raw/...', not 's3://b/raw2/...');
    a local path made absolute."""
    if is_s3(uri):
        bucket, key = split(uri)
        return f"s3://{bucket}/{key}" if not key or key.endswith("/") else f"s3://{bucket}/{key}/"
    return os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for URIs and local paths alike (parts are S3 keys: '/'-separated)."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


@dataclass(frozen=True)
class Listed:
    """One object (or local file) found under a prefix."""

    uri: str
    name: str  # relative to the listed prefix
    size: int
    etag: str = ""


class Storage:
    """Reads, writes and lists s3:// URIs through the shared client, local paths atomically."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        # Built on first S3 use, so a purely local run never needs [s3] or credentials.
        if self._client is None:
            self._client = get_client(self.settings or S3Settings.from_config())
        return self._client

    def _call(self, action: str, uri: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise describe_error(exc, action, uri) from exc

    def exists(self, uri: str) -> bool:
        """One HEAD for an object."""
        if not is_s3(uri):
            return os.path.exists(uri)
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise describe_error(exc, "HEAD", uri) from exc
        except BotoCoreError as exc:  # no answer after botocore's retries: S3 is unavailable
            raise describe_error(exc, "HEAD", uri) from exc

    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            return Path(uri).read_bytes()
        from botocore.exceptions import BotoCoreError

        bucket, key = split(uri)
        attempts, attempt = self.client.meta.config.retries.get("total_max_attempts", 3), 1
        while True:
            body = self._call("GET", uri, "get_object", Bucket=bucket, Key=key)["Body"]
            try:
                with body:
                    return body.read()
            except BotoCoreError as exc:  # the answer broke off mid-body: botocore retries no such read
                if attempt >= attempts:
                    raise describe_error(exc, "GET", uri) from exc
                attempt += 1

    def read_optional(self, uri: str) -> bytes | None:
        """The bytes, or None when there is no such object."""
        try:
            return self.read_bytes(uri)
        except FileNotFoundError:
            return None
        except S3Error as exc:
            if error_code(exc.__cause__) in ("404", "NoSuchKey", "NotFound"):  # type: ignore[arg-type]
                return None
            raise

    def write_bytes(self, uri: str, data: bytes) -> None:
        if not is_s3(uri):
            atomic.write_bytes(Path(uri), data)
            return
        bucket, key = split(uri)
        faults.point("s3.put.before", uri)
        self._call("PUT", uri, "put_object", Bucket=bucket, Key=key, Body=data)
        faults.point("s3.put.after", uri)

    def create(self, uri: str, data: bytes) -> bool:
        """Write ``data`` only if nothing is at ``uri`` (S3: If-None-Match: *); False when something was.

        True also when a retried request meets its own first try (stored, its answer lost): the
        object then holds exactly ``data``.
        """
        if not is_s3(uri):
            path = Path(uri)
            atomic.makedirs(path.parent)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
                try:
                    os.link(temp.name, path)  # atomic, and fails when the name exists
                except FileExistsError:
                    return path.read_bytes() == data
            atomic.fsync_dir(path.parent)
            return True
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split(uri)
        faults.point("s3.put.before", uri)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise describe_error(exc, "PUT", uri) from exc
            return self.read_optional(uri) == data
        except BotoCoreError as exc:
            raise describe_error(exc, "PUT", uri) from exc
        faults.point("s3.put.after", uri)
        return True

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = split(uri)
        self._call("DELETE", uri, "delete_object", Bucket=bucket, Key=key)

    def upload(self, path: Path, uri: str) -> None:
        """Copy a local file to ``uri`` (multipart for large files, each part retried)."""
        if not is_s3(uri):
            atomic.copy_file(path, Path(uri))
            return
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split(uri)
        faults.point("s3.put.before", uri)
        try:
            self.client.upload_file(str(path), bucket, key)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise describe_error(exc, "upload to", uri) from exc
        faults.point("s3.put.after", uri)

    def download(self, uri: str, path: Path) -> None:
        """Copy ``uri`` to a local file (s3transfer writes a temp name and renames it)."""
        atomic.makedirs(path.parent)
        if not is_s3(uri):
            atomic.copy_file(Path(uri), path)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split(uri)
        try:
            self.client.download_file(bucket, key, str(path))
        except (ClientError, BotoCoreError) as exc:
            raise describe_error(exc, "download of", uri) from exc

    def list(self, prefix: str) -> Iterator[Listed]:
        """Objects under ``prefix`` in key order (one LIST request per 1,000 keys).

        Local folders are walked and sorted by relative path; symlinks are not followed.
        """
        if is_s3(prefix):
            yield from self._list_s3(prefix)
            return
        root = Path(prefix)
        if not root.is_dir():
            return
        found = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
            for name in files:
                path = Path(folder, name)
                if not path.is_symlink():
                    found.append((path.relative_to(root).as_posix(), path))
        for name, path in sorted(found):
            yield Listed(str(path.resolve()), name, path.stat().st_size)

    def _list_s3(self, prefix: str) -> Iterator[Listed]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key_prefix = split(prefix)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    yield Listed(f"s3://{bucket}/{key}", key[len(key_prefix):], item["Size"], item.get("ETag", ""))
        except (ClientError, BotoCoreError) as exc:
            raise describe_error(exc, "LIST", prefix) from exc

    def names(self, prefix: str) -> set[str]:
        """Names under ``prefix`` with one LIST per 1,000 keys: existence of many markers at once."""
        return {item.name for item in self.list(prefix)}


@dataclass(frozen=True)
class DownloadItem:
    """One object as the download stage takes it: the fields of ``stages.download.SourceItem``,
    which this module cannot import (the download stage imports it: no cycle)."""

    identifier: str
    uri: str
    fetch: Callable[[Path], None]  # writes the object's bytes to the given path


def iter_download_items(source: str, storage: Storage | None = None) -> Iterator[Any]:
    """The download stage's items for an s3:// prefix: a DownloadItem per .pdf object, or the
    layout.InvalidIdentifier of a key whose file name cannot be an identifier."""
    storage = storage or Storage()
    for item in storage.list(folder(source)):
        name = item.name.rsplit("/", 1)[-1]
        if not name.lower().endswith(".pdf"):
            continue
        try:
            yield DownloadItem(identifier_of(name), item.uri, partial(storage.download, item.uri))
        except InvalidIdentifier as exc:
            yield exc


class MarkerTarget(luigi.Target):
    """A Luigi target that is one object (or local file): its existence is one HEAD."""

    def __init__(self, uri: str, storage: Storage | None = None) -> None:
        self.uri = uri
        self.storage = storage or Storage()

    def exists(self) -> bool:
        return self.storage.exists(self.uri)

    def read(self) -> bytes:
        return self.storage.read_bytes(self.uri)

    def write(self, data: bytes) -> None:
        self.storage.write_bytes(self.uri, data)

    def __repr__(self) -> str:
        return f"MarkerTarget({self.uri!r})"


# --- ranged reads -------------------------------------------------------------------------------

class RangedSource:
    """A pdf.ByteSource over ranged GETs of one object that fetches each byte at most once.

    Reads are widened to ``block_size`` boundaries so neighbouring small reads (trailer, xref
    entries, catalog) share one request, and every fetched block is kept. Once the misses would
    exceed ``budget`` bytes the reader is doing a full parse (a damaged file): the blocks not yet
    fetched are then fetched, one GET per gap between those already here, into a temp file that
    serves every later read. ``bytes_fetched`` and ``requests`` count what went over the wire.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        size: int,
        *,
        etag: str = "",
        block_size: int = 4096,
        budget: int | None = None,
    ) -> None:
        self.client, self.bucket, self.key, self.size = client, bucket, key, size
        self.etag = etag
        self.block_size = block_size
        # Blocks stay in memory up to the budget, so it bounds memory as well as wasted requests.
        self.budget = budget if budget is not None else max(4 * block_size, min(1 << 20, size // 4))
        self.bytes_fetched = 0
        self.requests = 0
        self._blocks: dict[int, bytes] = {}
        self._whole: BinaryIO | None = None

    def _get(self, **extra: Any) -> Any:
        # If-Match: an object replaced between LIST and GET fails instead of mixing two versions.
        if self.etag:
            extra["IfMatch"] = self.etag
        from botocore.exceptions import BotoCoreError, ClientError

        self.requests += 1
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key, **extra)["Body"]
        except (ClientError, BotoCoreError) as exc:  # raised as the page counter's read error
            raise describe_error(exc, "GET", f"s3://{self.bucket}/{self.key}") from exc

    def _fetch_range(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes start..end-1 in pieces of at most 1 MiB."""
        with self._get(Range=f"bytes={start}-{end - 1}") as body:
            for piece in iter(lambda: body.read(1 << 20), b""):
                self.bytes_fetched += len(piece)
                yield piece

    def _fetch_rest(self) -> BinaryIO:
        """A temp file with the whole object: the blocks held, and one GET for each gap between them."""
        spool = tempfile.TemporaryFile()
        position = 0
        for start, end in self._gaps():
            for block in range(position // self.block_size, start // self.block_size):
                spool.write(self._blocks[block])
            spool.seek(start)
            for piece in self._fetch_range(start, end):
                spool.write(piece)
            position = end
        for block in range(position // self.block_size, -(-self.size // self.block_size)):
            spool.write(self._blocks[block])
        spool.flush()
        if os.fstat(spool.fileno()).st_size != self.size:
            raise S3Error(f"GET s3://{self.bucket}/{self.key} returned a different size than listed; rerun")
        self._blocks.clear()
        return spool

    def _gaps(self) -> list[tuple[int, int]]:
        """Byte ranges of the blocks not fetched yet, adjacent blocks merged."""
        gaps: list[tuple[int, int]] = []
        for block in range(-(-self.size // self.block_size)):
            if block in self._blocks:
                continue
            start, end = block * self.block_size, min(self.size, (block + 1) * self.block_size)
            if gaps and gaps[-1][1] == start:
                gaps[-1] = (gaps[-1][0], end)
            else:
                gaps.append((start, end))
        return gaps

    def read_at(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + max(0, length))
        if offset >= end:
            return b""
        if self._whole is None:
            first, last = offset // self.block_size, (end - 1) // self.block_size
            missing = [b for b in range(first, last + 1) if b not in self._blocks]
            if self.bytes_fetched + len(missing) * self.block_size > self.budget:
                self._whole = self._fetch_rest()
            else:
                self._fill(missing)
                data = b"".join(self._blocks[b] for b in range(first, last + 1))
                skip = offset - first * self.block_size
                return data[skip:skip + end - offset]
        return os.pread(self._whole.fileno(), end - offset, offset)

    def _fill(self, missing: list[int]) -> None:
        """Fetch each run of consecutive missing blocks with one ranged GET."""
        runs: list[list[int]] = []
        for block in missing:
            if runs and runs[-1][-1] == block - 1:
                runs[-1].append(block)
            else:
                runs.append([block])
        for run in runs:
            start = run[0] * self.block_size
            data = b"".join(self._fetch_range(start, min(self.size, (run[-1] + 1) * self.block_size)))
            for i, block in enumerate(run):
                self._blocks[block] = data[i * self.block_size:(i + 1) * self.block_size]

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
            self._whole = None


# --- keys as local names --------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def local_name(key: str, suffix: str = ".pdf") -> str:
    """A safe single file name for an object key: its last component in plain ASCII.

    Spaces, unicode, '..', a leading '/' or '.' and separators never reach the file system; when
    anything had to change, a hash of the whole key keeps distinct keys distinct.
    """
    base = key.rsplit("/", 1)[-1]
    stem = base[: -len(suffix)] if suffix and base.lower().endswith(suffix) else base
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    clean = _UNSAFE.sub("_", ascii_stem).strip("._-")[:80] or "document"
    if clean != stem:
        clean += "-" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return clean + suffix


def inside(root: Path, *parts: str) -> Path:
    """``root/parts`` after checking it stays inside ``root``; raises ValueError otherwise."""
    base = Path(os.path.abspath(root))
    path = Path(os.path.abspath(base.joinpath(*parts)))
    if path != base and base not in path.parents:
        raise ValueError(f"{'/'.join(parts)!r} would be written outside {base}; refusing")
    return path
