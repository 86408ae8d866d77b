"""PDF validation and page counting, for local files and for ranged reads of remote objects.

The fast path reads only what it needs to reach ``/Root/Pages/Count``: the file's tail (startxref),
the cross-reference entries of the objects it follows (a fixed-width entry is read directly, an xref
stream is decompressed) and those objects. It never walks the page tree. When that fails or the
number looks wrong it falls back to a full parse with pypdf, then to poppler's ``pdfinfo``.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

TAIL_BYTES = 2048
HEAD_BYTES = 1024
# An uncompressed page object takes well over this many bytes, so a larger count is not believed
# in a file without object streams (where pages can compress to a few bytes each).
MIN_BYTES_PER_PAGE = 20


class ByteSource(Protocol):
    """Random access to a file's bytes (a local file, or ranged GETs of an object)."""

    size: int

    def read_at(self, offset: int, length: int) -> bytes: ...


class FileSource:
    """A local file read with pread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.bytes_read = 0

    def read_at(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, max(0, min(length, self.size - offset)), offset)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SourceFile(io.RawIOBase):
    """A seekable read-only file object over a ByteSource, for pypdf's full parse."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        data = self.source.read_at(self.pos, len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class SourceReadError(OSError):
    """Reading the bytes failed (storage, network): not a property of the file, never swallowed."""


