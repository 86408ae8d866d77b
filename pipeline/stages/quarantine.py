"""Inputs that cannot be processed go to _quarantine/<ab>/<id>.pdf with a .reason.json beside them."""
from __future__ import annotations

from pathlib import Path

from pipeline import atomic, events
from pipeline.layout import Layout


def quarantine(
    layout: Layout,
    identifier: str,
    sources: list[Path],
    reason: str,
    message: str,
    *,
    also_remove: tuple[Path, ...] = (),
    **context: object,
) -> Path:
    """Keep one copy of the file in quarantine, record why, then remove the other copies.

    ``sources`` are every place the file is (01_downloaded, the batch folder); they may be hard
    links of one another. The reason file is written before any source is removed; ``also_remove``
    (the download's .meta.json, whose content the caller passes in ``context``) goes with them.
    """
    target = layout.quarantine_pdf(identifier)
    existing = [p for p in sources if p.exists()]
    if existing and not target.exists():
        atomic.link_or_copy(existing[0], target)
    record = {"identifier": identifier, "reason": reason, "message": message, "time": events.now_iso(), **context}
    atomic.write_json(layout.quarantine_reason(identifier), record)
    atomic.remove_files([*(p for p in existing if p.resolve() != target.resolve()), *also_remove])
    events.log_event(layout.events, "quarantined", identifier=identifier, reason=reason, message=message, **context)
    return target


def read_reasons(layout: Layout, identifiers: list[str]) -> dict[str, dict]:
    """The quarantine reason of each identifier that has one."""
    found = {}
    for identifier in identifiers:
        path = layout.quarantine_reason(identifier)
        if path.exists():
            found[identifier] = atomic.read_json(path)
    return found
