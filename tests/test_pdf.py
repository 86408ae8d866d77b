"""Page counting: the fast /Count path must agree with pypdf on every structure writers produce."""
from __future__ import annotations

import inspect
import io
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from pipeline import pdf, samples

needs_qpdf = pytest.mark.skipif(shutil.which("qpdf") is None, reason="qpdf (Debian package qpdf) not installed")
needs_incremental_writer = pytest.mark.skipif(
    "incremental" not in inspect.signature(PdfWriter).parameters, reason="pypdf >= 5 writes incremental updates"
)


def pypdf_pages(path: Path) -> int:
    reader = PdfReader(path)
    if reader.is_encrypted:
        reader.decrypt("")
    return len(reader.pages)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def qpdf(tmp_path: Path, source: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    subprocess.run(["qpdf", *args, "--", str(source), str(out)], check=True, capture_output=True, timeout=60)
    return out


# --- a hand-written PDF writer for structures the libraries here do not produce -----------------

def _png_filter(rows: list[bytes], kinds: list[int]) -> bytes:
    """Apply PNG row filters (the encoder side of /Predictor 12..15) with one byte per pixel."""
    out = bytearray()
    prev = bytes(len(rows[0]))
    for row, kind in zip(rows, kinds, strict=True):
        encoded = bytearray()
        for i, value in enumerate(row):
            a = row[i - 1] if i else 0
            b = prev[i]
            c = prev[i - 1] if i else 0
            if kind == 0:
                guess = 0
            elif kind == 1:
                guess = a
            elif kind == 2:
                guess = b
            elif kind == 3:
                guess = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                guess = a if pa <= pb and pa <= pc else b if pb <= pc else c
            encoded.append((value - guess) & 0xFF)
        out += bytes([kind]) + encoded
        prev = row
    return bytes(out)


def handmade_pdf(pages: int, *, xref: str = "table", objstm: bool = False, row_kinds: list[int] | None = None) -> bytes:
    """A PDF with ``pages`` pages whose cross-reference section is a ``table``, a ``stream`` or
    ``hybrid`` (a table plus /XRefStm); ``objstm`` puts the catalog and page tree root in an
    object stream; ``row_kinds`` PNG-filters the xref stream rows with these filter types in turn."""
    catalog, root = 1, 2
    page_nums = list(range(3, 3 + pages))
    objects = {
        catalog: b"<< /Type /Catalog /Pages 2 0 R >>",
        root: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % n for n in page_nums)
        + b"] /Count %d >>" % pages,
    }
    for n in page_nums:
        objects[n] = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"
    compressed = [catalog, root] if objstm else []
    next_num = 3 + pages
    stm_num = next_num if objstm else None
    if objstm:
        header, body = b"", b""
        for n in compressed:
            header += b"%d %d " % (n, len(body))
            body += objects.pop(n) + b"\n"
        payload = zlib.compress(header + body)
        objects[stm_num] = (b"<< /Type /ObjStm /N %d /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
                            % (len(compressed), len(header), len(payload)) + payload + b"\nendstream")
        next_num += 1
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for n in sorted(objects):
        offsets[n] = len(out)
        out += b"%d 0 obj\n" % n + objects[n] + b"\nendobj\n"
    xref_num = next_num
    size = xref_num + 1

    def stream_rows(nums: list[int]) -> list[bytes]:
        rows = []
        for n in nums:
            if n in compressed:
                rows.append(bytes([2]) + stm_num.to_bytes(4, "big") + compressed.index(n).to_bytes(2, "big"))
            elif n == xref_num:
                rows.append(bytes([1]) + len(out).to_bytes(4, "big") + bytes(2))
            elif n in offsets:
                rows.append(bytes([1]) + offsets[n].to_bytes(4, "big") + bytes(2))
            else:
                rows.append(bytes([0, 0, 0, 0, 0, 0xFF, 0xFF]))
        return rows

    def xref_stream(nums: list[int], extra: bytes) -> bytes:
        rows = stream_rows(nums)
        parms = b""
        if row_kinds:
            raw = _png_filter(rows, [row_kinds[i % len(row_kinds)] for i in range(len(rows))])
            parms = b" /DecodeParms << /Predictor 12 /Columns 7 >>"
        else:
            raw = b"".join(rows)
        payload = zlib.compress(raw)
        index = b" ".join(b"%d 1" % n for n in nums)
        return (b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Index [%s] /Filter /FlateDecode%s%s /Length %d >>\n"
                b"stream\n" % (xref_num, size, index, parms, extra, len(payload)) + payload + b"\nendstream\nendobj\n")

    if xref == "stream":
        start = len(out)
        out += xref_stream(list(range(size)), b" /Root 1 0 R")
    else:
        stm_offset = len(out)
        if xref == "hybrid":
            out += xref_stream(compressed + [xref_num], b"")
        start = len(out)
        out += b"xref\n0 %d\n" % size
        for n in range(size):
            if n in offsets:
                out += b"%010d 00000 n \n" % offsets[n]
            elif n == xref_num and xref == "hybrid":
                out += b"%010d 00000 n \n" % stm_offset
            else:
                out += b"0000000000 65535 f \n"
        extra = b" /XRefStm %d" % stm_offset if xref == "hybrid" else b""
        out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\n" % (size, extra)
    out += b"startxref\n%d\n%%%%EOF\n" % start
    return bytes(out)