class PdfError(Exception):
    """A file that cannot be processed; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _FastPathFailed(Exception):
    pass


# --- a small PDF object parser, enough for trailers, catalogs and xref streams -------------------

@dataclass(frozen=True)
class Ref:
    num: int
    gen: int


_WS = b" \t\r\n\x0c\x00"
_DELIM = b"()<>[]{}/%"
_TOKEN = re.compile(rb"[^\s()<>\[\]{}/%]+")
_REF_ARRAY = re.compile(rb"\[(?:\s*\d+\s+\d+\s+R)+\s*(\]?)")
_PARTIAL_REF = re.compile(rb"[\s\d]*")  # what is left when the read stops inside a reference array


class _Parser:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def skip(self) -> None:
        data, n = self.data, len(self.data)
        while self.pos < n:
            c = data[self.pos]
            if c in _WS:
                self.pos += 1
            elif c == 0x25:  # % comment
                end = data.find(b"\n", self.pos)
                self.pos = n if end < 0 else end + 1
            else:
                return

    def value(self) -> Any:
        self.skip()
        if self.pos >= len(self.data):
            raise _FastPathFailed("object cut short")
        data, c = self.data, self.data[self.pos]
        if data.startswith(b"<<", self.pos):
            self.pos += 2
            result: dict[str, Any] = {}
            while True:
                self.skip()
                if data.startswith(b">>", self.pos):
                    self.pos += 2
                    return result
                key = self.value()
                if not isinstance(key, Name):
                    raise _FastPathFailed("dictionary key is not a name")
                result[key] = self.value()
        if c == 0x5B:  # [
            refs = _REF_ARRAY.match(data, self.pos)
            if refs:  # /Kids of a large page tree: skipped in one step, never needed here
                if refs.group(1):
                    self.pos = refs.end()
                    return RefArray()
                if _PARTIAL_REF.fullmatch(data, refs.end()):
                    raise _FastPathFailed("array cut short")
                # References followed by other items: parsed one by one below.
            self.pos += 1
            items: list[Any] = []
            while True:
                self.skip()
                if data.startswith(b"]", self.pos):
                    self.pos += 1
                    return items
                items.append(self.value())
        if c == 0x2F:  # /Name
            match = _TOKEN.match(data, self.pos + 1)
            self.pos = match.end() if match else self.pos + 1
            return Name(match.group().decode("latin-1") if match else "")
        if c == 0x28:  # (literal string), nested parentheses and escapes
            depth, i = 0, self.pos
            while i < len(data):
                ch = data[i]
                if ch == 0x5C:
                    i += 2
                    continue
                depth += (ch == 0x28) - (ch == 0x29)
                i += 1
                if depth == 0:
                    break
            self.pos = i
            return b""
        if c == 0x3C:  # <hex string>
            end = data.find(b">", self.pos)
            if end < 0:
                raise _FastPathFailed("hex string cut short")
            self.pos = end + 1
            return b""
        match = _TOKEN.match(data, self.pos)
        if not match:
            raise _FastPathFailed(f"unexpected byte {data[self.pos:self.pos + 1]!r}")
        token = match.group()
        self.pos = match.end()
        if re.fullmatch(rb"[+-]?\d+", token):
            # "N G R" is an indirect reference.
            save = self.pos
            second = re.compile(rb"\s+(\d+)\s+R(?![^\s()<>\[\]{}/%])").match(data, self.pos)
            if second:
                self.pos = second.end()
                return Ref(int(token), int(second.group(1)))
            self.pos = save
            return int(token)
        if re.fullmatch(rb"[+-]?\d*\.\d*", token):
            return float(token)
        return {b"true": True, b"false": False, b"null": None}.get(token, Keyword(token))


class Name(str):
    pass


class Keyword(bytes):
    pass


class RefArray(list):
    """An array of references whose items were skipped."""


# --- the fast path ----------------------------------------------------------------------------

class _Resolver:
    """Finds objects through the cross-reference sections, newest first, reading only what it needs."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.trailer: dict[str, Any] = {}
        self.sections: list[tuple[str, Any]] = []  # ("table", [(start, count, pos)]) or ("stream", _XRefRows)
        self.has_xref_stream = False
        self._objstm: dict[int, tuple[bytes, dict[int, int]]] = {}
        tail_start = max(0, src.size - TAIL_BYTES)
        tail = src.read_at(tail_start, src.size - tail_start)
        where = tail.rfind(b"startxref")
        if where < 0:
            raise _FastPathFailed("no startxref")
        match = re.compile(rb"startxref\s+(\d+)").match(tail, where)
        if not match:
            raise _FastPathFailed("startxref without offset")
        offset: int | None = int(match.group(1))
        seen: set[int] = set()
        while offset is not None and offset not in seen and len(seen) < 64:
            seen.add(offset)
            offset = self._load_section(offset)

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.src.size:
            raise _FastPathFailed(f"offset {offset} outside the file")
        return self.src.read_at(offset, length)

    def _load_section(self, offset: int) -> int | None:
        head = self._read(offset, 64)
        if head.startswith(b"xref"):
            return self._load_table(offset)
        number, obj, end = self._object_at(offset)
        if not isinstance(obj, _Stream) or obj.dict.get("Type") != "XRef":
            raise _FastPathFailed("startxref points at neither a table nor an xref stream")
        self._load_xref_stream(obj)
        return obj.dict.get("Prev")

    def _load_table(self, offset: int) -> int | None:
        subsections = []
        pos = offset + 4
        header = re.compile(rb"\s*(\d+)\s+(\d+)[ \t]*\r?\n?")
        while True:
            chunk = self._read(pos, 64)
            if chunk.lstrip().startswith(b"trailer"):
                pos += chunk.index(b"trailer") + len(b"trailer")
                break
            match = header.match(chunk)
            if not match:
                raise _FastPathFailed("bad xref subsection header")
            start, count = int(match.group(1)), int(match.group(2))
            pos += match.end()
            subsections.append((start, count, pos))
            pos += 20 * count
        trailer = self._dict_at(pos)
        self.sections.append(("table", subsections))
        self._merge_trailer(trailer)
        if "XRefStm" in trailer:
            # A hybrid file: objects the table lists as free live in this stream; it comes right
            # after the table in the search order and its own /Prev is ignored.
            _, stream, _ = self._object_at(trailer["XRefStm"])
            if not isinstance(stream, _Stream) or stream.dict.get("Type") != "XRef":
                raise _FastPathFailed("/XRefStm points at no xref stream")
            self._load_xref_stream(stream, merge_trailer=False)
        return trailer.get("Prev")

    def _merge_trailer(self, trailer: dict[str, Any]) -> None:
        for key, value in trailer.items():
            self.trailer.setdefault(key, value)

    def _dict_at(self, pos: int, length: int = 1024) -> dict[str, Any]:
        while True:
            data = self._read(pos, length)
            try:
                value = _Parser(data).value()
            except _FastPathFailed:
                if len(data) < length or length >= 1 << 20:
                    raise
                length *= 4
                continue
            if not isinstance(value, dict):
                raise _FastPathFailed("expected a dictionary")
            return value

    def _load_xref_stream(self, stream: "_Stream", merge_trailer: bool = True) -> None:
        widths = stream.dict.get("W")
        if not (isinstance(widths, list) and len(widths) == 3 and all(isinstance(w, int) for w in widths)):
            raise _FastPathFailed("bad /W in xref stream")
        index = stream.dict.get("Index") or [0, stream.dict.get("Size", 0)]
        subsections, first_row = [], 0
        for start, count in zip(index[::2], index[1::2]):
            subsections.append((start, count, first_row))
            first_row += count
        data = self._inflate(stream)
        predictor, row_bytes, bpp = self._predictor(stream)
        up_only = False
        if predictor >= 10:
            if row_bytes != sum(widths):
                raise _FastPathFailed("xref stream /Columns do not match /W")
            rows = len(data) // (row_bytes + 1)
            types = data[:rows * (row_bytes + 1):row_bytes + 1]
            # Rows filtered with PNG "Up" only (what writers use) are summed on demand: decoding
            # every row in Python would cost more than the rest of the fast path together.
            up_only = types[:1] in (b"\x00", b"\x02") and types[1:].count(2) == rows - 1
            if not up_only:
                data = _png_unpredict(data, row_bytes, bpp)
        self.sections.append(("stream", _XRefRows(data, widths, subsections, up_only)))
        self.has_xref_stream = True
        if merge_trailer:
            self._merge_trailer(stream.dict)

    @staticmethod
    def _inflate(stream: "_Stream") -> bytes:
        filters = stream.dict.get("Filter")
        filters = [filters] if isinstance(filters, str) else (filters or [])
        if any(f != "FlateDecode" for f in filters):
            raise _FastPathFailed(f"unsupported filter {filters}")
        data = stream.raw
        for _ in filters:
            # Like other readers, accept trailing bytes after the end of the compressed data.
            data = zlib.decompressobj().decompress(data)
        return data

    @staticmethod
    def _predictor(stream: "_Stream") -> tuple[int, int, int]:
        """(predictor, bytes per row, bytes per pixel) from /DecodeParms."""
        parms = stream.dict.get("DecodeParms") or {}
        if isinstance(parms, list):
            parms = parms[0] or {}
        predictor = parms.get("Predictor", 1)
        if predictor not in (1, 10, 11, 12, 13, 14, 15):
            raise _FastPathFailed(f"unsupported predictor {predictor}")
        bits = parms.get("Colors", 1) * parms.get("BitsPerComponent", 8)
        return predictor, (parms.get("Columns", 1) * bits + 7) // 8, max(1, bits // 8)

    def _decode(self, stream: "_Stream") -> bytes:
        data = self._inflate(stream)
        predictor, row_bytes, bpp = self._predictor(stream)
        return _png_unpredict(data, row_bytes, bpp) if predictor >= 10 else data

    def _entry(self, num: int) -> tuple[int, int, int] | None:
        for kind, section in self.sections:
            if kind == "stream":
                found = section.entry(num)
                if found is not None:
                    return found
                continue
            for start, count, pos in section:
                if start <= num < start + count:
                    raw = self._read(pos + 20 * (num - start), 20)
                    match = re.match(rb"(\d{10}) (\d{5}) ([nf])", raw)
                    if not match:
                        raise _FastPathFailed("malformed xref entry")
                    if match.group(3) == b"f":
                        break
                    return (1, int(match.group(1)), int(match.group(2)))
        return None

    def _object_at(self, offset: int, length: int = 2048) -> tuple[int, Any, int]:
        while True:
            data = self._read(offset, length)
            match = re.compile(rb"\s*(\d+)\s+(\d+)\s+obj").match(data)
            if not match:
                raise _FastPathFailed(f"no object at offset {offset}")
            parser = _Parser(data, match.end())
            try:
                value = parser.value()
            except _FastPathFailed:
                if len(data) < length or length >= 1 << 22:
                    raise
                length *= 4
                continue
            parser.skip()
            if isinstance(value, dict) and len(data) == length and len(data) - parser.pos < 8:
                length *= 4  # the "stream" keyword may lie just past what was read
                continue
            if isinstance(value, dict) and data.startswith(b"stream", parser.pos):
                start = parser.pos + len(b"stream")
                start += 2 if data.startswith(b"\r\n", start) else 1
                length_value = self.resolve(value.get("Length"))
                if not isinstance(length_value, int):
                    raise _FastPathFailed("stream without a length")
                raw = self._read(offset + start, length_value)
                return int(match.group(1)), _Stream(value, raw), offset + start + length_value
            return int(match.group(1)), value, offset + parser.pos

    def resolve(self, value: Any, depth: int = 0) -> Any:
        while isinstance(value, Ref):
            if depth > 16:
                raise _FastPathFailed("reference loop")
            depth += 1
            entry_num = value.num
            entry = self._entry(entry_num)
            if entry is None:
                return None
            kind, a, b = entry
            if kind == 1:
                number, value, _ = self._object_at(a)
                if number != entry_num:
                    raise _FastPathFailed("xref offset points at another object")
            elif kind == 2:
                value = self._from_object_stream(a, b)
            else:
                return None
        return value

    def _from_object_stream(self, stream_num: int, index: int) -> Any:
        if stream_num not in self._objstm:
            stream = self.resolve(Ref(stream_num, 0))
            if not isinstance(stream, _Stream):
                raise _FastPathFailed("object stream missing")
            data = self._decode(stream)
            first, count = stream.dict.get("First", 0), stream.dict.get("N", 0)
            pairs = re.findall(rb"(\d+)\s+(\d+)", data[:first])[:count]
            offsets = {i: first + int(offset) for i, (_, offset) in enumerate(pairs)}
            self._objstm[stream_num] = (data, offsets)
        data, offsets = self._objstm[stream_num]
        if index not in offsets:
            raise _FastPathFailed("index outside object stream")
        return _Parser(data, offsets[index]).value()


