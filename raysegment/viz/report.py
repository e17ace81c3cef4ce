"""`raysegment report`: ONE self-contained HTML page about a results folder, for a person to open.

    raysegment report RESULTS [--out report.html] [--queue N] [--no-thumbnails] [--redact-names]
    (and `raysegment infer` writes OUTPUT/report.html at its end)

The numbers come from viz/report_data.collect: one streamed pass over every run's rows with the run
summary's code (latest row per image, as read_results picks it), so the page's counts are summary.json's
and memory stays flat at 10^7 rows. The page holds, in this order:
  - a patient-data header (films and file names are patient data; --no-thumbnails --redact-names share);
  - notes about the folder itself (nothing there, unreadable files, a run cut short, older schema rows);
  - the run: images, ok / errors / other statuses (skipped ...), QC-flagged, queue size, wall time and
    images/s of the latest run, model and calibration ids, inputs, QC reasons, every run;
  - the review queue: the N films to look at first (report_data.QUEUE_ORDER) as thumbnails with the mask
    outlines (each structure in its colour, viz.figures.STRUCTURE_COLORS) and the CTR's two widths,
    the name (a link to the original), quality score, QC reasons; an original that cannot be read back
    shows the mask alone, with a note;
  - errors and skipped files grouped by reason, with examples;
  - distributions as SVG plots: quality_score, lung area (cm2 with pixel spacing, else the lung
    fraction), CTR with the 0.5 line, mean confidence, dice with ground truth; from the summary's bounded
    sample beyond results.SAMPLE values (the page says so), counts exact;
  - a per-folder (site) table when the inputs come from several top-level folders (at most 50 + other).
Everything is inline: CSS, PNG thumbnails as data: URIs, SVG plots; a few lines of JavaScript only sort the
tables, and every number and picture is there with JavaScript off. Nothing is loaded from the network.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import time
import urllib.parse
from base64 import b64encode
from dataclasses import dataclass, field
from html import escape

import numpy as np

import raysegment
from raysegment.data.model_input import decode_frame
from raysegment.errors import InputError
from raysegment.io import storage
from raysegment.io.decode import decode_mask_png, encode_png
from raysegment.outputs.results import SAMPLE, SCHEMA_VERSION
from raysegment.viz import figures as viz
from raysegment.viz.plots import histogram_svg, value_range
from raysegment.viz.report_data import (
    OTHER,
    QUEUE_ORDER,
    TOP_LEVEL,
    ReportData,
    SiteStats,
    collect,
)
from raysegment.viz.show import AS_IS, read_masks, structures_of

QUEUE = 24  # default queue size
MAX_QUEUE = 1000
THUMB_HEIGHT = 200  # pixels of a queue thumbnail
REPORT_NAME = "report.html"
CONTENT_TYPE = "text/html; charset=utf-8"


@dataclass
class ReportResult:
    path: str
    size_bytes: int
    seconds: float
    images: int
    queue: int  # queue entries on the page
    thumbnails: int  # of them with a picture
    notes: list[str] = field(default_factory=list)


@dataclass
class Thumb:
    png: bytes | None  # None: nothing to draw
    note: str | None = None  # e.g. the original could not be read back: the mask alone


def default_out(results: str) -> str:
    return storage.join(results, REPORT_NAME)


def build_report(results: str, out: str | None = None, queue: int = QUEUE, thumbnails: bool = True,
                 redact_names: bool = False, thumb_height: int = THUMB_HEIGHT) -> ReportResult:
    """Write the report of `results` to `out` (default RESULTS/report.html; an S3 object is written as
    text/html). InputError when `results` does not exist (an empty folder gives a report that says so)."""
    t0 = time.perf_counter()
    if not storage.exists(results):
        raise InputError(f"no such results folder: {results}",
                         hint="pass the --output folder of a `raysegment infer` run")
    if storage.exists(results) and not storage.is_dir(results):
        raise InputError(f"{results} is a file: pass the --output folder of a `raysegment infer` run")
    out = out or default_out(results)
    data = collect(results, queue)
    pictures = thumbs(results, data.queue, thumb_height) if thumbnails else {}
    page = render(data, pictures, thumbnails, redact_names, time.perf_counter() - t0)
    body = page.encode("utf-8")
    storage.write_bytes(out, body, content_type=CONTENT_TYPE)
    return ReportResult(out, len(body), time.perf_counter() - t0, data.images, len(data.queue),
                        sum(1 for t in pictures.values() if t.png), list(data.notes))


# --- thumbnails ------------------------------------------------------------------------------------------

def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {storage.redact(' '.join(str(e).split()))[:160]}"


def thumbs(results: str, rows: list[dict], height: int = THUMB_HEIGHT) -> dict[str, Thumb]:
    """image_uri -> its thumbnail: the original with the mask outlines (each structure in its colour) and
    the CTR's widths; the mask alone (coloured on black) when the original cannot be read back."""
    out: dict[str, Thumb] = {}
    if not rows:
        return out
    structures: dict[str, dict[str, np.ndarray]] = {}
    try:
        masks = read_masks(results, rows, structures)
    except Exception as e:  # noqa: BLE001 - the page still lists the queue
        masks = {}
        failed = f"masks not read ({_reason(e)})"
    else:
        failed = "no mask in the results"
    for row in rows:
        uri = row["image_uri"]
        try:
            out[uri] = _thumb(row, masks.get(uri), structures.get(uri), height, failed)
        except Exception as e:  # noqa: BLE001 - one bad picture must not cost the page
            out[uri] = Thumb(None, f"not drawn: {_reason(e)}")
    return out