# --- agreement with pypdf, and the fast path used where it should be ------------------------------

@pytest.mark.parametrize("pages", [1, 3, 17])
def test_reportlab_pdfs(tmp_path: Path, pages: int) -> None:
    path = write(tmp_path, "rl.pdf", samples.text_pdf([f"page {i}" for i in range(pages)]))
    count = pdf.count_pages(path)
    assert (count.pages, count.method, count.encrypted) == (pypdf_pages(path), "count", False)


@pytest.mark.parametrize("pages", [1, 250])
def test_pypdf_written_pdfs(tmp_path: Path, pages: int) -> None:
    path = write(tmp_path, "blank.pdf", samples.blank_pdf(pages))
    count = pdf.count_pages(path)
    assert (count.pages, count.method) == (pypdf_pages(path), "count") == (pages, "count")


def test_scanned_image_pdf(tmp_path: Path) -> None:
    path = write(tmp_path, "scan.pdf", samples.scanned_pdf(["one", "two"], dpi=50))
    assert pdf.count_pages(path) == pdf.PageCount(2, "count")


def test_large_file_is_counted_from_a_few_small_reads(tmp_path: Path) -> None:
    path = write(tmp_path, "big.pdf", samples.blank_pdf(2000))
    with pdf.FileSource(path) as src:
        result = pdf.count_source(src, path)
        assert result == pdf.PageCount(2000, "count")
        assert src.bytes_read < 64 * 1024 < path.stat().st_size


@pytest.mark.parametrize(
    "xref,objstm,row_kinds",
    [
        ("table", False, None),
        ("stream", False, None),
        ("stream", True, None),
        ("stream", True, [2]),  # PNG "Up" rows, as most writers emit them
        ("stream", True, [0, 2]),
        ("stream", True, [0, 1, 2, 3, 4]),  # every PNG filter type, row after row
        ("stream", False, [4]),
        ("hybrid", True, None),
        ("hybrid", True, [2]),
    ],
)
def test_handmade_cross_reference_variants(
    tmp_path: Path, xref: str, objstm: bool, row_kinds: list[int] | None
) -> None:
    path = write(tmp_path, "made.pdf", handmade_pdf(40, xref=xref, objstm=objstm, row_kinds=row_kinds))
    assert pypdf_pages(path) == 40
    assert pdf.count_pages(path) == pdf.PageCount(40, "count")


@needs_qpdf
def test_handmade_files_are_valid(tmp_path: Path) -> None:
    for xref in ("table", "stream", "hybrid"):
        data = handmade_pdf(5, xref=xref, objstm=xref != "table", row_kinds=[0, 1, 2, 3, 4])
        path = write(tmp_path, f"{xref}.pdf", data)
        result = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_qpdf