@dataclass
class _Stream:
    dict: dict[str, Any]
    raw: bytes


@dataclass
class _XRefRows:
    """The entries of one xref stream, decoded one row at a time when asked for."""

    data: bytes
    widths: list[int]
    subsections: list[tuple[int, int, int]]  # (first object number, count, first row)
    up_only: bool  # rows still carry their PNG "Up" filter byte

    def entry(self, num: int) -> tuple[int, int, int] | None:
        for start, count, first_row in self.subsections:
            if start <= num < start + count:
                return self._row(first_row + num - start)
        return None

    def _row(self, i: int) -> tuple[int, int, int] | None:
        width = sum(self.widths)
        if self.up_only:
            # "Up" adds the row above, so row i is the column sums of rows 0..i, modulo 256.
            stride = width + 1
            if (i + 1) * stride > len(self.data):
                return None
            row = bytes(sum(self.data[1 + j:i * stride + 2 + j:stride]) & 0xFF for j in range(width))
        else:
            row = self.data[i * width:(i + 1) * width]
            if len(row) < width:
                return None
        fields, cursor = [], 0
        for w in self.widths:
            fields.append(int.from_bytes(row[cursor:cursor + w], "big") if w else None)
            cursor += w
        kind = 1 if fields[0] is None else fields[0]  # a zero-width type field means "in use"
        return kind, fields[1] or 0, fields[2] or 0


