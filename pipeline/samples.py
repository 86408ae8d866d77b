"""Generated sample collections: born-digital and image-only PDFs plus broken files.

Used by the demo, the tests and the benchmarks, so that none of them needs data from outside; and
on its own, to try the pipeline on a collection of any size:

    python -m pipeline.samples OUT_DIR --born-digital 20 --scanned 5 [--seed 7] [--no-broken] [--force]
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from pipeline import atomic

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


BROKEN_NAMES = ("empty.pdf", "truncated.pdf", "not_a_pdf.pdf", "locked.pdf")


def make_collection(folder: Path, *, born_digital: int = 6, scanned: int = 3, seed: int = 7, broken: bool = True,
                    progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Write a sample collection into ``folder``; returns {name: (kind, page texts)} for checking.

    ``broken`` adds one file of each kind the pipeline quarantines (BROKEN_NAMES); ``progress`` is
    called with (files written, files in all, the file's name) after each file. Same arguments,
    same collection."""
    rng = random.Random(seed)
    atomic.makedirs(folder)
    total = born_digital + scanned + (len(BROKEN_NAMES) if broken else 0)
    expected: dict[str, tuple[str, list[str]]] = {}

    def write(name: str, data: bytes, kind: str, pages: list[str]) -> None:
        # Whole files only: a run stopped halfway leaves no PDF cut short that was not meant to be.
        atomic.write_bytes(folder / name, data, sync_dir=False)
        expected[name] = (kind, pages)
        if progress:
            progress(len(expected), total, name)

    for i in range(born_digital):
        pages = [f"Document {i} page {p + 1}\n{sentence(rng)}" for p in range(rng.randint(1, 5))]
        write(f"report_{i:03d}.pdf" if i % 3 else f"minutes {i:03d} (draft).pdf", text_pdf(pages), "text", pages)
    for i in range(scanned):
        pages = [f"Scanned letter {i}\n{sentence(rng, 5)}" for _ in range(rng.randint(1, 2))]
        write(f"scan_{i:03d}.pdf", scanned_pdf(pages), "scanned", pages)
    if broken:
        good = text_pdf(["A document that was cut short"] * 3)
        contents = (b"", good[: len(good) // 3], b"<html><body>404 Not Found</body></html>\n",
                    encrypted_pdf("owner-secret", user_password="user-secret"))
        for name, data in zip(BROKEN_NAMES, contents, strict=True):
            write(name, data, "broken", [])
    atomic.fsync_dir(folder)
    return expected


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def main(argv: list[str] | None = None) -> int:
    """The command line; exit 0 when the collection is written, 2 when the arguments or OUT_DIR are
    wrong (nothing written), 1 when writing failed (the last line names the file and what to do)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.samples",
        description="Write a sample collection: born-digital PDFs (with a text layer), scanned ones (page "
                    "images only, for OCR) and, unless --no-broken, four files the pipeline quarantines "
                    f"({', '.join(BROKEN_NAMES)}). The same --seed gives the same collection.")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write into; created if missing, "
                        "must be empty unless --force")
    parser.add_argument("--born-digital", type=_count, default=6, metavar="N", help="born-digital PDFs (default 6)")
    parser.add_argument("--scanned", type=_count, default=3, metavar="N", help="scanned PDFs (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the page texts and page counts (default 7)")
    parser.add_argument("--no-broken", dest="broken", action="store_false", help="leave out the broken files")
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty "
                        "(files of the same names are replaced, others kept)")
    args = parser.parse_args(argv)
    out: Path = args.out_dir.expanduser().absolute()
    if out.exists() and not out.is_dir():
        parser.error(f"{out} exists and is not a folder; name a new or empty folder")
    if out.is_dir() and not args.force and any(out.iterdir()):
        parser.error(f"{out} is not empty; name a new or empty folder, or pass --force to add the samples to it")
    if not args.born_digital + args.scanned and not args.broken:
        parser.error("nothing to write: give --born-digital or --scanned a number above 0, or drop --no-broken")

    last_line = 0.0

    def progress(done: int, total: int, name: str) -> None:
        nonlocal last_line
        if done == total or time.monotonic() - last_line >= 1.0:
            last_line = time.monotonic()
            print(f"samples: {done}/{total} files written ({name})", file=sys.stderr, flush=True)

    try:
        made = make_collection(out, born_digital=args.born_digital, scanned=args.scanned, seed=args.seed,
                               broken=args.broken, progress=progress)
    except OSError as exc:
        print(f"ERROR: writing the sample collection into {out} failed: {exc}; fix that, then run the same "
              "command again with --force (it rewrites the same files)", file=sys.stderr, flush=True)
        return 1
    pages = sum(len(texts) for _, texts in made.values())
    broken = [name for name, (kind, _) in made.items() if kind == "broken"]
    print(f"samples: wrote {len(made)} files, {pages} pages, to {out}: {args.born_digital} born-digital, "
          f"{args.scanned} scanned, {len(broken)} broken on purpose{': ' + ', '.join(broken) if broken else ''}")
    print(f"samples: to process them, set [download] source = {out} in your luigi.cfg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