@pytest.mark.parametrize("pages", [3, 600])
@pytest.mark.parametrize(
    "args",
    [
        ["--object-streams=generate"],
        ["--linearize"],
        ["--linearize", "--object-streams=generate"],
        ["--qdf", "--object-streams=disable"],
    ],
    ids=["objstm", "linearized", "linearized-objstm", "qdf"],
)
def test_qpdf_rewritten_pdfs(tmp_path: Path, pages: int, args: list[str]) -> None:
    source = write(tmp_path, "in.pdf", samples.blank_pdf(pages))
    path = qpdf(tmp_path, source, "out.pdf", *args)
    assert pdf.count_pages(path) == pdf.PageCount(pypdf_pages(path), "count")
    assert pypdf_pages(path) == pages


def _incremental(source: Path, out: Path, *, add: int = 0, remove: int = 0) -> None:
    writer = PdfWriter(source, incremental=True)
    for _ in range(add):
        writer.add_blank_page(width=100, height=100)
    for _ in range(remove):
        writer.remove_page(0)
    writer.write(out)


@needs_incremental_writer
def test_incremental_updates_follow_prev_chain(tmp_path: Path) -> None:
    base = write(tmp_path, "base.pdf", samples.text_pdf(["a", "b", "c"]))
    grown = tmp_path / "grown.pdf"
    _incremental(base, grown, add=2)
    shrunk = tmp_path / "shrunk.pdf"
    _incremental(grown, shrunk, remove=3)
    assert grown.read_bytes().startswith(base.read_bytes())  # really appended, not rewritten
    assert shrunk.read_bytes().count(b"startxref") == 3
    for path, expected in ((grown, 5), (shrunk, 2)):
        assert pypdf_pages(path) == expected
        assert pdf.count_pages(path) == pdf.PageCount(expected, "count")


@needs_incremental_writer
@needs_qpdf
def test_incremental_update_on_xref_stream_file(tmp_path: Path) -> None:
    source = write(tmp_path, "in.pdf", samples.blank_pdf(30))
    packed = qpdf(tmp_path, source, "packed.pdf", "--object-streams=generate")
    grown = tmp_path / "grown.pdf"
    _incremental(packed, grown, add=4)
    assert b"/Prev" in grown.read_bytes()[packed.stat().st_size:]
    assert pdf.count_pages(grown) == pdf.PageCount(pypdf_pages(grown), "count") == pdf.PageCount(34, "count")


# --- encryption ---------------------------------------------------------------------------------

def test_encrypted_with_empty_user_password_is_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "open.pdf", samples.encrypted_pdf("owner-secret"))
    assert pdf.count_pages(path) == pdf.PageCount(1, "parse", encrypted=True)


@needs_qpdf
def test_aes256_with_empty_user_password_is_counted(tmp_path: Path) -> None:
    source = write(tmp_path, "in.pdf", samples.text_pdf(["x"] * 4))
    path = qpdf(tmp_path, source, "aes.pdf", "--encrypt", "", "owner-secret", "256", "--")
    assert pdf.count_pages(path) == pdf.PageCount(4, "parse", encrypted=True)


def test_encrypted_with_user_password_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.pdf", samples.encrypted_pdf("owner-secret", user_password="user-secret"))
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(path)
    assert info.value.reason == "encrypted"
    assert info.value.pages == 1  # integers are not encrypted: the page tree is readable


@needs_qpdf
@pytest.mark.parametrize("algorithm", [["256"], ["128", "--use-aes=y"]], ids=["aes256", "aes128"])
def test_locked_file_keeps_its_page_count(tmp_path: Path, algorithm: list[str]) -> None:
    source = write(tmp_path, "in.pdf", samples.text_pdf([f"page {n}" for n in range(7)]))
    path = qpdf(tmp_path, source, "locked.pdf", "--encrypt", "user-secret", "owner-secret", *algorithm, "--")
    assert b"/ObjStm" not in path.read_bytes()
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(path)
    assert (info.value.reason, info.value.pages) == ("encrypted", 7)
    assert "password" in str(info.value)


@needs_qpdf
def test_locked_file_with_its_page_tree_in_encrypted_object_streams_has_no_count(tmp_path: Path) -> None:
    source = write(tmp_path, "in.pdf", samples.text_pdf(["a", "b", "c"]))
    path = qpdf(tmp_path, source, "locked.pdf", "--object-streams=generate",
                "--encrypt", "user-secret", "owner-secret", "256", "--")
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(path)
    assert (info.value.reason, info.value.pages) == ("encrypted", None)


