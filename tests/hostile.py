"""Seeded hostile PDFs: the sample PDFs mutated the ways damaged and malicious files are.

    files = generate(folder, count=300, seed=7)      # [Hostile(path, mutation, base, pages)]
    python -m tests.hostile sweep FOLDER             # count every PDF in FOLDER, a JSON line each

The same seed gives the same bytes. ``pages`` is the page count a reader must find when the
mutation leaves the page tree whole (the bombs), else None. Mutations that
change an object rebuild the cross-reference table, so readers reach the hostile object instead
of stopping at a broken xref.
"""
from __future__ import annotations

import json
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipeline import samples

BOMB_BYTES = 2 << 30  # what the Flate bomb inflates to
REASONS = {"empty", "not_a_pdf", "truncated", "encrypted", "unreadable"}  # PdfError reasons of page counting


@dataclass(frozen=True)
class Hostile:
    path: Path
    mutation: str
    base: str
    pages: int | None  # expected count, when the mutation keeps the page tree


# --- base documents -----------------------------------------------------------------------------

@cache
def bases() -> dict[str, tuple[bytes, int]]:
    """{name: (PDF bytes, pages)}: born-digital, scanned and writer variants from pipeline.samples."""
    rng = random.Random(1)
    made = {
        "text3": (samples.text_pdf([samples.sentence(rng) for _ in range(3)]), 3),
        "text12": (samples.text_pdf([samples.sentence(rng) for _ in range(12)]), 12),
        "scan2": (samples.scanned_pdf(["Scanned letter\n" + samples.sentence(rng)] * 2, dpi=40), 2),
        "blank30": (samples.blank_pdf(30), 30),
    }
    if shutil.which("qpdf"):  # xref stream and object streams, as qpdf and many producers write them
        with tempfile.TemporaryDirectory() as tmp:
            source, packed = Path(tmp, "in.pdf"), Path(tmp, "out.pdf")
            source.write_bytes(made["text12"][0])
            subprocess.run(["qpdf", "--object-streams=generate", "--", str(source), str(packed)],
                           check=True, capture_output=True, timeout=60)
            made["objstm12"] = (packed.read_bytes(), 12)
    return made


def has_table(data: bytes) -> bool:
    """Objects all in the open with an xref table: edits of an object can rebuild the table."""
    return b"/ObjStm" not in data and b"/XRef" not in data


# --- byte-level helpers ---------------------------------------------------------------------------

_OBJECT = re.compile(rb"(?m)^(\d+) (\d+) obj\b")


def rebuild_xref(data: bytes) -> bytes:
    """Append a fresh xref table and trailer pointing at the last copy of every object."""
    offsets: dict[int, int] = {}
    for match in _OBJECT.finditer(data):
        offsets[int(match.group(1))] = match.start()
    root = re.findall(rb"/Root (\d+ \d+ R)", data)
    info = re.findall(rb"/Info (\d+ \d+ R)", data)
    size = max(offsets, default=0) + 1
    body = bytearray(data if data.endswith(b"\n") else data + b"\n")
    start = len(body)
    body += b"xref\n0 %d\n" % size
    for num in range(size):
        body += b"%010d 00000 n \n" % offsets[num] if num in offsets else b"0000000000 65535 f \n"
    body += b"trailer\n<< /Size %d" % size
    if root:
        body += b" /Root " + root[-1]
    if info:
        body += b" /Info " + info[-1]
    body += b" >>\nstartxref\n%d\n%%%%EOF\n" % start
    return bytes(body)


def object_body(data: bytes, num: int) -> tuple[int, int] | None:
    """(start, end) of the last ``num 0 obj ... endobj`` in the file."""
    starts = [m.start() for m in _OBJECT.finditer(data) if int(m.group(1)) == num]
    if not starts:
        return None
    end = data.find(b"endobj", starts[-1])
    return (starts[-1], end + len(b"endobj")) if end >= 0 else None


