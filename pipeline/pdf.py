"""PDF validation and page counting, for local files and for ranged reads of remote objects.

The fast path reads only what it needs to reach ``/Root/Pages/Count``: the file's tail (startxref),
the cross-reference entries of the objects it follows (a fixed-width entry is read directly, an xref
stream is decompressed) and those objects. It never walks the page tree. When that fails or the
number looks wrong it falls back to a full parse with pypdf, then to poppler's ``pdfinfo``. Only when
every reader failed does a file count as truncated or not a PDF.

Files are untrusted: every read, decompression, nesting level and loop of the fast path has a bound,
pypdf works within its own limits (decompression, array and dictionary sizes, page tree cycles) and
pdfinfo runs under a time and memory limit, so a hostile file ends in a count or a PdfError.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

TAIL_BYTES = 2048
# Writers that pad files (NULs, a second %%EOF, appended junk) push startxref further from the end.
MAX_TAIL_BYTES = 65536
HEAD_BYTES = 1024
# Bounds on what the fast path will do for one file; beyond them the full parse decides.
MAX_INFLATE = 1 << 26  # bytes out of one xref or object stream
MAX_UNPREDICT = 1 << 22  # bytes of PNG-filtered rows decoded in Python (writers use "Up", summed lazily)
MAX_NESTING = 64  # arrays and dictionaries inside one another
MAX_SECTIONS = 256  # cross-reference sections in a /Prev chain
MAX_SUBSECTIONS = 1 << 16  # subsection headers over all xref tables
# poppler is the last resort: its time grows with the file (it may rebuild the xref by scanning it)
PDFINFO_TIMEOUT = 20  # seconds, plus one per PDFINFO_SCAN_RATE bytes of file
PDFINFO_SCAN_RATE = 10 << 20
PDFINFO_MEMORY = 2 << 30  # bytes of address space
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

    def __enter__(self) -> FileSource:
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
    """A file that cannot be processed; ``reason`` is a short machine-readable word.

    ``pages`` is the page count when it could still be read (a file locked with a password keeps
    its page tree readable), else None.
    """

    def __init__(self, reason: str, message: str, pages: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.pages = pages


class _FastPathFailed(Exception):
    pass


# --- a small PDF object parser, enough for trailers, catalogs and xref streams -------------------

@dataclass(frozen=True)
class Ref:
    num: int
    gen: int


_WS = b" \t\r\n\x0c\x00"
_TOKEN = re.compile(rb"[^\s()<>\[\]{}/%]+")
_REF_ARRAY = re.compile(rb"\[(?:\s*\d+\s+\d+\s+R)+\s*(\]?)")
_PARTIAL_REF = re.compile(rb"[\s\d]*")  # what is left when the read stops inside a reference array


class _Parser:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.depth = 0

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
        if self.depth > MAX_NESTING:
            raise _FastPathFailed(f"nested deeper than {MAX_NESTING}")
        self.depth += 1
        try:
            return self._value()
        finally:
            self.depth -= 1

    def _value(self) -> Any:
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

_OBJ = re.compile(rb"\s*(\d+)\s+(\d+)\s+obj")
# A subsection header: leading blank lines or spaces, any spacing, any EOL (or none).
_SUBSECTION = re.compile(rb"\s*(\d{1,10})[ \t]+(\d{1,10})[ \t]*(?:\r\n|\r|\n)?\s*")
# One fixed-width entry with whatever ends its line (its width is measured from this).
_ENTRY = re.compile(rb"(\d{10}) (\d{5}) ([nf])[ \t\r\n]*")


def _offset(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _inflate_once(data: bytes, wbits: int, limit: int, enough: bool) -> tuple[bytes, bool]:
    """(output, whether the compressed data ended) of one zlib attempt; what came before an error.

    Output beyond ``limit`` bytes is an error, or with ``enough`` the end of what is needed.
    """
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    try:
        for start in range(0, len(data), 1 << 16):
            out += inflater.decompress(data[start:start + (1 << 16)], limit + 1 - len(out))
            if len(out) > limit:
                if enough:
                    return bytes(out[:limit]), True
                raise _FastPathFailed(f"stream inflates to more than {limit} bytes")
            if inflater.eof:
                break
    except zlib.error:
        return bytes(out), False
    return bytes(out), inflater.eof


def _inflate_tolerant(data: bytes, limit: int, enough: bool = False) -> bytes:
    """Inflate as tolerant readers do: bytes after the end of the data are ignored, and data that
    fails as zlib ("incorrect header check") is retried without leading whitespace or garbage, as
    raw deflate, and without its two-byte header (which also skips a wrong checksum)."""
    stripped = data.lstrip(_WS)
    header = re.search(rb"\x78[\x01\x5e\x9c\xda]", stripped[:16])
    attempts = [(data, 15), (stripped, 15), (stripped, -15), (stripped[2:], -15)]
    if header and header.start():
        attempts.append((stripped[header.start():], 15))
    best = b""
    for candidate, wbits in attempts:
        out, complete = _inflate_once(candidate, wbits, limit, enough)
        if complete:
            return out
        best = max(best, out, key=len)
    if not best:
        raise _FastPathFailed("stream data does not inflate")
    return best  # cut short (a wrong /Length): whatever came out; the lookups check what they use

class _Resolver:
    """Finds objects through the cross-reference sections, newest first, reading only what it needs."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.trailer: dict[str, Any] = {}
        # ("table", [(first object, count, position, entry width)]) or ("stream", _XRefRows)
        self.sections: list[tuple[str, Any]] = []
        self.has_xref_stream = False
        self.subsections = 0
        self._objstm: dict[int, tuple[bytes, dict[int, int]]] = {}
        offset: int | None = self._startxref()
        seen: set[int] = set()
        while offset is not None and offset not in seen:
            if len(seen) >= MAX_SECTIONS:
                raise _FastPathFailed(f"more than {MAX_SECTIONS} cross-reference sections")
            seen.add(offset)
            offset = self._load_section(offset)

    def _startxref(self) -> int:
        """The offset after the last ``startxref``, looking further back when the end is padded."""
        tail_bytes = TAIL_BYTES
        while True:
            tail_start = max(0, self.src.size - tail_bytes)
            tail = self.src.read_at(tail_start, self.src.size - tail_start)
            where = tail.rfind(b"startxref")
            if where >= 0:
                break
            if tail_start == 0 or tail_bytes >= MAX_TAIL_BYTES:
                raise _FastPathFailed("no startxref")
            tail_bytes = MAX_TAIL_BYTES
        match = re.compile(rb"startxref\s+(\d+)").match(tail, where)
        if not match:
            raise _FastPathFailed("startxref without offset")
        return int(match.group(1))

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.src.size:
            raise _FastPathFailed(f"offset {offset} outside the file")
        return self.src.read_at(offset, length)

    def _load_section(self, offset: int) -> int | None:
        head = self._read(offset, 64)
        if head.lstrip(_WS).startswith(b"xref"):
            return self._load_table(offset + head.index(b"xref") + len(b"xref"))
        number, obj, end = self._object_at(offset)
        if not isinstance(obj, _Stream) or obj.dict.get("Type") != "XRef":
            raise _FastPathFailed("startxref points at neither a table nor an xref stream")
        self._load_xref_stream(obj)
        return _offset(obj.dict.get("Prev"))

    def _load_table(self, pos: int) -> int | None:
        """Read the subsection headers of the table at ``pos`` (just after ``xref``), not its entries.

        Entries are 20 bytes by the standard, but writers also use 19 (a lone EOL) or 21 (space
        and CRLF); each subsection's width is taken from its first entry and checked on its last.
        """
        subsections = []
        while True:
            chunk = self._read(pos, 128)
            stripped = chunk.lstrip(_WS)
            if stripped.startswith(b"trailer"):
                pos += len(chunk) - len(stripped) + len(b"trailer")
                break
            match = _SUBSECTION.match(chunk)
            if not match:
                raise _FastPathFailed("bad xref subsection header")
            self.subsections += 1
            if self.subsections > MAX_SUBSECTIONS:
                raise _FastPathFailed(f"more than {MAX_SUBSECTIONS} xref subsections")
            start, count = int(match.group(1)), int(match.group(2))
            pos += match.end()
            width = 20
            if count:
                entry = _ENTRY.match(chunk, match.end())
                if not entry:
                    raise _FastPathFailed("malformed xref entry")
                width = entry.end() - match.end()
                # The last entry, read together with what follows the subsection.
                chunk = self._read(pos + width * (count - 1), 128)
                if not _ENTRY.match(chunk):
                    raise _FastPathFailed("xref entries of uneven width")
            subsections.append((start, count, pos, width))
            pos += width * count
        trailer = self._dict_at(pos)
        self.sections.append(("table", subsections))
        self._merge_trailer(trailer)
        if "XRefStm" in trailer:
            # A hybrid file: objects the table lists as free live in this stream; it comes right
            # after the table in the search order and its own /Prev is ignored.
            _, stream, _ = self._object_at(_offset(trailer["XRefStm"]) or 0)
            if not isinstance(stream, _Stream) or stream.dict.get("Type") != "XRef":
                raise _FastPathFailed("/XRefStm points at no xref stream")
            self._load_xref_stream(stream, merge_trailer=False)
        return _offset(trailer.get("Prev"))

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

    def _load_xref_stream(self, stream: _Stream, merge_trailer: bool = True) -> None:
        widths = stream.dict.get("W")
        if not (isinstance(widths, list) and len(widths) == 3
                and all(isinstance(w, int) and 0 <= w <= 8 for w in widths)):
            raise _FastPathFailed("bad /W in xref stream")
        index = stream.dict.get("Index") or [0, stream.dict.get("Size", 0)]
        if not (isinstance(index, list) and all(isinstance(i, int) and i >= 0 for i in index)):
            raise _FastPathFailed("bad /Index in xref stream")
        subsections, first_row = [], 0
        for start, count in zip(index[::2], index[1::2], strict=False):  # an odd last entry is ignored
            subsections.append((start, count, first_row))
            first_row += count
        predictor, row_bytes, bpp = self._predictor(stream)
        # Rows past /Index are never looked up: inflating stops there (a bomb costs nothing).
        expected = first_row * (sum(widths) + (predictor >= 10))
        if expected > MAX_INFLATE:
            raise _FastPathFailed(f"xref stream of {first_row} entries")
        data = self._inflate(stream, expected, enough=True)
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
    def _inflate(stream: _Stream, limit: int = MAX_INFLATE, enough: bool = False) -> bytes:
        filters = stream.dict.get("Filter")
        filters = [filters] if isinstance(filters, str) else (filters or [])
        if any(f != "FlateDecode" for f in filters) or len(filters) > 2:
            raise _FastPathFailed(f"unsupported filter {filters}")
        data = stream.raw
        for _ in filters:
            data = _inflate_tolerant(data, limit, enough)
        return data

    @staticmethod
    def _predictor(stream: _Stream) -> tuple[int, int, int]:
        """(predictor, bytes per row, bytes per pixel) from /DecodeParms."""
        parms = stream.dict.get("DecodeParms") or {}
        if isinstance(parms, list):
            parms = parms[0] or {}
        if not isinstance(parms, dict):
            raise _FastPathFailed("bad /DecodeParms")
        predictor = parms.get("Predictor", 1)
        if predictor not in (1, 10, 11, 12, 13, 14, 15):
            raise _FastPathFailed(f"unsupported predictor {predictor}")
        colors, bpc, columns = (parms.get(k, d) for k, d in (("Colors", 1), ("BitsPerComponent", 8), ("Columns", 1)))
        if not all(isinstance(v, int) and 0 < v <= 1 << 16 for v in (colors, bpc, columns)):
            raise _FastPathFailed("bad predictor parameters")
        bits = colors * bpc
        return predictor, (columns * bits + 7) // 8, max(1, bits // 8)

    def _decode(self, stream: _Stream) -> bytes:
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
            for start, count, pos, width in section:
                if start <= num < start + count:
                    match = _ENTRY.match(self._read(pos + width * (num - start), width))
                    if not match:
                        raise _FastPathFailed("malformed xref entry")
                    if match.group(3) == b"f":
                        break
                    return (1, int(match.group(1)), int(match.group(2)))
        return None

    def _object_at(self, offset: int, length: int = 2048) -> tuple[int, Any, int]:
        while True:
            data = self._read(offset, length)
            match = _OBJ.match(data)
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
                start = offset + parser.pos + len(b"stream")
                raw = self._stream_data(start, self.resolve(value.get("Length")))
                return int(match.group(1)), _Stream(value, raw), start + len(raw)
            return int(match.group(1)), value, offset + parser.pos

    def _stream_data(self, start: int, length: Any) -> bytes:
        """A stream's bytes from just after ``stream``; ``endstream`` decides when /Length is wrong."""
        head = self._read(start, 2)
        start += 2 if head == b"\r\n" else 1 if head[:1] in (b"\n", b"\r") else 0
        if isinstance(length, int) and 0 <= length <= MAX_INFLATE:
            data = self._read(start, length + 32)
            if data[length:].lstrip(_WS).startswith(b"endstream"):
                return data[:length]
        # A missing or wrong /Length (writers that rewrote the stream but not its dictionary).
        window = TAIL_BYTES
        while True:
            data = self._read(start, window)
            end = data.find(b"endstream")
            if end >= 0:
                return data[:end].rstrip(b"\r\n")
            if len(data) < window or window >= MAX_INFLATE:
                raise _FastPathFailed("stream without endstream")
            window *= 8

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
    if len(data) > MAX_UNPREDICT:
        raise _FastPathFailed(f"{len(data)} bytes of PNG-filtered rows are too many to decode here")
    row = row_bytes + 1
    out = bytearray()
    prev = bytearray(row_bytes)
    for start in range(0, len(data) - row_bytes, row):
        kind, line = data[start], bytearray(data[start + 1:start + row])
        if kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=False))
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