def test_unknown_security_handler_is_encrypted_with_its_count(tmp_path: Path) -> None:
    data = samples.encrypted_pdf("owner-secret", user_password="")
    assert data.count(b"/Filter /Standard") == 1
    path = write(tmp_path, "handler.pdf", data.replace(b"/Filter /Standard", b"/Filter /Unknown1"))
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(path)
    assert (info.value.reason, info.value.pages) == ("encrypted", 1)
    assert "Unknown1" in str(info.value)  # what pypdf and poppler said


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"<html><body>404 Not Found</body></html>\n", "not_a_pdf"),
        (b"\x89PNG\r\n\x1a\n" + bytes(2000), "not_a_pdf"),
    ],
)
def test_rejected_files(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(write(tmp_path, "bad.pdf", data))
    assert info.value.reason == reason


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated(tmp_path: Path, fraction: float) -> None:
    good = samples.text_pdf(["A document that was cut short"] * 5)
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(write(tmp_path, "cut.pdf", good[: int(len(good) * fraction)]))
    assert info.value.reason == "truncated"


def _damaged_variants() -> dict[str, bytes]:
    good = samples.text_pdf(["one", "two", "three", "four"])
    second_line = good.index(b"\n", good.index(b"\n") + 1) + 1
    table = good.rfind(b"\nxref") + 1
    trailer = good.index(b"trailer", table)
    startxref = good.rfind(b"startxref")
    return {
        # Bytes inserted near the start: every offset points short of its object.
        "shifted": good[:second_line] + b"%" + b"x" * 200 + b"\n" + good[second_line:],
        "offsets-wrong": good[:table]
        + re.sub(rb"\d{10} 00000 n", b"0000000999 00000 n", good[table:trailer]) + good[trailer:],
        "startxref-wrong": good[:startxref] + b"startxref\n99999999\n%%EOF\n",
        "xref-missing": good[:table] + good[trailer:startxref] + b"startxref\n%d\n%%%%EOF\n" % table,
    }


@pytest.mark.parametrize("name", sorted(_damaged_variants()))
def test_damaged_xref_still_counted(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f"{name}.pdf", _damaged_variants()[name])
    pdfinfo = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, timeout=60)
    assert re.search(r"^Pages:\s+4$", pdfinfo.stdout, re.M), "poppler can read it"
    count = pdf.count_pages(path)
    assert count.pages == 4 and count.method != "count"


def test_pdfinfo_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pypdf_fails(src: pdf.ByteSource, known: int | None = None) -> tuple[int, bool]:
        raise ValueError("simulated pypdf failure")

    monkeypatch.setattr(pdf, "_pypdf_count", pypdf_fails)
    path = write(tmp_path, "shifted.pdf", _damaged_variants()["shifted"])
    assert pdf.count_pages(path) == pdf.PageCount(4, "pdfinfo")

    class Memory:
        """A remote object: no local path, so pdfinfo reads a temporary copy."""

        def __init__(self, data: bytes) -> None:
            self.data, self.size = data, len(data)

        def read_at(self, offset: int, length: int) -> bytes:
            return self.data[offset:offset + length]

    assert pdf.count_source(Memory(path.read_bytes())) == pdf.PageCount(4, "pdfinfo")


def test_unreadable_when_nothing_can_read_it(tmp_path: Path) -> None:
    data = b"%PDF-1.4\n" + b"1 0 obj\n<< /Type /Catalog garbage\n" * 20 + b"%%EOF\n"
    with pytest.raises(pdf.PdfError) as info:
        pdf.count_pages(write(tmp_path, "garbage.pdf", data))
    assert info.value.reason == "unreadable"


def test_implausible_count_is_not_believed(tmp_path: Path) -> None:
    good = samples.text_pdf(["a", "b", "c"])
    assert good.count(b"/Count 3 ") == 1
    path = write(tmp_path, "lying.pdf", good.replace(b"/Count 3 ", b"/Count 99"))  # same length: offsets hold
    count = pdf.count_pages(path)
    assert (count.pages, count.method) == (pypdf_pages(path), "parse") == (3, "parse")


