"""Test OCR program for engine = command: crashes on any chunk that lists a 'poison' PDF.

    python poison_engine.py CHUNK_LIST OUTPUT CALLS MODE [HOLD]

Appends the sorted names of its chunk's PDFs to CALLS (one JSON list a line), then: when a PDF's
name contains "poison", exits 1 (MODE exit) or dies of SIGABRT (MODE abort), unless MODE is never;
otherwise writes one
olmOCR record per PDF with the text of its pages. While the file HOLD exists, a chunk of at most two
PDFs waits before it starts (so a test can stop the pipeline in the middle of a bisection).
"""
import json
import os
import sys
import time
from pathlib import Path

from pypdf import PdfReader

from pipeline.olmocr_format import build_record

chunk_list, output, calls, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
hold = Path(sys.argv[5]) if len(sys.argv) > 5 else None
pdfs = [Path(line) for line in chunk_list.read_text(encoding="utf-8").splitlines() if line]
with open(calls, "a", encoding="utf-8") as log:
    log.write(json.dumps(sorted(p.stem for p in pdfs)) + "\n")
while hold is not None and hold.exists() and len(pdfs) <= 2:
    time.sleep(0.1)
if mode != "never" and any("poison" in p.name for p in pdfs):
    print(f"poison_engine: a poison document in {[p.name for p in pdfs]}", flush=True)
    if mode == "abort":
        os.abort()
    sys.exit(1)
records = []
for pdf in pdfs:
    texts = [page.extract_text() or "" for page in PdfReader(pdf).pages]
    records.append(json.dumps(build_record(str(pdf), texts, version="poison-engine")))
output.write_text("".join(r + "\n" for r in records), encoding="utf-8")