class _Shifted:
    """The bytes from ``shift`` on: offsets inside a PDF count from its %PDF- header."""

    def __init__(self, src: ByteSource, shift: int) -> None:
        self.src, self.shift, self.size = src, shift, src.size - shift

    def read_at(self, offset: int, length: int) -> bytes:
        return self.src.read_at(offset + self.shift, length)


def fast_page_count(src: ByteSource) -> tuple[int, bool]:
    """(pages from /Root/Pages/Count, encrypted?) read with a few small reads; raises on anything odd.

    A file with junk before its header (an HTTP response head, a mail header) is read from there.
    """
    try:
        return _fast_page_count(src)
    except _FastPathFailed:
        shift = src.read_at(0, HEAD_BYTES).find(b"%PDF-")
        if shift <= 0:
            raise
        return _fast_page_count(_Shifted(src, shift))


def _fast_page_count(src: ByteSource) -> tuple[int, bool]:
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


class _Undecided(Exception):
    """A reader could not count the file; the next one gets a chance."""


def _locked(pages: int | None) -> PdfError:
    known = f" ({pages} pages)" if pages else ""
    return PdfError("encrypted", f"encrypted with a password{known}; ask the owner for an unlocked copy", pages)


def _pypdf_count(src: ByteSource, known: int | None = None) -> tuple[int, bool]:
    """(pages, encrypted?) from a full parse; raises PdfError when a password is needed.

    ``known`` is the fast path's count, reported for a locked file whose page tree pypdf cannot reach.
    """
    from pypdf import PdfReader

    reader = PdfReader(io.BufferedReader(SourceFile(src), 1 << 16), strict=False)
    encrypted = reader.is_encrypted
    if encrypted:
        try:
            opened = reader.decrypt("")
        except Exception as exc:  # an algorithm or security handler pypdf lacks: poppler may have it
            raise _Undecided(f"pypdf cannot decrypt it: {exc}") from exc
        if not opened:
            raise _locked(known if known is not None else _declared_count(reader))
    return len(reader.pages), encrypted


