"""olmOCR's Dolma JSONL records: building, parsing, and finding which PDF a record belongs to."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

ENGINE_VERSION_KEY = "olmocr-version"
# Counts the characters replaced to make the record valid text; present only when there were any.
REPLACED_KEY = "replaced-characters"
REPLACEMENT = "\ufffd"
# Where older olmOCR versions and the older scripts kept the source path.
SOURCE_FILE_KEYS = ("Source-File", "source-file", "source_file", "SourceFile", "pdf_path")
_WINDOWS_PATH = re.compile(r"[A-Za-z]:[\\/]|\\\\")  # a drive letter or a UNC share
# Characters that make a record invalid UTF-8 or break consumers: lone surrogates (text layers
# decoded from bad ToUnicode maps, non-UTF-8 file names), NUL and the other C0 controls. Tab,
# line feed, carriage return (CRLF text) and form feed (a page break in extracted text) are
# ordinary whitespace to JSON and text tools, so they stay.
_INVALID = re.compile("[\x00-\x08\x0b\x0e-\x1f\ud800-\udfff]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


class InvalidRecord(ValueError):
    """A record that cannot be made valid (e.g. a file name that is not UTF-8): that document fails."""


def clean_text(text: str) -> tuple[str, int]:
    """``text`` with every invalid character replaced by U+FFFD, and how many were replaced.

    One character for one, so page spans counted in characters stay right.
    """
    if _INVALID.search(text) is None:
        return text, 0
    return _INVALID.subn(REPLACEMENT, text)


def _check_source_file(source_file: str) -> None:
    """A replaced character in the Source-File would name another file: such a record cannot be repaired."""
    if _INVALID.search(source_file):
        raise InvalidRecord(f"Source-File {ascii(source_file)} is not valid text (a file name that is not "
                            "UTF-8, or one with a control character): rename the file")


def _join_surrogate_pairs(text: str) -> str:
    """A high and a low surrogate side by side are one character split in two (UTF-16 decoded badly)."""
    return _SURROGATE_PAIR.sub(lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le"), text)


def make_valid(record: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A copy of ``record`` whose strings are all valid text, and how many characters were replaced.

    The count is added to ``metadata["replaced-characters"]``. A Source-File that is not valid
    text raises InvalidRecord.
    """
    source = source_file_of(record)
    if source is not None:
        _check_source_file(source)
    count = 0

    def clean(value: Any) -> Any:
        nonlocal count
        if isinstance(value, str):
            value, replaced = clean_text(value)
            count += replaced
            return value
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    try:
        cleaned = clean(record)
    except RecursionError:
        raise InvalidRecord("the record is nested too deeply to check") from None
    if count and isinstance(cleaned.get("metadata"), dict):
        previous = cleaned["metadata"].get(REPLACED_KEY)
        cleaned["metadata"][REPLACED_KEY] = count + (previous if isinstance(previous, int) else 0)
    return cleaned, count


def record_line(record: dict[str, Any]) -> bytes:
    """The one-line JSONL form of a valid record (UTF-8, no NaN), text kept exactly."""
    try:
        return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidRecord(f"the record cannot be written as JSON: {exc}") from None


def build_record(
    source_file: str,
    page_texts: list[str],
    *,
    version: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    fallback_pages: int = 0,
) -> dict[str, Any]:
    """A record with the fields olmOCR writes: pages joined by newlines, spans in characters.

    As in olmOCR's build_dolma_document, the newline after a page belongs to that page's span.
    Invalid characters in the text are replaced and counted (see clean_text); a Source-File that
    is not valid text raises InvalidRecord.
    """
    _check_source_file(source_file)
    text_parts: list[str] = []
    spans: list[list[int]] = []
    position = 0
    replaced = 0
    for number, page_text in enumerate(page_texts, start=1):
        page_text, count = clean_text(_join_surrogate_pairs(page_text))
        replaced += count
        content = page_text + ("\n" if number < len(page_texts) else "")
        text_parts.append(content)
        spans.append([position, position + len(content), number])
        position += len(content)
    text = "".join(text_parts)
    today = _dt.date.today().isoformat()
    metadata: dict[str, Any] = {
        "Source-File": source_file,
        ENGINE_VERSION_KEY: version,
        "pdf-total-pages": len(page_texts),
        "total-input-tokens": input_tokens,
        "total-output-tokens": output_tokens,
        "total-fallback-pages": fallback_pages,
    }
    if replaced:
        metadata[REPLACED_KEY] = replaced
    return {
        "id": hashlib.sha1(text.encode("utf-8")).hexdigest(),
        "text": text,
        "source": "olmocr",
        "added": today,
        "created": today,
        "metadata": metadata,
        "attributes": {"pdf_page_numbers": spans},
    }


def source_file_of(record: dict[str, Any]) -> str | None:
    """The record's source PDF path, wherever this olmOCR version put it."""
    places = [record.get("metadata"), record]
    for place in places:
        if isinstance(place, dict):
            for key in SOURCE_FILE_KEYS:
                value = place.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


def identifier_from_source(source_file: str) -> str:
    """The identifier a Source-File names: its last path component without '.pdf'.

    Source-File may be absolute, relative, under a temp dir, an s3:// URI or a Windows path.
    """
    # Backslashes separate folders only in a Windows path; a POSIX name may contain one.
    windows = _WINDOWS_PATH.match(source_file) or ("\\" in source_file and "/" not in source_file)
    name = (PureWindowsPath if windows else PurePosixPath)(source_file).name
    return name[:-4] if name.lower().endswith(".pdf") else name


@dataclass
class ResultLine:
    file: Path
    line_number: int
    record: dict[str, Any] | None
    error: str | None = None


def result_files(results_dir: Path) -> list[Path]:
    """olmOCR output files in the deterministic order where a later file wins a duplicate."""
    files = [p for p in Path(results_dir).glob("*.jsonl") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def iter_records(path: Path) -> Iterator[ResultLine]:
    """Every line of one results file; malformed lines come back with an error, never raise."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
                yield ResultLine(path, number, None, f"not JSON: {exc}")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text", ""), str):
                yield ResultLine(path, number, None, "not an olmOCR record (no text)")
            elif source_file_of(record) is None:
                yield ResultLine(path, number, None, "no Source-File in the record")
            else:
                yield ResultLine(path, number, record)


def identifiers_in(files: Iterable[Path]) -> set[str]:
    """Identifiers that have at least one well-formed record in ``files``."""
    found = set()
    for path in files:
        for line in iter_records(path):
            source = source_file_of(line.record) if line.record is not None else None
            if source is not None:  # always, for a well-formed record
                found.add(identifier_from_source(source))
    return found


def record_stats(record: dict[str, Any]) -> dict[str, Any]:
    """OCR statistics of one record for the metadata file."""
    meta = record.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    text = record.get("text") or ""
    spans = (record.get("attributes") or {}).get("pdf_page_numbers") or []
    return {
        "pages": meta.get("pdf-total-pages", len(spans)),
        "characters": len(text),
        "total_input_tokens": meta.get("total-input-tokens"),
        "total_output_tokens": meta.get("total-output-tokens"),
        "total_fallback_pages": meta.get("total-fallback-pages"),
        "engine_version": meta.get(ENGINE_VERSION_KEY),
        "source_file": source_file_of(record),
    }