def _thumb(row: dict, mask_png: bytes | None, masks: dict | None, height: int, no_mask: str) -> Thumb:
    uri = row["image_uri"]
    notes = []
    pred = None
    if mask_png is not None:
        try:
            pred = decode_mask_png(mask_png)
        except Exception as e:  # noqa: BLE001
            notes.append(f"mask not decoded ({_reason(e)})")
    else:
        notes.append(no_mask)
    image = None
    try:
        image = decode_frame(storage.read_bytes(uri), uri, AS_IS).image
    except Exception as e:  # noqa: BLE001 - moved, deleted, no access: the mask alone
        alone = ": the mask alone" if pred is not None else ""
        notes.append(f"original not readable ({_reason(e)}){alone}")
    if image is not None and pred is not None and image.shape[:2] != pred.shape:
        notes.append(f"the original is {image.shape[1]}x{image.shape[0]} now, the mask "
                     f"{pred.shape[1]}x{pred.shape[0]} (changed since inference?): the mask alone")
        image = None
    note = "; ".join(notes) or None
    if pred is None:
        if image is None:
            return Thumb(None, note)
        return Thumb(encode_png(viz.overlay(image, None, np.zeros(image.shape[:2], bool), height)), note)
    extra, ctr = structures_of(row, masks, pred)
    if image is not None:
        rgb = viz.overlay(image, None, pred, height, structures=extra, ctr=ctr)
    else:
        rgb = viz.mask_panel(pred, extra or {}, viz.tile_size(pred.shape[0], pred.shape[1], height))
        if ctr is not None and extra and "heart" in extra:
            viz.draw_ctr(rgb, ctr, extra["heart"], pred.shape)
    return Thumb(encode_png(rgb), note)


# --- names, links, numbers ----------------------------------------------------------------------------------

class Names:
    """What the page says about a film: its name and a link, or with redaction a digest of its URI only
    (`film-` + the first 10 hex digits of sha256(image_uri); from the results,
    `hashlib.sha256(uri.encode()).hexdigest()[:10]` finds it again)."""

    def __init__(self, redact: bool, known: tuple[str, ...] = ()) -> None:
        self.redact = redact
        self.known = tuple(k for k in known if k)  # paths to hide in free text (results, inputs)

    @staticmethod
    def digest(uri: str) -> str:
        return "film-" + hashlib.sha256((uri or "").encode("utf-8", "surrogatepass")).hexdigest()[:10]

    def name(self, row: dict) -> str:
        uri = row.get("image_uri") or ""
        if self.redact:
            return self.digest(uri)
        return row.get("image_id") or storage.basename(uri) or uri

    def link(self, uri: str | None, text: str | None = None) -> str:
        """An <a> to the original (local files: a file:// URL), or its s3:// URI as code; nothing redacted."""
        if not uri:
            return ""
        if self.redact:
            return f"<code>{escape(self.digest(uri))}</code>"
        shown = escape(text or uri)
        if storage.is_s3(uri):
            return f'<code class="uri" title="copy to open">{shown}</code>'
        href = uri if uri.startswith("file://") else "file://" + urllib.parse.quote(uri if uri.startswith("/")
                                                                                    else "/" + uri)
        return f'<a class="uri" href="{escape(href)}">{shown}</a>'

    def text(self, text: str | None, uri: str | None = None) -> str:
        """Free text (an error message) without the film's path and name when redacting."""
        text = text or ""
        if not self.redact:
            return text
        for known in (uri, *self.known):
            if known:
                text = text.replace(known, "[path]")
        if uri:
            name = storage.basename(uri)
            for part in {name, name.rsplit(".", 1)[0]}:
                if len(part) >= 3:
                    text = text.replace(part, "[name]")
        return text

    def path(self, uri: str | None) -> str:
        return "(redacted)" if self.redact else (uri or "")


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else escape(str(x))


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "–"


