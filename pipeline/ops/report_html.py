"""The report to look at: ``_manifests/report.html``, one self-contained page (plots inline as PNG data
URIs, no script, no external resource) with the Status table at the top and plots of how the
collection moved: documents and pages finalized, pages/hour, chunk run time against the requested
walltime, queue wait, backlog and disk per stage over time, quarantine reasons.

Where each plot's numbers come from:
- finalized over time: each batch's finalized.json (finished_at), or finalize_report.json (time) of a
  batch finalized partially: one small record per batch, never one per document;
- pages/hour, run time, queue wait: the job records of _manifests/metrics.ndjson;
- backlog and disk over time: _manifests/status_history.ndjson, one snapshot of Status per
  ProcessAll run (``refresh(record_snapshot=True)``);
- the Status table and the quarantine reasons: Status itself (pipeline.ops.status.collect).

A figure is drawn only when the data it shows changed since the last report
(_manifests/report_figures.json keeps the last figures under a digest of their data).

A plot without data says so in words instead of an empty axis.
"""
from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import html
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import atomic, events
from pipeline.executors.records import Attempt, attempts
from pipeline.executors.slurm.client import SlurmClient
from pipeline.layout import QUARANTINE, BatchPaths, Layout
from pipeline.ops import status as status_view

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REPORT_NAME = "report.html"
HISTORY_NAME = "status_history.ndjson"
FIGURES_NAME = "report_figures.json"  # the last report's figures, for the next one to reuse
SNAPSHOT_EVENT = "status_snapshot"
_DAY_BINS_AFTER_DAYS = 3  # pages/hour in hourly bars up to this span, in daily means beyond it


def report_path(layout: Layout) -> Path:
    return layout.manifests / REPORT_NAME


def history_path(layout: Layout) -> Path:
    return layout.manifests / HISTORY_NAME


def figures_path(layout: Layout) -> Path:
    return layout.manifests / FIGURES_NAME


# --- the numbers -----------------------------------------------------------------------------------

