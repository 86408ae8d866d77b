"""Inputs and undisturbed reference runs for the fault tests of the file pipeline (the checks are
in tests/invariants.py)."""
from __future__ import annotations

import io
import random
from pathlib import Path

from pipeline import samples

from .conftest import Site, write_config
from .invariants import Reference, reference


def padded_pdf(pages: list[str], pad_bytes: int, seed: int = 0) -> bytes:
    """A text PDF made ``pad_bytes`` larger by an attached file (the text layer stays ``pages``)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(samples.text_pdf(pages)))
    writer.add_attachment("pad.bin", random.Random(seed).randbytes(pad_bytes))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_inputs(folder: Path, count: int, pad_bytes: int = 0) -> list[str]:
    """``count`` text PDFs named 'doc NN' in ``folder``; returns the identifiers."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for n in range(count):
        name = f"doc {n:02d}"
        pages = [f"Page {p} of document {n}: the harbour ledger." for p in range(1, n % 3 + 2)]
        data = padded_pdf(pages, pad_bytes, seed=n) if pad_bytes else samples.text_pdf(pages)
        (folder / f"{name}.pdf").write_bytes(data)
        names.append(name)
    return names


def undisturbed(root: Path, source: Path) -> Reference:
    """The outcome of an undisturbed ProcessAll of ``source`` (text engine) in a new site at ``root``."""
    config = root / "luigi.cfg"
    root.mkdir(parents=True)
    write_config(config, {
        "core": {"autoload_range": "false", "lock_pid_dir": root / "locks"},
        "retcode": {"task_failed": 30, "unhandled_exception": 40},
        "pipeline": {"base_dir": root / "data"},
        "download": {"source": source},
        "ocr": {"executor": "local", "engine": "text", "engine_workers": 1},
        "backpressure": {"min_free_gb": 0},
    })
    site = Site(root, config)
    site.luigi("ProcessAll", "--run-id", "reference")
    ref = reference(site.base)
    assert ref.texts and all(ref.texts.values()), "the reference run finalized nothing"
    return ref


def only(ref: Reference, identifiers: list[str]) -> Reference:
    """The part of ``ref`` about these documents."""
    return Reference({i: ref.texts[i] for i in identifiers if i in ref.texts},
                     {i: ref.quarantined[i] for i in identifiers if i in ref.quarantined})


def leftovers(base: Path) -> list[Path]:
    """Temp files of interrupted writes and downloads."""
    return sorted(p for p in base.rglob(".*") if p.is_file() and p.name.endswith((".tmp", ".part")))