def test_mixed_array_after_references_is_parsed() -> None:
    parser = pdf._Parser(b"[1 0 R 2 0 R /Name (text) 3] >>")
    assert parser.value() == [pdf.Ref(1, 0), pdf.Ref(2, 0), "Name", b"", 3]


def test_reading_through_a_byte_source_matches_the_file(tmp_path: Path) -> None:
    data = handmade_pdf(12, xref="hybrid", objstm=True, row_kinds=[2])

    class Memory:
        def __init__(self) -> None:
            self.size = len(data)

        def read_at(self, offset: int, length: int) -> bytes:
            return data[offset:offset + length]

    assert pdf.count_source(Memory()) == pdf.PageCount(12, "count")
    assert len(PdfReader(io.BytesIO(data)).pages) == 12


# --- real-world variants: the fast path reads them and agrees with poppler -------------------------

def poppler_pages(path: Path) -> int:
    result = subprocess.run(["pdfinfo", "--", str(path)], capture_output=True, text=True, timeout=60)
    match = re.search(r"^Pages:\s+(\d+)$", result.stdout, re.M)
    assert match, result.stderr
    return int(match.group(1))


def _xref_stream_variant(kind: str) -> bytes:
    """handmade_pdf(40) with an xref stream (its last object) edited the way real writers get it wrong."""
    data = handmade_pdf(40, xref="stream", objstm=True, row_kinds=[2])
    body = data.rindex(b">>\nstream\n") + len(b">>\nstream\n")
    end = data.rindex(b"\nendstream")
    payload = data[body:end]
    head, tail = data[:body], data[end:]
    written = b"/Length %d" % len(payload)
    assert head.count(written) == 1
    if kind == "raw-deflate":  # no zlib header nor checksum
        payload = payload[2:-4]
    elif kind == "bad-checksum":
        payload = payload[:-4] + bytes(b ^ 0xFF for b in payload[-4:])
    elif kind == "space-before-eol":  # "stream \r\n": the space taken for the data's first byte
        head = head[:-1] + b" \r\n"
    elif kind == "garbage-before-data":
        payload = b"\r\n\x00" + payload
    length = b"/Length %d" % len(payload)
    if kind == "length-too-long":
        length = b"/Length %d" % (len(payload) + 9)
    elif kind == "length-too-short":
        length = b"/Length %d" % (len(payload) - 9)
    elif kind == "length-indirect":  # points at an object that does not exist
        length = b"/Length 999 0 R"
    return head.replace(written, length) + payload + tail


