"""Generated sample collections: born-digital and image-only PDFs plus broken files.

Used by the demo, the tests and the benchmarks, so that none of them needs data from outside.
"""
from __future__ import annotations

import io
import random
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

    font = ImageFont.load_default(size=max(12, dpi * 22 // 100))
    images = []
    width, height = int(8.27 * dpi), int(11.69 * dpi)
    for text in pages:
        image = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(image)
        y = dpi
        for line in text.splitlines():
            draw.text((dpi, y), line, fill=0, font=font)
            y += int(font.size * 1.6)
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