def pages_root(data: bytes) -> int | None:
    """The object number of the page tree root, through the catalog's /Pages."""
    found = re.search(rb"/Type\s*/Catalog.{0,400}?/Pages (\d+) 0 R|/Pages (\d+) 0 R.{0,400}?/Type\s*/Catalog",
                      data, re.S)
    return int(found.group(1) or found.group(2)) if found else None


@cache
def zeros_bomb(prefix: bytes = b"", size: int = BOMB_BYTES) -> bytes:
    """A zlib stream of ``prefix`` then ``size`` zero bytes (whole MiBs), about size/1000 compressed.

    Built from one compressed 1 MiB block repeated: after a full flush deflate forgets its
    history, so each further block of zeros compresses to the same bytes, and the Adler-32 of a
    run of zeros has a closed form. Seconds instead of minutes of compressing.
    """
    block = 1 << 20
    compressor = zlib.compressobj(9)
    head = compressor.compress(prefix) + compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks = size // block
    adler = zlib.adler32(prefix)
    low, high = adler & 0xFFFF, adler >> 16
    zeros = blocks * block
    high = (high + zeros * low) % 65521  # each zero byte adds the unchanged low sum to the high one
    return head + repeat * (blocks - 1) + b"\x03\x00" + ((high << 16) | low).to_bytes(4, "big")


def raster_bomb(page_points: int = 30_000, image_pixels: int = 16_384) -> bytes:
    """A one-page PDF of a few hundred KB whose page rasterises to gigabytes: a MediaBox
    ``page_points`` wide and high, covered by a gray image of ``image_pixels`` squared that inflates
    from zeros. At 50 dpi pdftoppm takes 1.3 GB for the page, tesseract 4.5 GB for its image."""
    image = zeros_bomb(b"", image_pixels * image_pixels)
    content = b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % (page_points, page_points)
    return samples.pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << /XObject << /Im0 4 0 R >> >> "
        b"/Contents 5 0 R >>" % (page_points, page_points),
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 8 "
        b"/Filter /FlateDecode /Length %d >>\nstream\n" % (image_pixels, image_pixels, len(image))
        + image + b"\nendstream",
        samples.pdf_stream(content),
    ])


# --- mutations ------------------------------------------------------------------------------------

Mutation = Callable[[random.Random, bytes], "bytes | None"]


def byte_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 64)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(1, len(data))]


def xref_deleted(rng: random.Random, data: bytes) -> bytes:
    at = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    end = data.rfind(b"startxref")
    keep_trailer = data.find(b"trailer", at, end)
    return data[:at] + (data[keep_trailer:] if keep_trailer >= 0 and rng.random() < 0.5 else data[end:])