def _in_fresh_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` at the bottom of a new thread's stack.

    pypdf recurses once per nesting level, so on deeply nested input whether it hits the recursion
    limit, and so what it answers, would otherwise depend on how deep the caller's stack is.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="pdf-full-parse", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _declared_count(reader: Any) -> int | None:
    """/Root/Pages/Count of a locked file (integers are never encrypted), when it is plausible."""
    try:
        count = reader.trailer["/Root"]["/Pages"]["/Count"]
        size = reader.trailer["/Size"]
    except Exception:
        return None
    return int(count) if isinstance(count, int) and isinstance(size, int) and 0 < count < size else None


def _pdfinfo(path: Path) -> tuple[int, bool]:
    """(pages, encrypted?) from poppler, with a time and memory limit; raises PdfError when a
    password is needed, _Undecided when poppler cannot read it either."""
    argv = ["pdfinfo", "--", str(path)]
    prlimit = shutil.which("prlimit")
    if prlimit:  # poppler on a hostile file must not take the machine's memory
        argv = [prlimit, f"--as={PDFINFO_MEMORY}", "--", *argv]
    timeout = PDFINFO_TIMEOUT + path.stat().st_size / PDFINFO_SCAN_RATE
    # A damaged file can make poppler write an error line per token: tens of MB, kept out of memory.
    with tempfile.TemporaryFile() as errors:
        try:
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=errors, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise _Undecided(f"pdfinfo took more than {timeout:.0f} s") from exc
        size = errors.seek(0, io.SEEK_END)
        messages = os.pread(errors.fileno(), 4096, max(0, size - 4096)).decode("utf-8", "replace").strip()
    if "Incorrect password" in messages:
        raise _locked(None)
    stdout = result.stdout.decode("utf-8", "replace")
    match = re.search(r"^Pages:\s+(\d+)", stdout, re.M)
    if result.returncode or not match or int(match.group(1)) < 1:
        raise _Undecided(messages.splitlines()[-1][:200] if messages else "no pages")
    return int(match.group(1)), bool(re.search(r"^Encrypted:\s+yes", stdout, re.M))


def _pdfinfo_count(src: ByteSource, local_path: Path | None) -> tuple[int, bool]:
    if not shutil.which("pdfinfo"):
        raise _Undecided("pdfinfo (poppler-utils) is not installed")
    if local_path is not None:
        return _pdfinfo(local_path)
    with tempfile.NamedTemporaryFile(suffix=".pdf") as handle:  # a remote object: a local copy
        for offset in range(0, src.size, 1 << 20):
            handle.write(src.read_at(offset, 1 << 20))
        handle.flush()
        return _pdfinfo(Path(handle.name))


def check_header(src: ByteSource) -> None:
    """Raise PdfError for files that are empty, not PDFs or truncated (no %%EOF at the end).

    Only a verdict on a file no reader could count: a PDF after junk, or cut after its last
    cross-reference section, can still be read.
    """
    if src.size == 0:
        raise PdfError("empty", "zero-byte file; download it again")
    if b"%PDF-" not in src.read_at(0, HEAD_BYTES):
        raise PdfError("not_a_pdf", "no %PDF- header; the source served something else (an error page?)")
    tail_start = max(0, src.size - TAIL_BYTES)
    if b"%%EOF" not in src.read_at(tail_start, src.size - tail_start):
        raise PdfError("truncated", "no %%EOF at the end: the file was cut short; download it again")


def count_source(src: ByteSource, local_path: Path | None = None) -> PageCount:
    """Validate and count pages of any ByteSource; raises PdfError with a reason for bad files.

    The fast path first, then pypdf, then poppler's pdfinfo; a file none of them can count is
    empty, not a PDF, truncated, locked or unreadable, in that order of diagnosis. A locked file's
    PdfError carries its page count when the page tree could be read.
    """
    if src.size == 0:
        check_header(src)
    known: int | None = None
    encrypted = False
    try:
        known, encrypted = fast_page_count(src)
        # Encrypted files need a full reader to tell whether the empty user password opens them.
        if not encrypted:
            return PageCount(known, "count")
    except SourceReadError:
        raise
    except Exception:  # damaged or unusual structure (any error type): the fuller readers decide
        pass
    failures = []
    try:
        pages, encrypted_now = _in_fresh_thread(_pypdf_count, src, known)
        if pages > 0:
            return PageCount(pages, "parse", encrypted_now)
        failures.append("pypdf found no pages")
    except (PdfError, SourceReadError):
        raise
    except Exception as exc:  # pypdf raises many types on damaged files; pdfinfo gets a chance next
        failures.append(f"pypdf: {type(exc).__name__}: {str(exc)[:200]}")
    try:
        pages, encrypted_now = _pdfinfo_count(src, local_path)
        return PageCount(pages, "pdfinfo", encrypted or encrypted_now)
    except PdfError as exc:
        exc.pages = known  # the fast path read the page tree that poppler would not open
        raise
    except _Undecided as exc:
        failures.append(f"pdfinfo: {exc}")
    if encrypted:
        raise PdfError("encrypted", f"encrypted and no reader could open it ({'; '.join(failures)})", known)
    check_header(src)
    raise PdfError("unreadable", f"damaged beyond repair ({'; '.join(failures)})")


def count_pages(path: Path | str) -> PageCount:
    """Validate and count the pages of a local PDF; raises PdfError with a reason for bad files."""
    with FileSource(path) as src:
        return count_source(src, Path(path))
