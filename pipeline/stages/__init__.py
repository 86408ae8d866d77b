"""The file pipeline, one module per stage: download, batches, chunks, OCR (with bisection and
integrity checks), split, finalize and quarantine."""