def _png_unpredict(data: bytes, row_bytes: int, bpp: int = 1) -> bytes:
    """Undo PNG row filters (predictors 10-15): each row starts with its filter type."""
    row = row_bytes + 1
    out = bytearray()
    prev = bytearray(row_bytes)
    for start in range(0, len(data) - row_bytes, row):
        kind, line = data[start], bytearray(data[start + 1:start + row])
        if kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 1:
            for i in range(bpp, len(line)):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 3:
            for i in range(len(line)):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(len(line)):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif kind != 0:
            raise _FastPathFailed(f"unsupported PNG predictor row type {kind}")
        out += line
        prev = line
    return bytes(out)


def fast_page_count(src: ByteSource) -> tuple[int, bool]:
    """(pages from /Root/Pages/Count, encrypted?) read with a few small reads; raises on anything odd."""
    resolver = _Resolver(src)
    root = resolver.resolve(resolver.trailer.get("Root"))
    if not isinstance(root, dict):
        raise _FastPathFailed("no catalog")
    pages = resolver.resolve(root.get("Pages"))
    if not isinstance(pages, dict):
        raise _FastPathFailed("no page tree")
    count = resolver.resolve(pages.get("Count"))
    if not isinstance(count, int):
        raise _FastPathFailed("no page count")
    # Every page is an object of its own, so the count is below /Size; without object streams
    # each page also takes real bytes. A count failing either is garbage: the full parse decides.
    size = resolver.trailer.get("Size")
    if not (isinstance(size, int) and 0 < count < size):
        raise _FastPathFailed(f"page count {count} not below /Size {size}")
    if not resolver.has_xref_stream and count > src.size // MIN_BYTES_PER_PAGE:
        raise _FastPathFailed(f"page count {count} too large for {src.size} bytes")
    return count, "Encrypt" in resolver.trailer