def xref_shifted(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.5:  # the pointer moved
        at = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
        moved = max(0, at + rng.choice([-1, 1]) * rng.randint(1, 5000))
        end = data.rfind(b"startxref")
        return data[:end] + b"startxref\n%d\n%%%%EOF\n" % moved
    insert = rng.randrange(16, len(data) // 2)  # the objects moved
    comment = b"%" + bytes(rng.randrange(32, 127) for _ in range(rng.randint(1, 3000))) + b"\n"
    return data[:insert] + comment + data[insert:]


def huge_count(rng: random.Random, data: bytes) -> bytes | None:
    value = rng.choice([b"2147483648", b"999999999999", b"-1", b"0", b"9" * 400, b"1e9", b"99999999999999999999"])
    changed = re.sub(rb"/Count \d+", b"/Count " + value, data)
    return rebuild_xref(changed) if has_table(data) else None


def kids_cycle(rng: random.Random, data: bytes) -> bytes | None:
    root = pages_root(data)
    where = object_body(data, root) if root is not None and has_table(data) else None
    if where is None:
        return None
    body = data[where[0]:where[1]]
    kids = re.search(rb"/Kids\s*\[", body)
    if not kids:
        return None
    if rng.random() < 0.5:  # the root lists itself among its kids
        new = body[:kids.end()] + b"%d 0 R " % root + body[kids.end():]
        return rebuild_xref(data + b"\n" + new + b"\n")
    # A new intermediate node whose kids are the root: root -> node -> root.
    node = max(int(m.group(1)) for m in _OBJECT.finditer(data)) + 1
    new = body[:kids.end()] + b"%d 0 R " % node + body[kids.end():]
    node_obj = b"%d 0 obj\n<< /Type /Pages /Parent %d 0 R /Kids [%d 0 R] /Count 1 >>\nendobj\n" % (node, root, root)
    return rebuild_xref(data + b"\n" + new + b"\n" + node_obj)


def deep_nesting(rng: random.Random, data: bytes) -> bytes | None:
    if not has_table(data):
        return None
    depth = rng.choice([100, 1000, 10_000, 100_000])
    deep = b"[" * depth + b"]" * depth if rng.random() < 0.5 else b"<< /A " * depth + b">>" * depth
    target = rng.choice([b"/Type /Catalog", b"/Type /Pages", b"/Type /Page "])
    if target not in data:
        return None
    return rebuild_xref(data.replace(target, b"/Deep " + deep + b" " + target, 1))


def flate_bomb(rng: random.Random, data: bytes) -> bytes | None:
    """A page's content stream replaced by one that inflates to gigabytes: the page tree stays whole."""
    if not has_table(data):
        return None
    page = re.search(rb"/Contents (\d+) 0 R", data)
    where = object_body(data, int(page.group(1))) if page else None
    if where is None:
        return None
    bomb = zeros_bomb(b"BT /F1 12 Tf 72 720 Td (bomb) Tj ET\n")
    new = b"%d 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % (int(page.group(1)), len(bomb))
    return rebuild_xref(data + b"\n" + new + bomb + b"\nendstream\nendobj\n")


def xref_stream_bomb(rng: random.Random, data: bytes) -> bytes | None:
    """The xref stream (the last object) keeps its rows, then inflates to gigabytes of zeros."""
    if b"/XRef" not in data:
        return None
    at = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    start = data.index(b"stream", data.index(b"/XRef", at)) + len(b"stream")
    start += 2 if data[start:start + 2] == b"\r\n" else 1
    head = data[at:start]
    end = start + int(re.search(rb"/Length (\d+)", head).group(1))
    parms = re.search(rb"/DecodeParms\s*<<[^>]*>>", head)
    if parms:  # no predictor: the rows stay readable as they are
        head = head.replace(parms.group(), b"")
    widths = [int(w) for w in re.search(rb"/W\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s*\]", head).groups()]
    rows = _xref_rows(data[start:end], re.search(rb"/DecodeParms", data[at:start]) is not None, sum(widths))
    bomb = zeros_bomb(rows)
    head = re.sub(rb"/Length \d+", b"/Length %d" % len(bomb), head)
    return data[:at] + head + bomb + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % at


def _xref_rows(raw: bytes, predicted: bool, width: int) -> bytes:
    data = zlib.decompress(raw)
    if not predicted:
        return data
    out, prev = bytearray(), bytearray(width)
    for i in range(0, len(data), width + 1):  # qpdf writes PNG "Up" rows
        row = bytearray((a + b) & 0xFF for a, b in zip(data[i + 1:i + 1 + width], prev, strict=False))
        out += row
        prev = row
    return bytes(out)


def odd_names(rng: random.Random, data: bytes) -> bytes:
    odd = [b"/Ty#00pe", b"/Pa\xffges", b"/K#zzids", b"/" + b"N" * rng.choice([200, 5000, 70000]), b"/Cou\x00nt",
           b"/#", b"/", b"/\x80\x81\xfe", b"/Type#2F#2F#2F"]
    names = [m for m in re.finditer(rb"/[A-Za-z]+", data)]
    out = bytearray(data)
    for match in sorted(rng.sample(names, min(len(names), rng.randint(1, 6))), key=lambda m: -m.start()):
        out[match.start():match.end()] = rng.choice(odd)
    return rebuild_xref(bytes(out)) if has_table(data) and rng.random() < 0.7 else bytes(out)


def loops(rng: random.Random, data: bytes) -> bytes | None:
    """Self references where readers follow chains: /Prev, /Pages, /Count, /Length."""
    at = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    choice = rng.randrange(4)
    if choice == 0:  # the newest section's /Prev is itself
        trailer = data.rfind(b"trailer")
        where = trailer if trailer > at else data.find(b"/XRef", at)
        if where < 0:
            return None
        open_dict = data.find(b"<<", where)
        return data[:open_dict + 2] + b" /Prev %d " % at + data[open_dict + 2:]
    if not has_table(data):
        return None
    root = pages_root(data)
    if choice == 1 and root is not None:  # /Count refers to the page tree's own object
        return rebuild_xref(re.sub(rb"/Count \d+", b"/Count %d 0 R" % root, data, count=1))
    if choice == 2:  # the catalog's /Pages is the catalog
        catalog = re.search(rb"(?m)^(\d+) 0 obj\s*<<[^>]*?/Type\s*/Catalog", data)
        if catalog:
            return rebuild_xref(re.sub(rb"/Pages \d+ 0 R", b"/Pages %s 0 R" % catalog.group(1), data, count=1))
    return rebuild_xref(re.sub(rb"/Length \d+", b"/Length 99999999999", data, count=1))


MUTATIONS: dict[str, Mutation] = {
    "byte_flips": byte_flips,
    "truncate": truncate,
    "xref_deleted": xref_deleted,
    "xref_shifted": xref_shifted,
    "huge_count": huge_count,
    "kids_cycle": kids_cycle,
    "deep_nesting": deep_nesting,
    "flate_bomb": flate_bomb,
    "xref_stream_bomb": xref_stream_bomb,
    "odd_names": odd_names,
    "loops": loops,
}
KEEPS_PAGE_TREE = {"flate_bomb", "xref_stream_bomb"}
BOMB_EVERY = 50


def generate(folder: Path, count: int, seed: int = 7) -> list[Hostile]:
    """Write ``count`` hostile PDFs into ``folder`` (names say mutation and base); same seed, same files."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = bases()
    names = sorted(MUTATIONS)
    ordinary = [n for n in names if "bomb" not in n]
    bombs = [n for n in names if "bomb" in n]
    made: list[Hostile] = []
    while len(made) < count:
        index = len(made)
        # Bombs are a few MB each: one file in BOMB_EVERY proves the point.
        mutation = bombs[index // BOMB_EVERY % len(bombs)] if index % BOMB_EVERY == 7 else rng.choice(ordinary)
        base = rng.choice(sorted(docs))
        data, pages = docs[base]
        mutated = MUTATIONS[mutation](random.Random(rng.random()), data)
        if mutated is None:  # the mutation does not apply to this base
            continue
        path = folder / f"h{index:04d}_{mutation}_{base}.pdf"
        path.write_bytes(mutated)
        made.append(Hostile(path, mutation, base, pages if mutation in KEEPS_PAGE_TREE else None))
    return made


# --- the sweep: count every file in a child process with bounded memory ---------------------------

def _count(path: Path, local: bool) -> dict:
    from pipeline import pdf

    try:
        if local:
            result = pdf.count_pages(path)
        else:  # a remote object: no local path, pdfinfo reads a temp copy
            with pdf.FileSource(path) as src:
                result = pdf.count_source(src)
        return {"pages": result.pages, "method": result.method, "encrypted": result.encrypted}
    except pdf.PdfError as exc:
        return {"reason": exc.reason, "message": str(exc)[:300]}
    except Exception as exc:  # what the counter must never let out
        return {"crash": f"{type(exc).__name__}: {str(exc)[:300]}"}


def sweep(folder: Path, memory_limit: int) -> None:
    """Count every PDF of ``folder`` both ways; print a JSON line before and after each file."""
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # thousands of warnings about damaged files
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    for path in sorted(folder.glob("*.pdf")):
        print(json.dumps({"start": path.name}), flush=True)
        started = time.monotonic()
        local, source = _count(path, True), _count(path, False)
        print(json.dumps({
            "file": path.name, "local": local, "source": source, "seconds": round(time.monotonic() - started, 3),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        }), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "sweep":
        sys.exit("usage: python -m tests.hostile sweep FOLDER MEMORY_LIMIT_BYTES")
    sweep(Path(sys.argv[2]), int(sys.argv[3]))