def _count(key: str, value: int, label: str, title: str = "") -> str:
    return (f'<div class="figure" title="{escape(title)}"><div class="value" data-count="{escape(key)}">'
            f"{_n(value)}</div><div class=\"what\">{escape(label)}</div></div>")


def _figure(key: str, value: str, label: str) -> str:
    return (f'<div class="figure"><div class="value" data-figure="{escape(key)}">{escape(value)}</div>'
            f'<div class="what">{escape(label)}</div></div>')


def _note(text: str, kind: str = "note") -> str:
    return f'<p class="{kind}">{escape(text)}</p>'


# --- sections ---------------------------------------------------------------------------------------------

def _header(data: ReportData, names: Names, thumbnails: bool, seconds: float) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = f"{data.n_runs} run" + ("" if data.n_runs == 1 else "s")
    if thumbnails and not names.redact:
        phi = ("Patient data: this page shows X-ray films and the file names and paths of the archive (PACS "
               "paths often carry patient names). Keep it where the films themselves may be kept. "
               "<code>raysegment report --no-thumbnails --redact-names</code> makes a page to share.")
    elif not thumbnails and not names.redact:
        phi = ("Patient data: no films on this page, but the file names and paths of the archive (PACS paths "
               "often carry patient names). Add <code>--redact-names</code> for a page to share.")
    elif thumbnails:
        phi = ("Patient data: no file names or paths on this page (films are named by a digest of their "
               "URI), but it shows the films, which may carry burnt-in names. Add "
               "<code>--no-thumbnails</code> for a page to share.")
    else:
        phi = ("Shareable: no films and no file names or paths on this page; films are named by a digest of "
               "their URI (<code>film-</code> + sha256(image_uri)[:10]).")
    kind = "phi shareable" if (names.redact and not thumbnails) else "phi"
    return (f"<header><h1>raysegment run report</h1>"
            f'<p class="sub">{escape(names.path(data.results))} · {_n(data.images)} images (the latest row '
            f"of each over {runs}) · built {now} in {seconds:.1f} s by raysegment "
            f"{escape(raysegment.__version__)}</p></header>"
            f'<div id="patient-data" class="{kind}">{phi}</div>')


def _statuses(data: ReportData) -> dict[str, int]:
    return {k: v for k, v in data.statuses.items() if k not in ("ok", "error")}