# --- validation and the public counter ---------------------------------------------------------

@dataclass(frozen=True)
class PageCount:
    pages: int
    method: str  # "count" (fast path), "parse" (pypdf), "pdfinfo"
    encrypted: bool = False


def _pypdf_count(src: ByteSource) -> tuple[int, bool]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    reader = PdfReader(io.BufferedReader(SourceFile(src), 1 << 16), strict=False)
    encrypted = reader.is_encrypted
    if encrypted:
        try:
            opened = reader.decrypt("")
        except (NotImplementedError, PdfReadError, FileNotDecryptedError) as exc:
            raise PdfError("encrypted", f"encrypted and cannot be opened: {exc}") from exc
        if not opened:
            raise PdfError("encrypted", "encrypted with a password; ask the owner for an unlocked copy")
    return len(reader.pages), encrypted


def _pdfinfo_count(path: Path) -> int:
    if not shutil.which("pdfinfo"):
        raise PdfError("unreadable", "pypdf cannot read it and pdfinfo (poppler-utils) is not installed")
    result = subprocess.run(["pdfinfo", "--", str(path)], capture_output=True, text=True, timeout=120)
    match = re.search(r"^Pages:\s+(\d+)", result.stdout, re.M)
    if result.returncode or not match:
        raise PdfError("unreadable", f"damaged beyond repair: {result.stderr.strip()[:200]}")
    return int(match.group(1))


def check_header(src: ByteSource) -> None:
    """Raise PdfError for files that are empty, not PDFs or truncated (no %%EOF at the end)."""
    if src.size == 0:
        raise PdfError("empty", "zero-byte file; download it again")
    if b"%PDF-" not in src.read_at(0, HEAD_BYTES):
        raise PdfError("not_a_pdf", "no %PDF- header; the source served something else (an error page?)")
    tail_start = max(0, src.size - TAIL_BYTES)
    if b"%%EOF" not in src.read_at(tail_start, src.size - tail_start):
        raise PdfError("truncated", "no %%EOF at the end: the file was cut short; download it again")


def count_source(src: ByteSource, local_path: Path | None = None) -> PageCount:
    """Validate and count pages of any ByteSource; raises PdfError with a reason for bad files.

    A file the fast path reads is whole (its trailer, xref and catalog agree), so the header check
    only runs when it fails; over ranged GETs that saves a request per document.
    """
    try:
        count, encrypted = fast_page_count(src)
        # Encrypted files need pypdf to tell whether the empty user password opens them.
        if not encrypted:
            return PageCount(count, "count")
    except SourceReadError:
        raise
    except Exception:  # damaged or unusual structure (any error type): the full parse decides
        pass
    check_header(src)
    try:
        pages, encrypted = _pypdf_count(src)
        if pages > 0:
            return PageCount(pages, "parse", encrypted)
    except PdfError:
        raise
    except Exception:  # pypdf raises many types on damaged files; pdfinfo gets a chance next
        pass
    if local_path is None:
        with tempfile.NamedTemporaryFile(suffix=".pdf") as handle:
            handle.write(src.read_at(0, src.size))
            handle.flush()
            return PageCount(_pdfinfo_count(Path(handle.name)), "pdfinfo")
    return PageCount(_pdfinfo_count(local_path), "pdfinfo")


def count_pages(path: Path | str) -> PageCount:
    """Validate and count the pages of a local PDF; raises PdfError with a reason for bad files."""
    with FileSource(path) as src:
        return count_source(src, Path(path))