def snapshot(status: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a Status worth keeping over time (a few hundred bytes)."""
    stages = {name: {k: row[k] for k in ("documents", "pages", "bytes") if k in row}
              for name, row in status["stages"].items()}
    return events.event(
        SNAPSHOT_EVENT, status_time=status["time"], stages=stages,
        backlog={k: status["backlog"][k] for k in ("documents", "pages")},
        open_batches=len(status["batches"]), free_bytes=status["disk"]["free_bytes"],
        quarantine_reasons=status["stages"].get(QUARANTINE, {}).get("reasons", {}))


def read_history(layout: Layout) -> list[dict[str, Any]]:
    return [r for r in events.read(history_path(layout)) if r.get("event") == SNAPSHOT_EVENT]


def finalized_over_time(layout: Layout) -> list[tuple[_dt.datetime, int, int]]:
    """(time, documents, pages) each batch finalized, in time order."""
    found = []
    for number in layout.batch_numbers():
        paths = BatchPaths(layout.batch_dir(number))
        for path, key in ((paths.finalized, "finished_at"), (paths.finalize_report, "time")):
            record = _record(path)
            if isinstance(record, dict) and isinstance(record.get(key), str):
                found.append((_time(record[key]), int(record.get("finalized") or 0), int(record.get("pages") or 0)))
                break
    return sorted(found)


def _record(path: Path) -> Any:
    """A JSON record, or None when missing or unreadable: the report shows what it can."""
    try:
        return atomic.read_json(path)
    except (OSError, ValueError):
        return None


def _time(iso: str) -> _dt.datetime:
    """An aware datetime in UTC (sacct writes the cluster's local time without an offset)."""
    moment = _dt.datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(_dt.timezone.utc)


def _end(run: Attempt) -> _dt.datetime | None:
    return _time(run.end) if run.end else None


# --- the plots ---------------------------------------------------------------------------------------

def _figure() -> Figure:
    # Imported here: matplotlib takes a second to import, and every `luigi --module pipeline` loads this module.
    from matplotlib.figure import Figure

    return Figure(figsize=(5.6, 3.4), dpi=100, layout="constrained")


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")  # Figure.savefig uses the Agg canvas: no pyplot, no display
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _dates(times: list[_dt.datetime]) -> Any:
    """Times as matplotlib's date numbers (what its typed API takes for a date axis)."""
    from matplotlib.dates import date2num

    return date2num(times)


def _time_axis(axes: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_xlabel("time (UTC)")
    axes.grid(alpha=0.3)


def _plot_finalized(rows: list[tuple[_dt.datetime, int, int]]) -> Figure | str:
    if not rows:
        return "No batch finalized yet."
    figure = _figure()
    axes = figure.subplots()
    times = _dates([t for t, _, _ in rows])
    documents = _cumulative([d for _, d, _ in rows])
    pages = _cumulative([p for _, _, p in rows])
    axes.step(times, documents, where="post", marker="o", color="tab:blue", label="documents")
    axes.set_ylabel("documents", color="tab:blue")
    right = axes.twinx()
    right.step(times, pages, where="post", marker="s", color="tab:orange", label="pages")
    right.set_ylabel("pages", color="tab:orange")
    axes.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    axes.set_title("Documents and pages finalized (cumulative, per batch)")
    _time_axis(axes)
    return figure


def _cumulative(values: list[int]) -> list[int]:
    total, out = 0, []
    for value in values:
        total += value
        out.append(total)
    return out


def _plot_pages_per_hour(runs: list[Attempt]) -> Figure | str:
    ended = [(end, r.pages) for r in runs if r.completed and (end := _end(r))]
    if not ended:
        return "No chunk completed yet (metrics.ndjson has no completed job)."
    first, last = min(e for e, _ in ended), max(e for e, _ in ended)
    daily = (last - first) > _dt.timedelta(days=_DAY_BINS_AFTER_DAYS)
    width = 1.0 if daily else 1 / 24  # in days, matplotlib's date unit
    bins: Counter[_dt.datetime] = Counter()
    for end, pages in ended:
        start = end.replace(minute=0, second=0, microsecond=0)
        bins[start.replace(hour=0) if daily else start] += pages
    figure = _figure()
    axes = figure.subplots()
    starts = sorted(bins)
    axes.bar(_dates(starts), [bins[s] / (24 if daily else 1) for s in starts], width=width, align="edge",
             edgecolor="white", color="tab:green")
    axes.set_ylabel("pages/hour")
    axes.set_title("Pages OCRed per hour" + (" (daily mean)" if daily else "") + ", by chunk end")
    _time_axis(axes)
    return figure


def _plot_run_time(runs: list[Attempt]) -> Figure | str:
    measured = [r for r in runs if r.elapsed is not None and r.state]
    if not measured:
        return "No chunk run measured yet (metrics.ndjson has no ended job)."
    requested = [r for r in measured if r.walltime_requested]
    longest = max([r.elapsed or 0 for r in measured] + [r.walltime_requested or 0 for r in requested])
    unit, scale = ("minutes", 60) if longest >= 120 else ("seconds", 1)
    figure = _figure()
    axes = figure.subplots()
    for state in sorted({r.state or "" for r in measured}):
        group = [r for r in measured if r.state == state]
        axes.scatter([r.pages for r in group], [(r.elapsed or 0) / scale for r in group], label=f"elapsed, {state}",
                     zorder=3)
    if requested:
        axes.scatter([r.pages for r in requested], [(r.walltime_requested or 0) / scale for r in requested],
                     marker="_", s=200, color="black", label="requested walltime", zorder=2)
        for r in requested:
            axes.plot([r.pages, r.pages], [(r.elapsed or 0) / scale, (r.walltime_requested or 0) / scale],
                      color="grey", linewidth=0.6, zorder=1)
        title = "Chunk run time against its requested walltime"
    else:
        title = "Chunk run time (no walltime requested: local executor)"
    axes.set_xlabel("pages in the chunk")
    axes.set_ylabel(unit)
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _plot_queue_wait(runs: list[Attempt]) -> Figure | str:
    waits = [(_time(r.submitted_at), (_time(r.start) - _time(r.submitted_at)).total_seconds() / 60)
             for r in runs if r.submitted_at and r.start]
    if not waits:
        return ("No queue wait recorded: no SLURM job has both its submission and its start in "
                "metrics.ndjson (the local executor starts chunks at once).")
    figure = _figure()
    axes = figure.subplots()
    axes.scatter(_dates([t for t, _ in waits]), [w for _, w in waits], color="tab:purple")
    axes.set_ylabel("minutes from submission to start")
    axes.set_ylim(bottom=0)
    axes.set_title("Queue wait per SLURM job")
    _time_axis(axes)
    return figure


def _plot_backlog(history: list[dict[str, Any]]) -> Figure | str:
    from matplotlib.ticker import MaxNLocator

    if not history:
        return "No status snapshot yet: each ProcessAll run records one."
    figure = _figure()
    axes = figure.subplots()
    times = _dates([_time(h["time"]) for h in history])
    axes.plot(times, [h["backlog"]["documents"] for h in history], marker="o", color="tab:blue")
    axes.set_ylabel("documents", color="tab:blue")
    right = axes.twinx()
    right.plot(times, [h["backlog"]["pages"] for h in history], marker="s", color="tab:orange")
    right.set_ylabel("pages", color="tab:orange")
    for side in (axes, right):  # whole numbers, and an axis up to 1 when the backlog stayed empty
        side.yaxis.set_major_locator(MaxNLocator(integer=True))
        side.set_ylim(bottom=0, top=max(1.0, side.get_ylim()[1]))
    axes.set_title("Backlog (waiting and in open batches), at each ProcessAll")
    _time_axis(axes)
    return figure


def _plot_disk(history: list[dict[str, Any]]) -> Figure | str:
    if not history:
        return "No status snapshot yet: each ProcessAll run records one."
    figure = _figure()
    axes = figure.subplots()
    times = _dates([_time(h["time"]) for h in history])
    stages = sorted({s for h in history for s in h["stages"]})
    peak = max([h["stages"].get(s, {}).get("bytes", 0) for h in history for s in stages] + [1])
    unit, scale = next((u, f) for u, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1))
                       if peak >= f)
    for stage in stages:
        axes.plot(times, [h["stages"].get(stage, {}).get("bytes", 0) / scale for h in history], marker="o",
                  label=f" {stage}")  # matplotlib leaves labels that start with "_" out of the legend
    axes.set_ylabel(f"disk used ({unit})")
    axes.set_title("Disk used per stage, at each ProcessAll")
    axes.legend(fontsize="small")
    _time_axis(axes)
    return figure


def _plot_quarantine(reasons: dict[str, int]) -> Figure | str:
    from matplotlib.ticker import MaxNLocator

    if not reasons:
        return "Nothing quarantined."
    figure = _figure()
    axes = figure.subplots()
    names = sorted(reasons, key=lambda r: reasons[r])
    axes.barh(names, [reasons[n] for n in names], color="tab:red")
    axes.set_xlabel("documents")
    axes.set_title("Quarantined documents by reason")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


@dataclass(frozen=True)
class Sources:
    """What the plots draw from, each read once per report."""

    layout: Layout
    status: dict[str, Any]
    runs: list[Attempt]
    history: list[dict[str, Any]]


# (name, the data it shows, how it is drawn): a figure whose data did not change since the last
# report is not drawn again (drawing is most of a report's time, and most runs change few plots).
PLOTS: tuple[tuple[str, Callable[[Sources], Any], Callable[[Any], Figure | str]], ...] = (
    ("finalized", lambda s: finalized_over_time(s.layout), _plot_finalized),
    ("pages-per-hour", lambda s: s.runs, _plot_pages_per_hour),
    ("run-time", lambda s: s.runs, _plot_run_time),
    ("queue-wait", lambda s: s.runs, _plot_queue_wait),
    ("backlog", lambda s: s.history, _plot_backlog),
    ("disk", lambda s: s.history, _plot_disk),
    ("quarantine", lambda s: s.status["stages"].get(QUARANTINE, {}).get("reasons", {}), _plot_quarantine),
)


# --- the page ----------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.problem { background: #fde2e2; border: 1px solid #c00; padding: 0.5em; }
.fine { background: #e2f5e2; border: 1px solid #080; padding: 0.5em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: 0.5em; }
figure.empty { width: 560px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, text: str | None = None, **data: str) -> str:
    """A number cell; data-* attributes name it and data-value holds the exact number."""
    attributes = "".join(f' data-{k}="{_e(v)}"' for k, v in data.items())
    shown = text if text is not None else (f"{value:,}" if isinstance(value, int) else "-" if value is None
                                           else str(value))
    return f'<td class="n"{attributes} data-value="{_e("" if value is None else value)}">{_e(shown)}</td>'


def status_html(status: dict[str, Any]) -> str:
    """The Status view as HTML tables: the numbers of ``python -m pipeline status --json``."""
    parts = []
    problems = status["problems"]
    if problems:
        parts.append('<div class="problem"><b>Needs a person:</b><ul>'
                     + "".join(f'<li data-problem="{n}">{_e(p)}</li>' for n, p in enumerate(problems))
                     + "</ul></div>")
    else:
        parts.append('<p class="fine">Nothing needs a person.</p>')
    rows = []
    for name, row in status["stages"].items():
        cells = [_cell(row.get(k), stage=name, field=k) for k in ("documents", "pages", "files")]
        cells.append(_cell(row["bytes"], status_view._size(row["bytes"]), stage=name, field="bytes"))
        rows.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
        rows += [f'<tr><td>&nbsp;&nbsp;{_e(reason)}</td>{_cell(count, reason=reason)}<td></td><td></td><td></td></tr>'
                 for reason, count in row.get("reasons", {}).items()]
    parts.append("<table id=\"stages\"><tr><th>stage</th><th>documents</th><th>pages</th><th>files</th>"
                 f"<th>disk used</th></tr>{''.join(rows)}</table>")
    disk = status["disk"]
    parts.append(f"<p>free: <span data-disk=\"free_bytes\" data-value=\"{disk['free_bytes']}\">"
                 f"{_e(status_view._size(disk['free_bytes']))}</span> of <span data-disk=\"total_bytes\" "
                 f"data-value=\"{disk['total_bytes']}\">{_e(status_view._size(disk['total_bytes']))}</span> "
                 f"({_e(disk['used_percent'])}% used), {disk['free_inodes']:,} of "
                 f"<span data-disk=\"total_inodes\" data-value=\"{disk['total_inodes']}\">{disk['total_inodes']:,}"
                 f"</span> inodes free</p>")
    parts.append(f"<h3>Open batches: {len(status['batches'])}</h3>")
    if status["batches"]:
        counts = ("total", "done", "running", "pending", "failed")
        rows = []
        for b in status["batches"]:
            chunks = b["chunks"] or {}
            cells = [_cell(b[k], batch=b["batch"], field=k) for k in ("documents", "pages", "pdfs")]
            cells += [_cell(chunks.get(k), batch=b["batch"], field=f"chunks.{k}") for k in counts]
            rows.append(f'<tr><th>{_e(b["batch"])}</th><td data-batch="{_e(b["batch"])}" data-field="stage">'
                        f'{_e(b["stage"])}</td>{"".join(cells)}</tr>')
        header = "".join(f"<th>{k}</th>" for k in ("batch", "stage", "documents", "pages", "pdfs"))
        header += "".join(f"<th>chunks {k}</th>" for k in counts)
        parts.append(f"<table id=\"batches\"><tr>{header}</tr>{''.join(rows)}</table>")
    rates, backlog = status["throughput"]["pages_per_hour"], status["backlog"]
    parts.append("<table id=\"throughput\"><tr><th>pages/hour over the last</th>"
                 + "".join(f"<th>{_e(k)}</th>" for k in rates) + "</tr><tr><td>"
                 + _e(status["throughput"]["source"]) + "</td>"
                 + "".join(_cell(v, f"{v:,.1f}", rate=k) for k, v in rates.items()) + "</tr></table>")
    parts.append(f"<p>backlog: {_cell_span(backlog['documents'], 'documents')} documents, "
                 f"{_cell_span(backlog['pages'], 'pages')} pages to OCR; time to finish: "
                 f"{_e(status_view._duration(backlog['hours_to_finish']))}</p>")
    parts.append(f"<p>last progress: <span data-last-progress=\"{_e(status['last_progress'] or '')}\">"
                 f"{_e(status['last_progress'] or 'none recorded')}</span></p>")
    parts += [f"<p>note: {_e(n)}</p>" for n in status["notes"]]
    return "\n".join(parts)


def _cell_span(value: int, name: str) -> str:
    return f'<span data-backlog="{name}" data-value="{value}">{value:,}</span>'


def _figure_html(name: str, drawn: Figure | str) -> str:
    if isinstance(drawn, str):
        return f'<figure class="empty" id="plot-{name}"><p>{_e(drawn)}</p></figure>'
    title = drawn.axes[0].get_title()
    return f'<figure id="plot-{name}"><img alt="{_e(title)}" src="data:image/png;base64,{_png(drawn)}"></figure>'


@functools.cache
def _drawing_version() -> str:
    """Changes with this module (how the plots are drawn) and with matplotlib: figures drawn by
    another version are drawn again."""
    from importlib.metadata import version  # not matplotlib itself: a report reusing every figure never imports it

    return hashlib.sha256(Path(__file__).read_bytes() + version("matplotlib").encode()).hexdigest()


def render(layout: Layout, status: dict[str, Any],
           drawn_before: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The whole page for ``status`` (a result of pipeline.ops.status.collect) and the records of
    ``layout``'s base_dir, and its figures by name ({"key", "html"}, the key a digest of the data
    drawn). A figure of ``drawn_before`` (the last report's) whose data is unchanged is reused."""
    sources = Sources(layout, status, attempts(events.read(layout.metrics)), read_history(layout))
    figures: dict[str, Any] = {}
    for name, shown, draw in PLOTS:
        data = shown(sources)
        key = hashlib.sha256(f"{_drawing_version()} {name} {data!r}".encode()).hexdigest()
        kept = (drawn_before or {}).get(name)
        if isinstance(kept, dict) and kept.get("key") == key and isinstance(kept.get("html"), str):
            figures[name] = kept
        else:
            figures[name] = {"key": key, "html": _figure_html(name, draw(data))}
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>OCR pipeline report: {_e(status['base_dir'])}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>OCR pipeline report</h1><p>base_dir <code>{_e(status['base_dir'])}</code> at "
        f"<span id=\"status-time\">{_e(status['time'])}</span></p>\n"
        f"<h2>Status</h2>\n{status_html(status)}\n<h2>Over time</h2>\n"
        f"<div class=\"plots\">{''.join(f['html'] for f in figures.values())}</div>\n</body></html>\n"
    )
    return page, figures


def refresh(layout: Layout, *, thresholds: status_view.Thresholds, slurm: SlurmClient | None,
            record_snapshot: bool = False, progress: Callable[[str], None] = lambda message: None) -> Path:
    """Collect Status, append its snapshot to the history when ``record_snapshot`` (ProcessAll does,
    once per run), and write report.html atomically. Returns the report's path."""
    status = status_view.collect(layout, thresholds=thresholds, slurm=slurm, progress=progress)
    if record_snapshot:
        events.append(history_path(layout), [snapshot(status)])
    progress("drawing the plots")
    path, kept = report_path(layout), figures_path(layout)
    drawn_before = _record(kept)
    page, figures = render(layout, status, drawn_before if isinstance(drawn_before, dict) else None)
    atomic.write_bytes(path, page.encode("utf-8"))
    atomic.write_json(kept, figures)
    return path