def _run_section(data: ReportData, names: Names) -> str:
    s, latest = data.summary, data.latest_summary or {}
    errors = data.statuses.get("error", 0)
    figures = [_count("images", data.images, "images"), _count("ok", s["ok"], "ok"),
               _count("errors", errors, "errors")]
    for status, n in _statuses(data).items():
        figures.append(_count(f"status-{status}", n, status))
    figures += [_count("qc_flagged", s["qc_flagged"], "QC-flagged", "ok rows with qc_flag (any QC reason)"),
                _count("queue", len(data.queue), "in the review queue")]
    wall, rate = latest.get("wall_s"), latest.get("images_per_s")
    figures.append(_figure("wall_s", f"{wall:.1f} s" if isinstance(wall, (int, float)) else "–",
                           "wall time (latest finished run)"))
    figures.append(_figure("images_per_s", f"{rate:.2f}" if isinstance(rate, (int, float)) else "–",
                           "images/s (latest finished run)"))
    rows = []

    def add(label: str, value: str) -> None:
        rows.append(f"<tr><th>{escape(label)}</th><td>{value}</td></tr>")

    add("model", _ids(data.model_ids))
    add("calibration", _ids(data.calibration_ids, none="none: no quality_score (run `raysegment calibrate`)"))
    inputs = sorted({_input_of(r) for r in data.runs} - {""})
    add("inputs", ", ".join(f"<code>{escape(names.path(i))}</code>" for i in inputs[:5])
        + (f" and {len(inputs) - 5} more" if len(inputs) > 5 else "") if inputs else "–")
    if latest:
        add("latest run", f"<code>{escape(str(latest.get('run_id', '–')))}</code>: "
            f"{_n(latest.get('inputs_seen', '–'))} inputs, {_n(latest.get('processed', '–'))} processed, "
            f"{_n(latest.get('skipped_resume', '–'))} done earlier (resume), "
            f"{_n(latest.get('missing', '–'))} without a row; plan {escape(str(latest.get('plan', '–')))}")
        skipped = latest.get("skipped")
        if isinstance(skipped, dict) and skipped:
            add("skipped by name (latest run's listing, no rows)",
                ", ".join(f"{escape(str(k))} {_n(v)}" for k, v in skipped.items()))
    qc = s.get("qc_reasons") or {}
    add("QC reasons (ok rows)", ", ".join(f"{escape(k)} {_n(v)}" for k, v in qc.items()) or "none")
    notes = s.get("qc_notes") or {}
    if notes:
        add("QC notes (not flags)", ", ".join(f"{escape(k)} {_n(v)}" for k, v in notes.items()))
    if s.get("quality_scored"):
        q = s["quality_score"]
        add("quality_score (predicted dice)", f"median {_num(q.get('median'))}, min {_num(q.get('min'))} "
            f"over {_n(s['quality_scored'])} images; {_n(s['quality_flagged'])} below the threshold")
    metrics = s.get("metrics")
    if metrics and metrics.get("n_scored"):
        add("vs ground truth", f"dice mean {_num(metrics['dice'].get('mean'))}, median "
            f"{_num(metrics['dice'].get('median'))}, micro {_num(metrics.get('micro_dice'))} over "
            f"{_n(metrics['n_scored'])} images")
    runs = "".join(_run_row(r) for r in data.runs)
    more = (f"<p class=\"small\">the last {len(data.runs)} of {data.n_runs} runs</p>"
            if data.n_runs > len(data.runs) else "")
    table = ('<table class="sortable runs"><thead><tr><th>run</th><th>rows kept</th><th>files</th>'
             "<th>inputs</th><th>processed</th><th>wall s</th><th>images/s</th><th>state</th></tr></thead>"
             f"<tbody>{runs}</tbody></table>{more}") if data.runs else _note("no runs in this folder")
    return (f'<section id="run"><h2>The run</h2><div class="figures">{"".join(figures)}</div>'
            f'<table class="facts"><tbody>{"".join(rows)}</tbody></table><h3>Runs</h3>{table}</section>')


def _input_of(run) -> str:
    """The --input a run was given (its run.json), or ""."""
    config = (run.record or {}).get("config")
    io = config.get("io") if isinstance(config, dict) else None
    value = io.get("input") if isinstance(io, dict) else None
    return value if isinstance(value, str) else ""


def _cells(cells: list[tuple[str, object]]) -> str:
    """<td>s of (html, sort value or None): the sort value goes to data-v for the table sorter."""
    return "".join(f'<td data-v="{escape(str(v))}">{c}</td>' if v is not None else f"<td>{c}</td>"
                   for c, v in cells)


