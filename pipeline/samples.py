"""Generated sample collections: born-digital and image-only PDFs plus broken files.

Used by the demo, the tests and the benchmarks, so that none of them needs data from outside.
"""
from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

WORDS = (
    "archive letter council harbour river ledger census parish record minute survey deed "
    "estate charter treaty garden market bridge school station mill farm county street"
).split()


def sentence(rng: random.Random, words: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize()


def text_pdf(pages: list[str]) -> bytes:
    """A born-digital PDF with a text layer: one string per page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    for text in pages:
        y = 780
        for line in text.splitlines() or [""]:
            pdf.drawString(72, y, line)
            y -= 16
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def blank_pdf(pages: int) -> bytes:
    """A large PDF cheaply: ``pages`` empty pages (used to measure page counting)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def scanned_pdf(pages: list[str], dpi: int = 150) -> bytes:
    """An image-only PDF: each page's text drawn into a greyscale image, no text layer."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(12, dpi * 22 // 100)
    font = ImageFont.load_default(size=size)
    images = []
    width, height = int(8.27 * dpi), int(11.69 * dpi)
    for text in pages:
        image = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(image)
        y = dpi
        for line in text.splitlines():
            draw.text((dpi, y), line, fill=0, font=font)
            y += int(size * 1.6)
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return buffer.getvalue()


def encrypted_pdf(password: str, user_password: str = "") -> bytes:
    """A text PDF encrypted with ``user_password`` ('' opens without asking)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf(["Encrypted page"]))))
    writer.encrypt(user_password=user_password, owner_password=password, algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def text_layer_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose text layer reads back as exactly ``lines``, whatever they hold.

    Characters outside printable ASCII get a code byte of their own, and the font's ToUnicode map
    sends it to that character's UTF-16 units; a lone surrogate ('\\udc63') or a control character
    in ``lines`` is what a real PDF with a broken map gives text extraction (pypdf returns it as is).
    """
    special = sorted({c for line in lines for c in line if not " " <= c <= "~"})
    codes = [*range(0x01, 0x20), *range(0x7F, 0x100)]
    if len(special) > len(codes):
        raise ValueError(f"at most {len(codes)} distinct characters outside printable ASCII")
    code_of = {c: codes[i] for i, c in enumerate(special)}

    def literal(line: str) -> bytes:
        out = bytearray(b"(")
        for c in line:
            byte = code_of.get(c, ord(c))
            out += b"\\" + bytes([byte]) if c in "()\\" else bytes([byte]) if 0x20 <= byte <= 0x7E else b"\\%03o" % byte
        return bytes(out + b")")

    mapping = b"".join(b"<%02X> <%s>\n" % (code_of[c], c.encode("utf-16-be", "surrogatepass").hex().upper().encode())
                       for c in special)
    cmap = (b"/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
            b"/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
            b"/CMapName /Sample-UCS def\n/CMapType 2 def\n1 begincodespacerange\n<00> <FF>\nendcodespacerange\n"
            + (b"%d beginbfchar\n" % len(special) + mapping + b"endbfchar\n" if special else b"")
            + b"1 beginbfrange\n<20> <7E> <0020>\nendbfrange\nendcmap\n"
            b"CMapName currentdict /CMap defineresource pop\nend\nend")
    content = b"BT /F1 14 Tf 72 760 Td " + b" 0 -20 Td ".join(literal(line) + b" Tj" for line in lines) + b" ET"

    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding /ToUnicode 6 0 R >>",
        pdf_stream(content),
        pdf_stream(cmap),
    ])


def pdf_stream(data: bytes, flate: bool = False) -> bytes:
    """A stream object's body, Flate-compressed when asked."""
    if flate:
        data = zlib.compress(data)
    header = b"<< /Length %d%s >>\nstream\n" % (len(data), b" /Filter /FlateDecode" if flate else b"")
    return header + data + b"\nendstream"


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (numbered from 1, the first is the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def kids_cycle_pdf() -> bytes:
    """A PDF whose page tree lists itself among its kids: no reader can walk it to the end."""
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
    ])


def slow_text_pdf(operators: int) -> bytes:
    """A PDF of a few KB whose one content stream shows text ``operators`` times: a pathological
    content stream (pypdf's text extraction spends seconds on each 100,000)."""
    content = b"BT /F1 12 Tf " + b"(x) Tj " * operators + b"ET"
    return pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 << /Type /Font "
        b"/Subtype /Type1 /BaseFont /Helvetica >> >> >> /Contents 4 0 R >>",
        pdf_stream(content, flate=True),
    ])


def make_collection(folder: Path, *, born_digital: int = 6, scanned: int = 3, seed: int = 7) -> dict:
    """Write a demo collection into ``folder``; returns {name: (kind, page texts)} for checking."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, tuple[str, list[str]]] = {}
    for i in range(born_digital):
        pages = [f"Document {i} page {p + 1}\n{sentence(rng)}" for p in range(rng.randint(1, 5))]
        name = f"report_{i:03d}.pdf" if i % 3 else f"minutes {i:03d} (draft).pdf"
        (folder / name).write_bytes(text_pdf(pages))
        expected[name] = ("text", pages)
    for i in range(scanned):
        pages = [f"Scanned letter {i}\n{sentence(rng, 5)}" for _ in range(rng.randint(1, 2))]
        name = f"scan_{i:03d}.pdf"
        (folder / name).write_bytes(scanned_pdf(pages))
        expected[name] = ("scanned", pages)
    good = text_pdf(["A document that was cut short"] * 3)
    broken = {
        "empty.pdf": b"",
        "truncated.pdf": good[: len(good) // 3],
        "not_a_pdf.pdf": b"<html><body>404 Not Found</body></html>\n",
        "locked.pdf": encrypted_pdf("owner-secret", user_password="user-secret"),
    }
    for name, data in broken.items():
        (folder / name).write_bytes(data)
        expected[name] = ("broken", [])
    return expected