@pytest.mark.parametrize("kind,other_reader", [
    ("space-before-eol", "pdfinfo"),  # zlib: "incorrect header check" when the space is taken as data
    ("bad-checksum", "pdfinfo"),
    ("length-too-long", "pdfinfo"),
    ("length-too-short", "pdfinfo"),
    ("length-indirect", "qpdf"),
    ("raw-deflate", None),  # nothing else here reads these two; the fast path does, like tolerant viewers
    ("garbage-before-data", None),
])
def test_xref_stream_data_that_zlib_refuses(tmp_path: Path, kind: str, other_reader: str | None) -> None:
    path = write(tmp_path, f"{kind}.pdf", _xref_stream_variant(kind))
    if other_reader == "pdfinfo":
        assert poppler_pages(path) == 40
    elif other_reader == "qpdf":
        result = subprocess.run(["qpdf", "--show-npages", str(path)], capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == "40"
    assert pdf.count_pages(path) == pdf.PageCount(40, "count")


def _xref_table_variant(kind: str) -> bytes:
    """A reportlab PDF of 12 pages whose xref table is rewritten in a layout writers use."""
    good = samples.text_pdf([f"page {n}" for n in range(12)])
    table = good.rindex(b"\nxref") + 1
    trailer = good.index(b"trailer", table)
    entries = re.findall(rb"(\d{10}) (\d{5}) ([nf])", good[table:trailer])
    line = {"19-byte": b"%s %s %s\n", "21-byte": b"%s %s %s \r\n", "cr": b"%s %s %s \r"}.get(kind, b"%s %s %s \n")
    rows = [line % entry for entry in entries]
    n = len(rows)
    header = {
        "spaced-header": b"xref\n  0   %d  \r\n" % n,
        "header-without-eol": b"xref\n0 %d " % n,
        "blank-lines": b"xref\r\n\r\n0 %d\r\n" % n,
        "xref-and-header-on-one-line": b"xref 0 %d\n" % n,
        "cr": b"xref\r0 %d\r" % n,
    }.get(kind, b"xref\n0 %d\n" % n)
    if kind == "subsections":  # one subsection per object, free entry apart
        body = b"xref\n0 1\n" + rows[0] + b"".join(b"%d 1\n" % i + row for i, row in enumerate(rows) if i)
    else:
        body = header + b"".join(rows)
    return good[:table] + body + good[trailer:]


@pytest.mark.parametrize("kind", ["19-byte", "21-byte", "cr", "spaced-header", "header-without-eol",
                                  "blank-lines", "xref-and-header-on-one-line", "subsections"])
def test_xref_table_layouts(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path, f"{kind}.pdf", _xref_table_variant(kind))
    assert poppler_pages(path) == 12
    assert pdf.count_pages(path) == pdf.PageCount(12, "count")


def test_xref_entries_of_uneven_width_go_to_the_full_parse(tmp_path: Path) -> None:
    data = _xref_table_variant("19-byte")
    assert data.count(b" 65535 f\n") == 1
    path = write(tmp_path, "uneven.pdf", data.replace(b" 65535 f\n", b" 65535 f \n"))  # the first entry wider
    assert pdf.count_pages(path) == pdf.PageCount(12, "parse")


@pytest.mark.parametrize("junk", [b"\xef\xbb\xbf", b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\r\n"])
def test_junk_before_the_header(tmp_path: Path, junk: bytes) -> None:
    path = write(tmp_path, "junk.pdf", junk + samples.text_pdf(["a", "b", "c"]))
    assert poppler_pages(path) == 3
    assert pdf.count_pages(path) == pdf.PageCount(3, "count")


def test_padding_after_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, "padded.pdf", samples.text_pdf(["a", "b"]) + bytes(20000))
    assert poppler_pages(path) == 2
    assert pdf.count_pages(path) == pdf.PageCount(2, "count")


# --- truncated and not_a_pdf are verdicts on files no reader could count ------------------------

def test_a_file_without_eof_marker_that_parses_is_a_pdf(tmp_path: Path) -> None:
    good = samples.blank_pdf(9)
    without = good[:good.rindex(b"%%EOF")]
    assert pdf.count_pages(write(tmp_path, "no-eof.pdf", without)) == pdf.PageCount(9, "count")
    damaged = without[:without.rindex(b"startxref")] + b"startxref\n7\n"  # the fast path fails too
    assert pdf.count_pages(write(tmp_path, "no-eof-bad-xref.pdf", damaged)).pages == 9


def test_a_pdf_after_more_than_a_kilobyte_of_junk_is_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "late.pdf", b"x" * 3000 + b"\n" + samples.text_pdf(["a", "b", "c"]))
    assert poppler_pages(path) == 3
    assert pdf.count_pages(path).pages == 3


def test_nesting_deeper_than_the_fast_path_allows_is_read_by_another_reader(tmp_path: Path) -> None:
    depth = pdf.MAX_NESTING + 10
    deep = b"<< /Deep " + b"[" * depth + b"]" * depth + b" /Type /Catalog"
    data = handmade_pdf(5).replace(b"<< /Type /Catalog", deep)
    path = write(tmp_path, "deep.pdf", data)
    assert pdf.count_pages(path) == pdf.PageCount(5, "parse")


def test_an_xref_stream_that_inflates_to_gigabytes_is_read_from_its_first_rows(tmp_path: Path) -> None:
    import tracemalloc

    from tests import hostile

    data = handmade_pdf(40, xref="stream")
    body = data.rindex(b">>\nstream\n") + len(b">>\nstream\n")
    end = data.rindex(b"\nendstream")
    payload = data[body:end]
    bomb = hostile.zeros_bomb(zlib.decompress(payload))  # the real rows, then 2 GiB of zeros
    path = write(tmp_path, "bomb.pdf", data[:body].replace(b"/Length %d" % len(payload), b"/Length %d" % len(bomb))
                 + bomb + data[end:])
    tracemalloc.start()
    try:
        assert pdf.count_pages(path) == pdf.PageCount(40, "count")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes held while counting"