def _ids(counts: dict, none: str = "–") -> str:
    shown = [(k, v) for k, v in counts.items() if k != "(none)"]
    if not shown:
        return escape(none)
    text = ", ".join(f"<code>{escape(k)}</code>" + (f" ({_n(v)} images)" if len(counts) > 1 else "")
                     for k, v in shown[:5])
    return text + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _run_row(r) -> str:
    s = r.summary or {}
    record = r.record or {}
    state = "finished" if r.summary else ("running or stopped" if r.in_progress else "stopped before its end")
    wall, rate = s.get("wall_s"), s.get("images_per_s")
    cells = [f"<code>{escape(r.run_id)}</code>", _n(r.rows), _n(r.files),
             _n(s.get("inputs_seen", record.get("inputs", "–"))),
             _n(s.get("processed", "–")), _num(wall, 1) if isinstance(wall, (int, float)) else "–",
             _num(rate, 2) if isinstance(rate, (int, float)) else "–", escape(state)]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _queue_section(data: ReportData, pictures: dict[str, Thumb], names: Names, thumbnails: bool) -> str:
    head = (f'<section id="queue"><h2>Review queue: the {_n(len(data.queue))} films to look at first</h2>'
            f'<p class="small">Order: {escape(QUEUE_ORDER)}; exact over all {_n(data.summary["ok"])} ok '
            f"rows. {_legend(data.queue)}</p>")
    if not data.queue:
        why = ("no ok rows: nothing to review" if data.summary["ok"] == 0 else
               "the queue is empty (--queue 0)")
        return head + _note(why) + "</section>"
    has_quality = any(r.get("quality_score") is not None for r in data.queue)
    if data.summary.get("quality_scored", 0) == 0:
        head += _note("No quality_score in these rows (" + _why_missing(data, "quality_score") + "): the "
                      "queue is ordered by the number of QC reasons, then the mean confidence.")
    if thumbnails:
        cards = [_card(rank, row, pictures.get(row["image_uri"]), names, has_quality)
                 for rank, row in enumerate(data.queue, 1)]
        return head + f'<div class="queue">{"".join(cards)}</div></section>'
    rows = "".join(_queue_row(rank, row, names) for rank, row in enumerate(data.queue, 1))
    return (head + '<table class="sortable queue-table"><thead><tr><th>#</th><th>film</th><th>quality</th>'
            "<th>QC reasons</th><th>confidence</th><th>CTR</th><th>dice</th><th>original</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _legend(rows: list[dict]) -> str:
    """The outline colours of the structures the queue's rows have (lungs always), and the CTR lines."""
    present = {s.get("name") for r in rows for s in (r.get("structures") or [])}
    names = ["lungs", *[n for n in viz.STRUCTURE_COLORS if n != "lungs" and n in present]]
    swatches = ", ".join(f'<span class="swatch" style="background: rgb{viz.STRUCTURE_COLORS[n]}"></span>{n}'
                         for n in names)
    ctr = any(r.get("ctr") is not None for r in rows)
    return (f"Outlines: {swatches}."
            + (" The CTR's two widths as lines: the thorax in the lungs' colour, the heart in its own."
               if ctr else ""))


def _reasons(row: dict) -> str:
    reasons = row.get("qc_reasons") or []
    chips = "".join(f'<span class="chip">{escape(r)}</span>' for r in reasons)
    return chips or '<span class="small">no QC reason</span>'


def _ctr_bar(ctr) -> str:
    if ctr is None or not math.isfinite(ctr):
        return ""
    width = max(0.0, min(1.0, ctr)) * 100
    over = " over" if ctr > 0.5 else ""
    return (f'<span class="ctrbar{over}" title="CTR {ctr:.2f} (the line: 0.5)">'
            f'<span style="width: {width:.0f}%"></span></span>')


def _card(rank: int, row: dict, thumb: Thumb | None, names: Names, has_quality: bool) -> str:
    name = names.name(row)
    picture = ""
    if thumb is not None and thumb.png:
        picture = (f'<img alt="{escape(name)}: mask outlines" src="data:image/png;base64,'
                   f'{b64encode(thumb.png).decode("ascii")}">')
    else:
        picture = '<div class="noimg">no picture</div>'
    note = ""
    if thumb is not None and thumb.note:
        note = f'<p class="thumb-note">{escape(names.text(thumb.note, row["image_uri"]))}</p>'
    facts = []
    if has_quality:
        facts.append(f"quality <b>{_num(row.get('quality_score'), 2)}</b>")
    facts.append(f"confidence {_num(row.get('mean_confidence'), 2)}")
    if row.get("ctr") is not None:
        facts.append(f"CTR {_num(row.get('ctr'), 2)} {_ctr_bar(row.get('ctr'))}")
    if row.get("dice") is not None:
        facts.append(f"dice {_num(row.get('dice'), 3)}")
    flagged = " flagged" if row.get("qc_flag") else ""
    return (f'<article class="queue-entry{flagged}" data-rank="{rank}">{picture}'
            f'<div class="meta"><div class="title">#{rank} {names.link(row["image_uri"], name)}</div>'
            f'<div>{" · ".join(facts)}</div><div>{_reasons(row)}</div>{note}</div></article>')


def _queue_row(rank: int, row: dict, names: Names) -> str:
    cells = [(str(rank), rank), (escape(names.name(row)), None), (_num(row.get("quality_score"), 3), None),
             (_reasons(row), len(row.get("qc_reasons") or [])), (_num(row.get("mean_confidence"), 3), None),
             (_num(row.get("ctr"), 2) + " " + _ctr_bar(row.get("ctr")), row.get("ctr")),
             (_num(row.get("dice"), 3), None), (names.link(row["image_uri"]), None)]
    tds = _cells(cells)
    flagged = " flagged" if row.get("qc_flag") else ""
    return f'<tr class="queue-entry{flagged}" data-rank="{rank}">{tds}</tr>'


def _problems_section(data: ReportData, names: Names) -> str:
    head = '<section id="problems"><h2>Errors and skipped files</h2>'
    if not data.groups:
        return head + _note("No errors and no skipped files: every image has a mask.") + "</section>"
    rows = []
    for g in data.groups:
        examples = "".join(
            f"<li>{names.link(e.get('image_uri'), names.name(e))}: "
            f"{escape(names.text(e.get('error'), e.get('image_uri')))}</li>" for e in g.examples)
        rows.append(f'<tr class="problem" data-status="{escape(g.status)}"><td>{escape(g.status)}</td>'
                    f"<td><code>{escape(g.reason)}</code></td><td data-v=\"{g.count}\">{_n(g.count)}</td>"
                    f"<td><ul>{examples}</ul></td></tr>")
    return (head + '<table class="sortable problems"><thead><tr><th>status</th><th>reason</th><th>images</th>'
            f"<th>examples</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _why_missing(data: ReportData, column: str) -> str:
    """Why a measurement has no values, from what the rows say."""
    if data.summary["ok"] == 0:
        return "no ok rows"
    v1 = sum(n for v, n in data.schema_versions.items() if v == "1")
    if v1 and column in ("quality_score", "ctr"):
        if v1 >= data.images:
            return "every row was written with schema version 1, which has no such column"
        return f"{_n(v1)} rows of schema version 1 have no such column, and the newer rows have none either"
    if column == "quality_score":
        return "the checkpoint had no calibration.json: run `raysegment calibrate` to score quality"
    if column == "ctr":
        return "a lungs-only model: the CTR needs a model with a heart channel"
    if column == "lung_area_cm2":
        return "no pixel spacing known: DICOM carries it, `infer --pixel-spacing MM` sets it for PNG/JPEG"
    if column == "dice":
        return "no ground truth: `raysegment infer --ground-truth DATA` scores the masks"
    return "no values"


PLOTS = (  # measure, label, fixed ends (None: from the values, rounded to 0.05), reference lines
    ("quality_score", "quality_score (predicted dice)", (None, 1.0), ()),
    ("lung_area_cm2", "lung area, cm²", (None, None), ()),
    ("ctr", "cardiothoracic ratio", (None, None), ((0.5, "0.5"),)),
    ("mean_confidence", "mean confidence in the mask", (None, 1.0), ((0.75, "QC 0.75"),)),
    ("dice", "dice vs ground truth", (None, 1.0), ()),
)
UNIT_MEASURES = {"quality_score", "ctr", "mean_confidence", "dice", "lung_fraction"}  # values in [0, 1]


def _distributions_section(data: ReportData) -> str:
    parts, missing = [], []
    for measure, label, (lo, hi), refs in PLOTS:
        values, n = data.samples.get(measure, (np.empty(0), 0))
        if n == 0 and measure == "lung_area_cm2":
            values, n = data.samples.get("lung_fraction", (np.empty(0), 0))
            if n:
                missing.append(f"lung area in cm²: {_why_missing(data, 'lung_area_cm2')}; the lung fraction "
                               "of the image is plotted instead")
                measure, label, (lo, hi) = "lung_fraction", "lung area, fraction of the image", (None, None)
        if n == 0:
            missing.append(f"{label}: {_why_missing(data, measure)}")
            continue
        unit = measure in UNIT_MEASURES
        lo_, hi_ = value_range(values, lo, hi, tuple(x for x, _ in refs), step=0.05 if unit else None,
                               floor=0.0 if unit else None)
        svg = histogram_svg(values, lo_, hi_, label, measure, refs=refs)
        median = float(np.median(values)) if values.size else float("nan")
        caption = (f"n = {_n(n)} images (exact) · median {_num(median, 3)} · min "
                   f"{_num(float(values.min()), 3)} · max {_num(float(values.max()), 3)}")
        if measure == "ctr":
            caption += f" · CTR over 0.5: {_n(data.ctr_over)} ({_pct(data.ctr_over, n)}, exact)"
        if n > values.size:
            caption += (f" · plotted from a uniform sample of {_n(int(values.size))} of the {_n(n)} values "
                        "(the summary's bounded sample: the rows with the smallest hash of image_uri)")
        parts.append(f'<figure class="plot" data-measure="{escape(measure)}" data-n="{n}">{svg}'
                     f"<figcaption>{caption}</figcaption></figure>")
    sampled = any(n > v.size for v, n in data.samples.values())
    head = ('<section id="distributions"><h2>Distributions</h2><p class="small">Of the ok rows; bars are '
            "the share of images per bin, values beyond the axis are counted in the end bars. "
            + (f"Beyond {_n(SAMPLE)} values a plot is drawn from a uniform sample (its caption says so); "
               "counts are exact." if sampled else "Every value is plotted.") + "</p>")
    body = f'<div class="plots">{"".join(parts)}</div>' if parts else ""
    notes = "".join(_note(m, "missing") for m in missing)
    return head + body + notes + "</section>"


def _sites_section(data: ReportData, names: Names) -> str:
    head = '<section id="sites"><h2>By folder</h2>'
    if data.n_sites < 2:
        where = names.path(data.site_prefix) if data.site_prefix else "one place"
        return head + _note(f"All inputs come from one folder ({where}): no per-folder table.") + "</section>"
    has_q = any(s.quality_n for _, s in data.sites)
    has_d = any(s.dice_n for _, s in data.sites)
    more = "".join(f"<th>{h}</th>" for h, on in (("mean quality", has_q), ("mean dice", has_d)) if on)
    rows = []
    for i, (site, s) in enumerate(data.sites, 1):
        label = site if not names.redact or site in (OTHER, TOP_LEVEL) else f"folder {i}"
        rows.append(_site_row(label, s, has_q, has_d))
    folded = data.sites[-1][0] == OTHER and data.n_sites > len(data.sites)
    caption = (f"Top-level folders under <code>{escape(names.path(data.site_prefix))}</code>: "
               f"{_n(data.n_sites)}"
               + (f", the {len(data.sites) - 1} largest shown, the rest as {OTHER}" if folded else "") + ".")
    return (head + f'<p class="small">{caption}</p><table class="sortable sites"><thead><tr><th>folder</th>'
            f"<th>images</th><th>ok</th><th>errors</th><th>other</th><th>QC-flagged</th>{more}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _site_row(label: str, s: SiteStats, has_q: bool, has_d: bool) -> str:
    cells = [(f"<code>{escape(label)}</code>", None), (_n(s.images), s.images), (_n(s.ok), s.ok),
             (_n(s.errors), s.errors), (_n(s.other), s.other),
             (f"{_n(s.flagged)} ({_pct(s.flagged, s.ok)})", s.flagged)]
    if has_q:
        q = s.quality_sum / s.quality_n if s.quality_n else None
        cells.append((_num(q, 3), q if q is not None else ""))
    if has_d:
        d = s.dice_sum / s.dice_n if s.dice_n else None
        cells.append((_num(d, 3), d if d is not None else ""))
    return f'<tr class="site">{_cells(cells)}</tr>'


def _footer(data: ReportData) -> str:
    return ('<footer><p>Counts are exact, over the latest row of every image in the folder (the rows '
            "<code>raysegment.read_results</code> returns). Columns read: docs/output_schema.md, "
            f"\"The run report\". Schema version {SCHEMA_VERSION}. Open a film: its name links to the "
            "original (local files) or shows its s3:// URI.</p></footer>")


CSS = """
:root { --ink: #1d232b; --muted: #5b6674; --line: #d8dde3; --bg: #f6f7f9; --accent: #0072b2;
        --warn: #b34700; }
* { box-sizing: border-box; }
body { margin: 0; padding: 0 24px 40px; color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: #fff; max-width: 1400px; }
header h1 { margin: 20px 0 2px; font-size: 22px; }
.sub, .small { color: var(--muted); font-size: 12.5px; }
h2 { margin: 28px 0 8px; font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
code { font: 12px ui-monospace, "SFMono-Regular", Menlo, monospace; background: var(--bg); padding: 0 3px;
       border-radius: 3px; word-break: break-all; }
.phi { margin: 10px 0; padding: 8px 12px; border-left: 4px solid var(--warn); background: #fff4e8; }
.phi.shareable { border-color: #009e73; background: #eaf7f1; }
.notes p, .note, .missing { margin: 6px 0; padding: 6px 10px; background: var(--bg);
                            border-left: 3px solid #999; }
.notes p { border-color: var(--warn); }
.figures { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0 12px; }
.figure { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; min-width: 104px; }
.figure .value { font-size: 20px; font-weight: 600; }
.figure .what { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top;
         border-bottom: 1px solid var(--line); }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { color: var(--accent); }
table.facts th { font-weight: 500; color: var(--muted); white-space: nowrap; }
td ul { margin: 0; padding-left: 16px; }
.queue { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.queue-entry { border: 1px solid var(--line); border-radius: 6px; overflow: hidden; background: #fff; }
article.queue-entry.flagged { border-color: #e69f00; }
.queue-entry img { display: block; width: 100%; height: auto; background: #111; }
.queue-entry .meta { padding: 6px 8px; font-size: 12.5px; }
.queue-entry .title { font-weight: 600; word-break: break-all; }
.noimg { height: 120px; display: flex; align-items: center; justify-content: center; background: var(--bg);
         color: var(--muted); }
.thumb-note { color: var(--warn); margin: 4px 0 0; font-size: 12px; }
.chip { display: inline-block; margin: 2px 4px 0 0; padding: 0 6px; border-radius: 9px; background: #fde7cf;
        font-size: 11.5px; }
.swatch { display: inline-block; width: 14px; height: 4px; margin: 0 4px 2px 6px; vertical-align: middle; }
.ctrbar { display: inline-block; position: relative; width: 60px; height: 6px; background: var(--bg);
          border: 1px solid var(--line); vertical-align: middle; }
.ctrbar span { display: block; height: 100%; background: #cc79a7; }
.ctrbar::after { content: ""; position: absolute; left: 50%; top: -3px; height: 10px;
                  border-left: 1px solid #000; }
.ctrbar.over span { background: #d55e00; }
.plots { display: flex; flex-wrap: wrap; gap: 18px; }
figure.plot { margin: 0; width: 420px; }
figure.plot figcaption { color: var(--muted); font-size: 12px; }
svg .bar { fill: #56b4e9; }
svg .axis { stroke: #444; stroke-width: 1; }
svg .label { font-size: 10.5px; fill: #444; }
svg .ref { stroke: #d55e00; stroke-width: 1.5; stroke-dasharray: 4 3; }
svg .ref-label { font-size: 10.5px; fill: #d55e00; }
a.uri { color: var(--accent); text-decoration: none; word-break: break-all; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); }
"""

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute('data-order') !== 'asc';
    th.setAttribute('data-order', asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.cells[col]; if (!cell) return '';
      var v = cell.hasAttribute('data-v') ? cell.getAttribute('data-v') : cell.textContent.trim();
      var x = parseFloat(v); return isNaN(x) ? v.toLowerCase() : x;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
        : (typeof x === 'number' ? -1 : 1);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def render(data: ReportData, pictures: dict[str, Thumb], thumbnails: bool = True, redact_names: bool = False,
           seconds: float = 0.0) -> str:
    """The page (see the module docstring). A section that fails to build says so; the page is written."""
    known = (data.results, data.site_prefix, *[_input_of(r) for r in data.runs])
    names = Names(redact_names, tuple(sorted(known, key=len, reverse=True)))
    body = [_header(data, names, thumbnails, seconds)]
    if data.notes:
        notes = "".join(_note(names.text(n)) for n in data.notes)
        body.append(f'<div class="notes" id="notes">{notes}</div>')
    body.append('<nav class="small"><a href="#run">run</a> · <a href="#queue">review queue</a> · '
                '<a href="#problems">errors and skipped</a> · <a href="#distributions">distributions</a> · '
                '<a href="#sites">by folder</a></nav>')
    sections = (("run", lambda: _run_section(data, names)),
                ("queue", lambda: _queue_section(data, pictures, names, thumbnails)),
                ("problems", lambda: _problems_section(data, names)),
                ("distributions", lambda: _distributions_section(data)),
                ("sites", lambda: _sites_section(data, names)))
    for key, make in sections:
        try:
            body.append(make())
        except Exception as e:  # noqa: BLE001 - the rest of the page still helps
            body.append(f'<section id="{key}"><h2>{key}</h2>'
                        + _note(f"this section could not be built: {_reason(e)}", "missing") + "</section>")
    body.append(_footer(data))
    title = "raysegment report" + ("" if redact_names else f" – {storage.basename(data.results)}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + f"<script>{SORT_JS}</script></body></html>\n")
