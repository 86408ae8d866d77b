"""pipeline.engines.text: the text layer of born-digital PDFs, each document in its own worker."""
from __future__ import annotations

from pathlib import Path

from pipeline import samples
from pipeline.engines import EngineSettings, get_engine

from .engine_inputs import POISON_LINES, broken_pdfs, failures_by_file, normalise, page_texts, read_records


def test_text_engine_reads_the_text_layer(tmp_path: Path) -> None:
    pages = ["Document 1 page 1\nArchive letter council", "Document 1 page 2\nHarbour river ledger"]
    source = tmp_path / "report_001.pdf"
    source.write_bytes(samples.text_pdf(pages))
    pdfs = [source, *broken_pdfs(tmp_path)]
    records = read_records(get_engine("text").run(pdfs, tmp_path / "workspace"))
    assert set(records) == {"report_001"}
    found = page_texts(records["report_001"])
    assert [normalise(t) for t in found] == [normalise(p) for p in pages]
    assert records["report_001"]["metadata"]["Source-File"] == str(source)


def test_text_engine_isolates_each_document(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    files = {
        "good.pdf": samples.text_pdf(["Good page one", "Good page two"]),
        "poison.pdf": samples.text_layer_pdf(POISON_LINES),
        "cycle.pdf": samples.kids_cycle_pdf(),
        "slow.pdf": samples.slow_text_pdf(300_000),  # pypdf needs many seconds for it
        "caf\udce9.pdf": samples.text_pdf(["A file name that is not UTF-8"]),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    pdfs = [folder / name for name in files] + broken_pdfs(folder)
    engine = get_engine("text", EngineSettings(document_timeout=3, workers=2))
    outputs = engine.run(pdfs, tmp_path / "workspace")

    outputs[0].read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    records = read_records(outputs)
    assert set(records) == {"good", "poison"}
    assert records["poison"]["text"] == "Poisoned text layer\nA\ufffdB\ufffdC\ufffdD\nLast line"
    assert records["poison"]["metadata"]["replaced-characters"] == 3
    assert "replaced-characters" not in records["good"]["metadata"]
    failed = failures_by_file(engine)
    assert set(failed) == {"cycle.pdf", "slow.pdf", "caf\udce9.pdf", "empty.pdf", "truncated.pdf",
                           "not_a_pdf.pdf", "locked.pdf"}
    assert failed["cycle.pdf"]["error"] == "PdfReadError" and "cyclic" in failed["cycle.pdf"]["message"]
    assert "Traceback" in failed["cycle.pdf"]["log"]
    assert failed["slow.pdf"]["error"] == "TimeLimit"
    assert failed["caf\udce9.pdf"]["error"] == "InvalidRecord"


def test_one_worker_reading_many_documents_in_turn_gets_each_ones_own_characters(tmp_path: Path) -> None:
    texts = ["Café — €5 Straße", "Ærøskøbing ½ ¼ “quoted”", "plain ascii line"]
    pdfs = []
    for n, text in enumerate(texts * 3):
        pdfs.append(tmp_path / f"doc{n}.pdf")
        pdfs[-1].write_bytes(samples.text_pdf([text]))
    records = read_records(get_engine("text", EngineSettings(workers=1)).run(pdfs, tmp_path / "workspace"))
    assert [normalise(page_texts(records[f"doc{n}"])[0]) for n in range(len(pdfs))] == \
        [normalise(t) for t in texts * 3]


def test_the_shared_encoding_table_is_handed_out_as_a_copy_a_font_may_amend() -> None:
    import pypdf._text_extraction._text_extractor as extractor

    from pipeline.engines import text

    text._share_named_encodings()
    first = extractor.encoding_dict_from_named_encoding("cp1252")
    assert first[0x80] == "€"
    first[0x80] = "amended by one font's /Differences"
    assert extractor.encoding_dict_from_named_encoding("cp1252")[0x80] == "€"
